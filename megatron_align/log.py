"""Logging set-up for entry points (library modules only create loggers).

Rank 0 logs at INFO, other ranks at WARNING, so a 64-rank job prints one progress story; megatron's and
torch's own chatter is raised to ERROR and Python warnings from them are silenced.
"""

from __future__ import annotations

import logging
import os
import warnings


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
