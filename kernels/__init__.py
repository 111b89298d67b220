"""Triton kernels for megatron_align's hot numerical paths (vocab-parallel log-probs, fused LM-head log-probs,
group importance weights).

Each op will have three faces: a ``@triton.jit`` kernel (GPU, and CPU under ``TRITON_INTERPRET=1`` in tests),
a memory-light torch implementation for CPU runs, and a plain torch reference used only by tests. Kernels take
process groups as arguments and never read megatron's global parallel state. This package imports only torch
(and triton, lazily); it is installed with megatron_align so that ``import kernels`` works from a wheel.
"""

__all__: list[str] = []
