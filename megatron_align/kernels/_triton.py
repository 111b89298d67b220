"""Whether Triton can run a kernel on a given tensor: compiled on CUDA, or interpreted on CPU when
``TRITON_INTERPRET=1`` was set before triton was imported (how tests exercise the kernels here)."""

from __future__ import annotations

import functools
import os

import torch


@functools.lru_cache(maxsize=1)
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_usable(t: torch.Tensor) -> bool:
    """Triton can launch on ``t``: CUDA tensor with triton installed, or CPU tensor under the interpreter."""
    if not triton_importable():
        return False
    return t.is_cuda or (t.device.type == "cpu" and interpreting())


def choose_triton(backend: str, t: torch.Tensor) -> bool:
    """``backend`` ("auto" | "triton" | "torch") -> whether to launch the Triton kernels on ``t``. "auto"
    takes Triton for CUDA tensors and the torch path for CPU ones; "triton" fails where Triton cannot run."""
    if backend == "triton":
        if not triton_usable(t):
            raise RuntimeError("backend='triton' needs triton and a CUDA tensor "
                               "(or TRITON_INTERPRET=1 on CPU)")
        return True
    if backend == "torch":
        return False
    if backend != "auto":
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    return t.is_cuda and triton_usable(t)
