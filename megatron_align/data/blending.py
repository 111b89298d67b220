"""Blending several files by ``concat_sampling_probabilities``: a deterministic, resumable sample stream.

``BlendedIndex(sizes, probabilities, seed, shuffle)`` maps every stream position ``i = 0, 1, 2, ...`` to
``(dataset d, record r)``, as a pure function of ``(seed, i)``; resuming at sample ``i`` needs nothing else.

How positions are assigned (exact proportions, random order):

1. The stream is cut into blocks of ``B`` positions (``B >= 1024`` and ``B * p_d >= 2`` for every used
   dataset). Dataset ``d`` owns ``C_d(b)`` of the first ``b`` blocks' positions, the largest-remainder
   apportionment of ``b * B`` by the probabilities: ``|C_d(b) - p_d * b * B| < 1`` at every block edge, and
   ``C_d`` never decreases because ``B * p_d >= 1``.
2. Inside block ``b`` the ``C_d(b + 1) - C_d(b)`` positions of each dataset are shuffled with a generator
   seeded by ``(seed, b)`` (``shuffle=False``: spread evenly instead, in a fixed pattern).
3. The ``n``-th position owned by dataset ``d`` reads its record ``perm_{seed, d, e}[n mod N_d]`` in pass
   ``e = n // N_d`` over the file (a fresh permutation per pass; the identity with ``shuffle=False``).

``BlendedSFTDataset`` puts ``SFTFile`` samples behind the index. A position whose record is skipped or
dropped is filled by the next record of the same dataset's stream, so every position yields a sample and the
proportions hold; the replacement is a pure function of the position too, so all data-parallel ranks agree.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from megatron_align.data.errors import DataError

logger = logging.getLogger(__name__)


def apportion(probabilities: np.ndarray, total: int) -> np.ndarray:
    """Largest-remainder split of ``total`` into integers by ``probabilities`` (ties: lower dataset id)."""
    exact = probabilities * total
    base = np.floor(exact).astype(np.int64)
    left = int(total - base.sum())
    if left > 0:
        frac = exact - base
        order = np.lexsort((np.arange(len(frac)), -frac))  # largest fraction first, then lower id
        base[order[:left]] += 1
    return base


def normalize_probabilities(probabilities: Sequence[float] | None, n: int) -> np.ndarray:
    """``probabilities`` as a float64 array summing to 1 (``None`` with one dataset: ``[1.0]``)."""
    if probabilities is None:
        if n != 1:
            raise ValueError(f"{n} datasets need concat_sampling_probabilities (one per file)")
        return np.ones(1)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.shape != (n,) or not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError(f"concat_sampling_probabilities={list(probabilities)} must be {n} non-negative "
                         "numbers with a positive sum")
    return p / p.sum()


class BlendedIndex:
    """Stream position -> ``(dataset, record)`` for datasets of ``sizes`` records (module docstring)."""

    def __init__(self, sizes: Sequence[int], probabilities: Sequence[float] | None = None, seed: int = 1234,
                 shuffle: bool = True, block_size: int | None = None):
        self.sizes = [int(s) for s in sizes]
        if any(s <= 0 for s in self.sizes):
            raise ValueError(f"every blended dataset needs records, got sizes {self.sizes}")
        self.p = normalize_probabilities(probabilities, len(self.sizes))
        if any(s == 0 for s, p in zip(self.sizes, self.p) if p > 0):
            raise ValueError("a dataset with a positive probability has no records")
        used = self.p[self.p > 0]
        self.block_size = block_size or max(1024, math.ceil(2.0 / float(used.min())))
        if self.block_size * float(used.min()) < 1:
            raise ValueError(f"block_size={self.block_size} is too small for probability {used.min():.3g}")
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self._block_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._perm_cache: dict[int, tuple[int, np.ndarray]] = {}

    def __len__(self) -> int:
        """One pass over every file's records (the stream itself never ends)."""
        return sum(self.sizes)

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """``(dataset id, ordinal within that dataset's stream)`` of each position of block ``b``: ``[B]``."""
        cached = self._block_cache.get(b)
        if cached is not None:
            return cached
        before = apportion(self.p, b * self.block_size)  # [D]
        counts = apportion(self.p, (b + 1) * self.block_size) - before  # [D] >= 0
        ids = np.repeat(np.arange(len(self.sizes)), counts)  # [B]
        if self.shuffle:
            ids = ids[np.random.default_rng([self.seed, 0x5EED, b]).permutation(self.block_size)]
        else:  # dataset d's k-th position sits at the ideal time (k + 0.5) / count_d
            rank = np.concatenate([np.arange(c) for c in counts])
            ids = ids[np.lexsort((ids, (rank + 0.5) / counts[ids]))]
        # each dataset's draws take its next ordinals in stream order
        occurrence = np.zeros_like(ids)  # [B] how many earlier positions of the block have the same dataset
        for d in range(len(self.sizes)):
            hits = np.flatnonzero(ids == d)
            occurrence[hits] = np.arange(len(hits))
        ordinal = before[ids] + occurrence
        if len(self._block_cache) > 4:
            self._block_cache.clear()
        self._block_cache[b] = (ids, ordinal)
        return ids, ordinal

    def locate(self, i: int) -> tuple[int, int]:
        """``(dataset, ordinal)``: which dataset position ``i`` draws from and its rank in that dataset's
        stream."""
        if i < 0:
            raise IndexError(f"stream position {i} is negative")
        b, j = divmod(int(i), self.block_size)
        ids, ordinal = self._block(b)
        return int(ids[j]), int(ordinal[j])

    def record_of(self, d: int, ordinal: int) -> int:
        """Record index of dataset ``d``'s ``ordinal``-th draw (a fresh permutation per pass over it)."""
        epoch, pos = divmod(int(ordinal), self.sizes[d])
        if not self.shuffle:
            return pos
        cached = self._perm_cache.get(d)
        if cached is None or cached[0] != epoch:
            cached = (epoch, np.random.default_rng([self.seed, d, epoch]).permutation(self.sizes[d]))
            self._perm_cache[d] = cached
        return int(cached[1][pos])

    def __getitem__(self, i: int) -> tuple[int, int]:
        """``(dataset, record)`` of stream position ``i``."""
        d, ordinal = self.locate(i)
        return d, self.record_of(d, ordinal)


class BlendedSFTDataset:
    """Samples of several ``SFTFile``s blended by probability; ``ds[i]`` is stream position ``i``'s sample.

    ``len()`` is ``num_samples`` (default: one pass over all records); positions past it keep the stream
    going, so ``ds[consumed_samples + j]`` resumes a run exactly.
    """

    def __init__(self, files: Sequence, probabilities: Sequence[float] | None = None, seed: int = 1234,
                 shuffle: bool = True, num_samples: int | None = None, max_replacements: int = 1000):
        self.files = list(files)
        self.index = BlendedIndex([len(f) for f in self.files], probabilities, seed, shuffle)
        self.num_samples = int(num_samples) if num_samples is not None else len(self.index)
        self.max_replacements = max_replacements

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int):
        d, ordinal = self.index.locate(i)
        f = self.files[d]
        for attempt in range(self.max_replacements):
            s = f.sample(self.index.record_of(d, ordinal + attempt))
            if s is not None:
                return s
        raise DataError(f.path, None, None, f"{self.max_replacements} records in a row were skipped or "
                        "dropped; check on_bad_record, max_seq_length and truncation_method (see the "
                        "warnings above)")

    def report(self, log: logging.Logger | None = None) -> dict[str, dict[str, int]]:
        """Log each file's counts of skipped / dropped / truncated samples; returns them by file."""
        return {f.path: f.report.report(log) for f in self.files}
