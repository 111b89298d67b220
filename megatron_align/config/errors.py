"""Config errors for users: ``ConfigError`` and the command-line wrapper that prints it as one line.

A config mistake is the user's, not a bug: it is reported as a single line on stderr that names the key, the
fix and where the value came from (the YAML file and line, or the command-line override), and the process
exits with status 2, the usual status for a usage error. Tracebacks stay for bugs.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

EXIT_CONFIG_ERROR = 2
"""Process exit status after a config error (usage error, as argparse uses)."""


class UserError(Exception):
    """Base of the errors that are the user's to fix (bad config, data file, checkpoint, tokenizer): entry
    points print them as one line (``<prefix>: <message>``) and exit with status 2, without a traceback."""

    prefix = "error"

    def user_line(self) -> str:
        """The one line printed for the user."""
        return f"{self.prefix}: {' '.join(str(self).split())}"


class ConfigError(UserError):
    """A config mistake: ``message`` names the key and the fix; ``source`` says where the value came from."""

    def __init__(self, message: str, key: str | None = None, source: str | None = None):
        super().__init__(message)
        self.message = " ".join(str(message).split())  # one line, whatever the caller wrote
        self.key = key
        self.source = source

    def __str__(self) -> str:
        return f"{self.message} ({self.source})" if self.source else self.message

    prefix = "config error"

    def line(self) -> str:
        """The line printed for the user: ``config error: <message> (<source>)``."""
        return f"config error: {self}"

    def user_line(self) -> str:
        return self.line()


def _is_rank_zero() -> bool:
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var) not in (None, "", "0"):
            return False
    return True


class CheckpointError(UserError, RuntimeError):
    """A checkpoint directory that cannot be used (missing, incomplete, unsafe, truncated, wrong model)."""

    prefix = "checkpoint error"


class HelpRequested(Exception):
    """``--help`` among the overrides: ``run_cli`` prints ``text`` to stdout and exits 0."""

    def __init__(self, text: str):
        super().__init__("help requested")
        self.text = text


def run_cli(main_fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``main_fn(*args, **kwargs)``; a ``UserError`` (config, data, checkpoint, tokenizer) becomes one
    stderr line and exit status 2.

    Every rank fails the same way, so only rank 0 prints (the others exit silently with the same status).
    """

    try:
        return main_fn(*args, **kwargs)
    except HelpRequested as help_:
        sys.stdout.write(help_.text)
        sys.stdout.flush()
        return 0  # type: ignore[return-value]
    except UserError as err:
        # A config error is the same on every rank: rank 0 speaks. A data or checkpoint error may hit one
        # rank only (it read that record): every rank that hits it speaks, naming itself if it is not rank 0.
        if _is_rank_zero():
            print(err.user_line(), file=sys.stderr, flush=True)
        elif not isinstance(err, ConfigError):
            rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID"))
            print(f"[rank {rank}] {err.user_line()}", file=sys.stderr, flush=True)
        sys.exit(EXIT_CONFIG_ERROR)


def cli_main(main_fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator form of :func:`run_cli`: ``@cli_main def main(): ...``."""

    @functools.wraps(main_fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        return run_cli(main_fn, *args, **kwargs)

    return wrapper
