"""Data errors for users and the bookkeeping of what was skipped, dropped or truncated.

* ``DataError``: a malformed file or record. Its text is exactly one line, ``file:line: field: what is
  wrong`` (``train.jsonl:7: conversations[2].from: unknown role 'Bot' (expected User or Assistant)``); line
  numbers are 1-based, as editors show them. Raised when ``on_bad_record="error"``.
* ``RecordError``: what a record validator raises (field + problem, no file position); the reader turns it
  into a ``DataError`` or, with ``on_bad_record="skip"``, into a counted skip.
* ``DataReport``: per-reason counters (bad records, over-length samples, samples without any target token...)
  keeping the first few examples of each reason. The first occurrence of each reason is logged once at
  WARNING; ``report()`` logs the totals.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from megatron_align.config.data import ON_BAD_RECORD
from megatron_align.config.errors import UserError

logger = logging.getLogger(__name__)

INFO_REASONS = frozenset({"truncated_left", "truncated_right", "label_ignored"})
"""Reasons that keep the sample (shortened, or rendered as NeMo renders it): reported at INFO."""

RECORD_FIELD = "(record)"
"""The field name used when the whole line is at fault (invalid JSON, not an object)."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class DataError(UserError, ValueError):
    """A malformed data file or record; ``str()`` is one line: ``file:line: field: what is wrong``."""

    def __init__(self, path: str | os.PathLike, line: int | None, field: str | None, problem: str):
        self.path = os.fspath(path)
        self.line = line
        self.field = field
        self.problem = _one_line(problem)
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.field}: {self.problem}" if self.field else f"{where}: {self.problem}"

    prefix = "data error"


class RecordError(ValueError):
    """Raised by record validators: ``field`` (``conversations[2].from``) and what is wrong with it."""

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = _one_line(problem)
        super().__init__(f"{field}: {self.problem}")


def check_on_bad_record(value: str) -> str:
    """``value`` if it is a known ``on_bad_record`` policy, else ``ValueError``."""
    if value not in ON_BAD_RECORD:
        raise ValueError(f"on_bad_record={value!r} is not one of {'|'.join(ON_BAD_RECORD)}")
    return value


@dataclass
class DataReport:
    """Counts by reason of what a dataset skipped, dropped or changed, with the first few examples of each.

    Reasons used by the SFT dataset: ``bad_record`` (malformed line, ``on_bad_record="skip"``),
    ``over_length`` (dropped by ``truncation_method="drop"``), ``truncated_left`` / ``truncated_right`` (kept,
    shortened), ``no_target`` (no trained token at all), ``no_target_after_truncation``, ``too_short``
    (``min_seq_length``), ``boundary_merge`` (a token spans a prompt/answer boundary).
    """

    name: str
    """Shown in log lines (the file or dataset name)."""
    max_examples: int = 3
    """Examples kept per reason."""
    counts: dict[str, int] = field(default_factory=dict)
    """Occurrences per reason."""
    examples: dict[str, list[str]] = field(default_factory=dict)
    """The first ``max_examples`` messages per reason."""
    _counted: set = field(default_factory=set, repr=False, compare=False)

    def add(self, reason: str, message: str, level: int = logging.WARNING, key: object = None) -> None:
        """Count one occurrence of ``reason``; the first is logged at once (``level``). With ``key`` (a line
        number), a key already counted for this reason is not counted again: a bad line read in every epoch
        is one bad line."""
        if key is not None:
            if (reason, key) in self._counted:
                return
            self._counted.add((reason, key))
        first = reason not in self.counts
        self.counts[reason] = self.counts.get(reason, 0) + 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < self.max_examples:
            kept.append(_one_line(message))
        if first:
            logger.log(level, "%s: %s: %s (further ones are counted; the totals are logged by report())",
                       self.name, reason, _one_line(message))

    def count(self, reason: str) -> int:
        """Occurrences of ``reason`` so far."""
        return self.counts.get(reason, 0)

    def merge(self, other: DataReport) -> None:
        """Add ``other``'s counts and examples to this report."""
        for reason, n in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
            kept = self.examples.setdefault(reason, [])
            kept.extend(other.examples.get(reason, [])[: max(0, self.max_examples - len(kept))])

    def report(self, log: logging.Logger | None = None) -> dict[str, int]:
        """Log one line per reason (count and first examples; samples kept as they are or shortened at INFO,
        the rest at WARNING); returns the counts."""
        log = log or logger
        for reason in sorted(self.counts):
            examples = "; ".join(self.examples.get(reason, []))
            level = logging.INFO if reason in INFO_REASONS else logging.WARNING
            log.log(level, "%s: %d x %s (first: %s)", self.name, self.counts[reason], reason, examples)
        return dict(self.counts)
