"""Large CPU output tensors backed by transparent huge pages.

A fresh multi-MiB CPU tensor (for example the [N, V/tp] logits gradient that the log-prob backward must
return) is served by glibc with a new anonymous ``mmap``; writing it then takes one page fault per 4 KiB page,
each zero-filled by the kernel. For a 250 MiB gradient that is 64k faults and, measured on the development
machine, ~70 ms: more than the whole backward computation (~25 ms into a buffer that already exists).
``madvise(MADV_HUGEPAGE)`` on the still-untouched range lets the kernel fault it in as 2 MiB pages (~14 ms for
the same tensor), the same effect as torch's process-wide ``THP_MEM_ALLOC_ENABLE=1``, applied here only to the
outputs this package allocates.

Only advice: when THP is off (``/sys/kernel/mm/transparent_hugepage/enabled`` = never), outside Linux/glibc,
for CUDA tensors, and for sizes outside [MIN_BYTES, MAX_BYTES], ``empty_like`` is plain ``torch.empty_like``;
the values and the memory a tensor holds do not change (at most 2 MiB of rounding per tensor).
"""

from __future__ import annotations

import ctypes
import functools
import mmap

import torch

MIN_BYTES = 8 << 20
"""Tensors smaller than this are left alone (few faults to save, and likely served from glibc's heap)."""
MAX_BYTES = 1 << 30
"""Tensors larger than this are left alone too: on the development VM (``benchmarks/page_faults.py``) the
first touch of 2 GiB with the advice took 2.2 s once against 0.5 s without (4 GiB: 6.6 s against 1.1 s),
presumably while the kernel assembled free 2 MiB pages; up to 1 GiB the advice was 3-4x faster every time."""
_MADV_HUGEPAGE = 14  # <sys/mman.h>, Linux


@functools.lru_cache(maxsize=1)
def _madvise():
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def advise_huge_pages(t: torch.Tensor) -> torch.Tensor:
    """Ask the kernel to back the whole pages inside ``t``'s storage with huge pages; returns ``t``."""
    madvise = _madvise()
    nbytes = t.untyped_storage().nbytes()
    if madvise is None or t.device.type != "cpu" or not MIN_BYTES <= nbytes <= MAX_BYTES:
        return t
    page = mmap.PAGESIZE
    start = t.untyped_storage().data_ptr()
    first = -(-start // page) * page  # round up: never advise a page shared with another allocation
    last = (start + nbytes) // page * page
    if last > first:
        madvise(first, last - first, _MADV_HUGEPAGE)  # advice only: a failure changes nothing but speed
    return t


def empty_like(x: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like(x)`` (contiguous), huge-page backed when it is a large CPU tensor."""
    return advise_huge_pages(torch.empty_like(x, memory_format=torch.contiguous_format))
