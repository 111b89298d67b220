"""Logging set-up for entry points (library modules only create loggers), and the progress bars.

Rank 0 logs at INFO, other ranks at WARNING, so a 64-rank job prints one progress story; megatron's and
torch's own chatter is raised to ERROR and Python warnings from them are silenced. While a bar from
:func:`progress_bar` is open, log records go through ``tqdm.write`` (``tqdm.contrib.logging``), so a log line
never lands glued to the end of a bar.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from contextlib import ExitStack

from tqdm import tqdm


def setup_logging(level: int = logging.INFO) -> None:
    """Configure the root logger once for this process (idempotent)."""
    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=level if rank == "0" else logging.WARNING,
            format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
        )
    for noisy in ("megatron", "torch", "py.warnings", "c10d-NullHandler-dcp_logger"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"megatron\..*")
    warnings.filterwarnings("ignore", module=r"torch\..*")



class _Redirect:
    """One ``logging_redirect_tqdm`` shared by all open bars: entered by the first, left by the last."""

    lock = threading.Lock()
    stack: ExitStack | None = None
    bars = 0

    @classmethod
    def acquire(cls) -> None:
        from tqdm.contrib.logging import logging_redirect_tqdm

        with cls.lock:
            if cls.bars == 0:
                cls.stack = ExitStack()
                cls.stack.enter_context(logging_redirect_tqdm(tqdm_class=tqdm))
            cls.bars += 1

    @classmethod
    def release(cls) -> None:
        with cls.lock:
            cls.bars -= 1
            if cls.bars == 0 and cls.stack is not None:
                cls.stack.close()
                cls.stack = None


class _Bar(tqdm):
    """A ``tqdm`` that holds the logging redirection from its opening to its (first) ``close()``."""

    def __init__(self, *args, **kwargs):
        self._holds = False
        super().__init__(*args, **kwargs)
        if not self.disable:
            _Redirect.acquire()
            self._holds = True

    def close(self):
        super().close()
        if self._holds:
            self._holds = False
            _Redirect.release()


def progress_bar(total: int | None, desc: str, *, initial: int = 0, disable: bool = False) -> tqdm:
    """A progress bar; while it is open, the root logger's console handlers write through ``tqdm.write``."""
    return _Bar(total=total, initial=initial, desc=desc, disable=disable, dynamic_ncols=True)
