"""Triton kernels for megatron_align's hot numerical paths (vocab-parallel log-probs, fused LM-head log-probs,
group importance weights).

Each op will have three faces: a ``@triton.jit`` kernel (GPU, and CPU under ``TRITON_INTERPRET=1`` in tests),
a memory-light torch implementation for CPU runs, and a plain torch reference used only by tests. Kernels take
process groups as arguments and never read megatron's global parallel state. This package imports only torch
(and triton, lazily). It lives inside megatron_align (not as a top-level ``kernels``) because Hugging Face's
``kernels`` distribution, which transformers >= 5 installs, owns that top-level name.
"""

__all__: list[str] = []
