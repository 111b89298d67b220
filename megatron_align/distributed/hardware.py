"""What this machine's arithmetic is fast at: the precision ``trainer.precision=auto`` becomes."""

from __future__ import annotations


def fast_precision() -> str:
    """``bf16`` where bf16 matrix products are native (a CUDA GPU that supports bf16, a CPU with AVX-512
    BF16 or AMX), else ``32``: elsewhere bf16 is emulated (on an AVX2-only CPU a bf16 matmul measured 7x an
    fp32 one)."""
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "32"
    cpu = torch.cpu
    native = any(getattr(cpu, probe, lambda: False)() for probe in
                 ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return "bf16" if native else "32"
