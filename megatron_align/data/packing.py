"""Sequence packing: several samples in one row of at most ``seq_length`` tokens.

``pack_samples`` groups samples into ``PackedRow``s (first-fit-decreasing by default: fewest rows; or
``sequential``: next-fit in the given order). A row remembers each sample's length, so collation
(``collate.collate_packed``) can restart position ids at 0 per sample, build ``cu_seqlens`` boundaries for
variable-length attention, and keep the loss mask inside each sample (a sample's last token has no label).
Packing is deterministic: ties keep input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

PACKING_METHODS = ("first_fit_decreasing", "sequential")


@dataclass
class PackedRow:
    """Samples laid end to end."""

    input_ids: np.ndarray
    """``int64 [T]`` the samples' ids concatenated (``T <= seq_length``)."""
    target_mask: np.ndarray
    """``bool [T]`` the samples' target masks concatenated."""
    seq_lengths: list[int] = field(default_factory=list)
    """Length of each packed sample, in order (their sum is ``T``)."""
    sources: list[str] = field(default_factory=list)
    """``file:line`` of each packed sample."""

    def __len__(self) -> int:
        return len(self.input_ids)


def pack_samples(samples: Sequence, seq_length: int, method: str = "first_fit_decreasing") -> list[PackedRow]:
    """Pack ``samples`` (objects with ``input_ids``, ``target_mask``, ``source``) into rows of at most
    ``seq_length`` tokens; a sample longer than ``seq_length`` is a ``ValueError`` (truncate first)."""
    if method not in PACKING_METHODS:
        raise ValueError(f"packing method {method!r} is not one of {'|'.join(PACKING_METHODS)}")
    lengths = [len(s.input_ids) for s in samples]
    too_long = [n for n in lengths if n > seq_length]
    if too_long:
        raise ValueError(f"a sample of {too_long[0]} tokens does not fit seq_length={seq_length}")
    bins: list[list[int]] = []
    room: list[int] = []
    if method == "sequential":
        for i, n in enumerate(lengths):
            if not bins or room[-1] < n:
                bins.append([])
                room.append(seq_length)
            bins[-1].append(i)
            room[-1] -= n
    else:
        for i in sorted(range(len(samples)), key=lambda k: (-lengths[k], k)):
            n = lengths[i]
            slot = next((b for b, r in enumerate(room) if r >= n), None)
            if slot is None:
                bins.append([])
                room.append(seq_length)
                slot = len(bins) - 1
            bins[slot].append(i)
            room[slot] -= n
    rows = []
    for members in bins:
        rows.append(PackedRow(
            input_ids=np.concatenate([np.asarray(samples[i].input_ids, dtype=np.int64) for i in members]),
            target_mask=np.concatenate([np.asarray(samples[i].target_mask, dtype=bool) for i in members]),
            seq_lengths=[lengths[i] for i in members],
            sources=[getattr(samples[i], "source", "") for i in members],
        ))
    return rows
