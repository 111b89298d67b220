"""Keeps large freed CPU tensors in the heap for reuse, as torch's CUDA caching allocator does on GPUs.

On CPU torch allocates every tensor with ``malloc`` and frees it with ``free``. glibc serves blocks above its
mmap threshold (dynamic, at most 32 MiB by default) with a fresh ``mmap`` and returns them to the kernel on
``free``, so a training step that allocates the same large tensors every step (logits ``[S, B, V]``,
attention and MLP activations) page-faults all of them in again, zero-filled by the kernel, every step. On
the benchmark of docs/benchmarks.md that is 80-120 MiB of page faults and ~10% of a step. Raising
``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` makes glibc serve such blocks from the heap and keep freed ones
for the next step: the process's resident size stays at its high-water mark instead of shrinking between
steps (the caching allocator's trade-off), and nothing about the computation changes.

Memory cost: glibc reuses a freed block for a request of the same size only once it has coalesced with a free
neighbour (torch asks for 64-byte aligned blocks, which need a little more than an exactly sized free chunk),
so a loop that allocates one large tensor per step can hold a few freed copies of it until they merge (up to
~8 for a 64 MiB tensor in tests/unit/distributed/test_cpu_speed.py). On the benchmark's training step the peak
RSS growth of megatron_align was lower with the setting than without; the HF loop's rose by ~20%. Tensors of
256 MiB and more keep glibc's default (a fresh mapping each, returned on free), which limits what can be held.

``start()`` calls ``tune_cpu_malloc()`` when no CUDA device is present. It does nothing outside glibc, or
when ``MEGATRON_ALIGN_CPU_MALLOC=0`` is set in the environment.
"""

from __future__ import annotations

import ctypes
import logging
import os

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20
"""Blocks below 256 MiB come from the heap (glibc's default is dynamic, capped at 32 MiB)."""
TRIM_THRESHOLD = 2 << 30
"""Free memory at the top of the heap is returned to the kernel only above 2 GiB."""

_DONE = {"tuned": None}


def tune_cpu_malloc() -> bool:
    """Set glibc's mmap and trim thresholds once per process; returns whether they are set."""
    if _DONE["tuned"] is not None:
        return _DONE["tuned"]
    _DONE["tuned"] = False
    if os.environ.get("MEGATRON_ALIGN_CPU_MALLOC", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError outside glibc (musl, macOS)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    except (OSError, AttributeError):
        return False
    if ok:
        logger.info("CPU malloc: blocks below %d MiB are reused from the heap (MEGATRON_ALIGN_CPU_MALLOC=0 "
                    "turns this off)", MMAP_THRESHOLD >> 20)
    _DONE["tuned"] = ok
    return ok
