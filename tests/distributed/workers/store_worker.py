"""Starts this rank (``distributed.start``), runs one all-reduce, and prints the TCP addresses this process
listens on: ``LISTEN rank=R a.b.c.d:port ...``."""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from megatron_align.distributed import start  # noqa: E402
from tests.helpers import listening_addresses  # noqa: E402

if __name__ == "__main__":
    env = start(1, 1)
    t = torch.ones(1)
    torch.distributed.all_reduce(t)
    assert t.item() == env.world_size
    print(f"LISTEN rank={env.rank} {' '.join(listening_addresses(os.getpid()))}", flush=True)
    torch.distributed.barrier()
