"""Cost of first-touching a fresh CPU tensor (page faults + the kernel's zeroing), with 4 KiB pages and with
the transparent-huge-page advice that ``kernels/_cpu_pages.py`` gives the log-prob gradient.

    python benchmarks/page_faults.py --gib 4 --reps 3

Prints, per repetition, the wall time of ``torch.empty(n)`` followed by ``fill_(0)`` for each variant. This is
the cost that the default (input-preserving) log-prob backward pays for its fresh [N, V] gradient and that
megatron's in-place cross entropy and ``inplace_backward=True`` do not.
"""

from __future__ import annotations

import argparse
import time

import torch

from megatron_align.kernels import _cpu_pages


def _touch(n: int, huge: bool) -> float:
    start = time.perf_counter()
    t = torch.empty(n)
    if huge:
        _cpu_pages.advise_huge_pages(t)
    t.fill_(0)
    elapsed = time.perf_counter() - start
    del t
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0, help="tensor size in GiB (fp32)")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    n = int(args.gib * (1 << 30)) // 4
    _cpu_pages.MAX_BYTES = float("inf")  # advise whatever the size: shows where the product's cap comes from
    print(f"fp32 tensor of {args.gib:g} GiB; seconds for empty + fill_(0)")
    for r in range(args.reps):
        plain, huge = _touch(n, False), _touch(n, True)
        print(f"rep {r}: 4 KiB pages {plain:.3f}  huge-page advice {huge:.3f}", flush=True)


if __name__ == "__main__":
    main()
