"""Global-batch sampling that resumes exactly: sample order is a pure function of (seed, epoch).

Step ``k`` of a run consumes global samples ``[k * G, (k + 1) * G)`` of an endless stream made of one
permutation of the dataset per epoch (or the identity when not shuffling). Each data-parallel rank takes its
contiguous slice of the global batch, split into micro-batches. Resuming needs only ``consumed_samples``.
"""

from __future__ import annotations

import numpy as np


class GlobalBatchSampler:
    """Indices of the dataset for a global batch, for this data-parallel rank."""

    def __init__(self, num_samples: int, global_batch_size: int, micro_batch_size: int, dp_rank: int,
                 dp_size: int, seed: int, shuffle: bool = True, epoch_length: int | None = None):
        if num_samples <= 0:
            raise ValueError("the dataset is empty")
        if global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(f"global batch {global_batch_size} is not a multiple of micro batch "
                             f"{micro_batch_size} x data-parallel size {dp_size}")
        self.n, self.gbs, self.mbs = num_samples, global_batch_size, micro_batch_size
        self.dp_rank, self.dp_size, self.seed, self.shuffle = dp_rank, dp_size, seed, shuffle
        self._cache: dict[int, np.ndarray] = {}
        self.epoch_length = min(epoch_length or num_samples, num_samples)
        """Stream positions per epoch: each epoch takes the first ``epoch_length`` of its own permutation of
        the dataset (``trainer.dpo.limit_train_batches``); the whole dataset by default."""

    @property
    def num_microbatches(self) -> int:
        """Micro-batches per step on one data-parallel rank (gradient accumulation steps)."""
        return self.gbs // (self.mbs * self.dp_size)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            self._cache = {epoch: (np.random.default_rng([self.seed, epoch]).permutation(self.n)
                                   if self.shuffle else np.arange(self.n))}
        return self._cache[epoch]

    def global_indices(self, consumed_samples: int) -> list[int]:
        """Dataset indices of the global batch that starts at stream position ``consumed_samples``."""
        out = []
        for pos in range(consumed_samples, consumed_samples + self.gbs):
            epoch, offset = divmod(pos, self.epoch_length)
            out.append(int(self._epoch_order(epoch)[offset]))
        return out

    def microbatches(self, consumed_samples: int) -> list[list[int]]:
        """This rank's micro-batches (lists of dataset indices) for the step at ``consumed_samples``."""
        idx = self.global_indices(consumed_samples)
        per_rank = self.gbs // self.dp_size
        mine = idx[self.dp_rank * per_rank:(self.dp_rank + 1) * per_rank]
        return [mine[i:i + self.mbs] for i in range(0, per_rank, self.mbs)]


def total_steps(num_items: int, global_batch_size: int, max_epochs: int, max_steps: int) -> int:
    """Optimizer steps of a run: ``max_epochs`` passes over ``num_items`` (whole global batches), capped by
    ``max_steps`` when it is > 0 (``max_epochs <= 0`` means ``max_steps`` alone decides)."""
    steps = max(1, num_items // global_batch_size) * max_epochs
    if max_steps > 0:
        steps = min(steps, max_steps) if max_epochs > 0 else max_steps
    return steps
