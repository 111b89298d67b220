"""Reference log-probs precomputed once (``model.dpo.precompute_ref_logprobs=True``) and kept in the run.

One forward pass of the reference over every item of the training set, in micro-batches of
``model.dpo.log_prob_forward_micro_batch_size`` items, gives each item's per-sequence log-probs. They are
stored as ``<run>/ref_logprobs/<key>.npz`` (``offsets [N + 1]``, ``values [rows]`` float64) where the key
hashes what they depend on: the data files (path, size, mtime), the reference checkpoint, the sequence rules
and the EXO temperature. Every later epoch, and a resumed run, reads them back instead of running the
reference again. The values equal the on-the-fly ones up to the float rounding of a different batching.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)


def cache_key(files: list, reference: str, rules: dict) -> str:
    """A short hash of the data files' identity, the reference checkpoint and the rules."""
    ident = []
    for f in files:
        st = os.stat(f)
        ident.append([os.path.abspath(f), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"files": ident, "reference": os.path.abspath(reference), "rules": rules},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class PrecomputedReference:
    """Per item of a dataset, its rows' reference log-probs."""

    def __init__(self, offsets: np.ndarray, values: np.ndarray):
        self.offsets, self.values = offsets, values

    def of(self, indices: list) -> torch.Tensor:
        """The rows of ``indices``' items, item after item -> float32 [R]."""
        return torch.from_numpy(np.concatenate(
            [self.values[self.offsets[i]:self.offsets[i + 1]] for i in indices]).astype(np.float32))

    @classmethod
    def load_or_compute(cls, path: Path, ds, compute, micro_batch_size: int) -> PrecomputedReference:
        """Read ``path``, or compute it: this data-parallel rank scores items ``dp_rank::dp`` with
        ``compute(item_indices_per_microbatch) -> list of [R] tensors``, then one all-reduce over the
        data-parallel group and one write."""
        from megatron.core import parallel_state as ps

        from megatron_align.distributed.launch import compute_device

        if path.is_file():
            with np.load(path) as z:
                logger.info("reference log-probs read from %s", path)
                return cls(z["offsets"], z["values"])
        dp_rank, dp = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
        group = ps.get_data_parallel_group()
        mine = list(range(dp_rank, len(ds), dp))
        sizes = torch.zeros(len(ds), dtype=torch.float64)
        for i in mine:
            sizes[i] = len(ds[i].sequences)
        sizes = sizes.to(compute_device())
        torch.distributed.all_reduce(sizes, group=group)
        offsets = np.concatenate(([0], np.cumsum(sizes.cpu().numpy().astype(np.int64))))
        values = torch.zeros(int(offsets[-1]), dtype=torch.float64)
        # every rank runs the same number of micro-batches (pipeline stages and TP ranks take part in each)
        per_rank = -(-len(ds) // dp)
        chunks = [mine[i:i + micro_batch_size] for i in range(0, per_rank, micro_batch_size)]
        padding = [not c for c in chunks]  # a rank with fewer items re-scores one and discards it
        chunks = [c if c else [mine[-1] if mine else 0] for c in chunks]
        logger.info("precomputing reference log-probs of %d items (%d micro-batches on this rank)",
                    len(ds), len(chunks))
        for idx, out, pad in zip(chunks, compute(chunks), padding):
            if pad:
                continue
            flat = torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in idx])
            values[flat] = out.double()
        values = values.to(compute_device())
        torch.distributed.all_reduce(values, group=group)  # each row was written by exactly one DP rank
        values = values.cpu().numpy()
        last = ps.is_pipeline_last_stage(ignore_virtual=True)
        if last and ps.get_tensor_model_parallel_rank() == 0 and dp_rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
            np.savez(tmp, offsets=offsets, values=values)
            os.replace(tmp, path)
            logger.info("reference log-probs stored in %s", path)
        return cls(offsets, values)

