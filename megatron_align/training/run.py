"""The run skeleton the training stages share: validation batches and the crash hook of resume tests."""

from __future__ import annotations

import math
import os
import signal


def kill_hook(step: int) -> None:
    """Test hook: a crash right after the checkpoint of step ``MEGATRON_ALIGN_TEST_KILL_AFTER_STEP`` (SIGKILL,
    nothing flushed), to test that a resumed run equals an uninterrupted one."""
    if os.environ.get("MEGATRON_ALIGN_TEST_KILL_AFTER_STEP") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


def validation_microbatches(val_ds, limit, vcfg, dp_rank, dp, pad_id, seq_len, collate):
    """This rank's validation micro-batches: the first ``limit`` global batches of the validation set."""
    if val_ds is None or len(val_ds) == 0:
        return []
    n_global = max(1, len(val_ds) // vcfg.global_batch_size)
    if isinstance(limit, int) and not isinstance(limit, bool):
        n = limit
    else:
        n = max(1, math.floor(n_global * float(limit)))
    n = min(n, n_global)
    per_rank = vcfg.global_batch_size // dp
    out = []
    for b in range(n):
        base = b * vcfg.global_batch_size + dp_rank * per_rank
        idx = [(base + i) % len(val_ds) for i in range(per_rank)]
        for i in range(0, per_rank, vcfg.micro_batch_size):
            out.append(collate([val_ds[j] for j in idx[i:i + vcfg.micro_batch_size]], pad_id=pad_id,
                               seq_length=seq_len))
    return out
