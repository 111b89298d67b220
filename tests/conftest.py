"""Session fixtures: a single-process megatron setup (TP=1, PP=1, gloo) shared by in-process tests."""

import os

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def megatron_single():
    """torch.distributed (1 rank, gloo on CPU) + megatron parallel groups at TP=1, PP=1."""
    from megatron_align.distributed import start

    return start(1, 1, seed=1234)
