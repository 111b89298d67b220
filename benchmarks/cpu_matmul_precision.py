"""Why ``trainer.precision=auto`` picks fp32 on some CPUs: one matmul of the demo's size in fp32 and bf16.

    python benchmarks/cpu_matmul_precision.py [--size 1024] [--repeats 20]

Prints torch's CPU capability (``torch.backends.cpu.get_cpu_capability()``), whether AVX-512 BF16 / AMX are
present, and the median time of ``a @ b`` for square ``[size, size]`` matrices in each dtype, side by side.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def median_ms(dtype: torch.dtype, size: int, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(dtype)
    b = torch.randn(size, size, generator=g).to(dtype)
    a @ b  # warm-up (oneDNN picks its kernel)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    cpu = torch.cpu
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, capability "
          f"{torch.backends.cpu.get_cpu_capability()}, avx512_bf16="
          f"{getattr(cpu, '_is_avx512_bf16_supported', lambda: False)()}, amx="
          f"{getattr(cpu, '_is_amx_tile_supported', lambda: False)()}")
    fp32 = median_ms(torch.float32, args.size, args.repeats)
    bf16 = median_ms(torch.bfloat16, args.size, args.repeats)
    print(f"matmul [{args.size}x{args.size}] median of {args.repeats}: fp32 {fp32:.2f} ms, "
          f"bf16 {bf16:.2f} ms, bf16/fp32 {bf16 / fp32:.2f}x")


if __name__ == "__main__":
    main()
