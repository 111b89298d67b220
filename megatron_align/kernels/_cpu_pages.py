"""Large CPU output tensors: backed by transparent huge pages, and reused from call to call.

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

Reuse (``empty_like(x, reuse=True)``, used for the log-prob gradient): even with huge pages, faulting in a
fresh gradient costs as much as computing it on the development VM, and erratically so (4 GiB: 1-4 s against
~0.15 s to write memory already resident, ``benchmarks/page_faults.py``), while megatron's in-place cross
entropy never touches fresh memory. On GPUs torch's caching allocator hands the freed gradient's block to the
next step; on CPU glibc returns every block above its mmap threshold to the kernel. So a gradient block is
kept after its tensor dies and handed to the next request of the same or a somewhat smaller size, as the
caching allocator would: a training step's peak is unchanged (the block is idle only between the gradient's
death and the next backward, when the step holds less), but the process keeps one gradient-sized block
resident between steps. At most ``MAX_BLOCKS`` blocks exist (idle ones are freed first when a request fits
none); a block is known to be idle when the NumPy array that backs its handed-out tensor has died (a weak
reference). Every caller writes the whole tensor: reused memory holds the previous gradient's values.
``release_cached()`` (``megatron_align.logprobs.release_cpu_gradient_cache``) frees the idle blocks;
``MEGATRON_ALIGN_CPU_GRAD_CACHE=0`` in the environment turns reuse off.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Optional

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


MAX_BLOCKS = 2
"""Reusable blocks kept at most (idle or handed out): one for the live gradient and one that a caller still
holds, e.g. a leaf's ``.grad`` kept until the optimizer clears it."""


@dataclass
class _Block:
    base: torch.Tensor  # [nbytes] uint8, owned by the cache
    user: Optional[weakref.ref] = None  # the NumPy array behind the tensor handed out; dead = idle

    def idle(self) -> bool:
        return self.user is None or self.user() is None


_blocks: list[_Block] = []
_lock = threading.Lock()


def _reuse_enabled() -> bool:
    return os.environ.get("MEGATRON_ALIGN_CPU_GRAD_CACHE", "1") != "0"


def _take(nbytes: int) -> Optional[_Block]:
    """The smallest idle block of nbytes..2*nbytes, else a new one if MAX_BLOCKS allows, else None."""
    fits = [b for b in _blocks if b.idle() and nbytes <= b.base.numel() <= 2 * nbytes]
    if fits:
        return min(fits, key=lambda b: b.base.numel())
    while len(_blocks) >= MAX_BLOCKS:  # free idle blocks that do not fit before holding a new one
        idle = next((b for b in _blocks if b.idle()), None)
        if idle is None:
            return None  # every block is in use: the caller gets a plain tensor
        _blocks.remove(idle)
    block = _Block(advise_huge_pages(torch.empty(nbytes, dtype=torch.uint8)))
    _blocks.append(block)
    return block


def release_cached() -> int:
    """Free the idle reusable blocks; returns the bytes released."""
    with _lock:
        idle = [b for b in _blocks if b.idle()]
        for b in idle:
            _blocks.remove(b)
    return sum(b.base.numel() for b in idle)


def cached_bytes() -> int:
    """Bytes held by reusable blocks, idle or handed out."""
    with _lock:
        return sum(b.base.numel() for b in _blocks)


def empty_like(x: torch.Tensor, reuse: bool = False) -> torch.Tensor:
    """``torch.empty_like(x)`` (contiguous), huge-page backed when it is a large CPU tensor; with ``reuse``, a
    large CPU tensor comes from a block kept from an earlier call when one is idle (see the module docstring:
    the caller must write every element)."""
    nbytes = x.numel() * x.element_size()
    block = None
    if reuse and x.device.type == "cpu" and nbytes >= MIN_BYTES and _reuse_enabled():
        with _lock:
            block = _take(nbytes)
            if block is not None:
                arr = block.base.numpy()[:nbytes]  # a new array: it lives exactly as long as the tensor
                block.user = weakref.ref(arr)
    if block is None:
        return advise_huge_pages(torch.empty_like(x, memory_format=torch.contiguous_format))
    return torch.from_numpy(arr).view(x.dtype).view(x.shape)
