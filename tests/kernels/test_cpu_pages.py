"""kernels/_cpu_pages.py: a large CPU output tensor gets the huge-page advice on its own mapping (VmFlags
``hg`` in /proc/self/smaps), tensors outside [MIN_BYTES, MAX_BYTES] are left alone, values are untouched."""

import sys

import pytest
import torch

from kernels import _cpu_pages


def _vm_flags(addr: int) -> list[str]:
    """VmFlags of the mapping that contains ``addr`` in this process."""
    flags, inside = None, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and all(c in "0123456789abcdef-" for c in head):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= addr < hi
            elif inside and line.startswith("VmFlags:"):
                flags = line.split()[1:]
    assert flags is not None, hex(addr)
    return flags


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps is Linux's")


@linux_only
def test_large_cpu_tensor_is_advised_and_usable():
    x = torch.randn(1024, 8192)  # 32 MiB
    g = _cpu_pages.empty_like(x)
    assert g.shape == x.shape and g.dtype == x.dtype and g.is_contiguous()
    assert "hg" in _vm_flags(g.data_ptr() + g.nbytes // 2)
    g.copy_(x)
    assert torch.equal(g, x)


@linux_only
def test_tensors_outside_the_size_window_are_left_alone():
    plain = torch.empty(_cpu_pages.MIN_BYTES // 4 + 4096)  # control: a plain allocation carries no advice
    assert "hg" not in _vm_flags(plain.data_ptr() + plain.nbytes // 2)
    small = torch.empty(_cpu_pages.MIN_BYTES // 4 - 4096)
    assert _cpu_pages.advise_huge_pages(small) is small
    assert "hg" not in _vm_flags(small.data_ptr() + small.nbytes // 2)
    huge = torch.empty(_cpu_pages.MAX_BYTES // 4 + 4096)  # never touched: no memory is used
    _cpu_pages.advise_huge_pages(huge)
    assert "hg" not in _vm_flags(huge.data_ptr() + huge.nbytes // 2)


def test_non_contiguous_input_gives_contiguous_output():
    x = torch.randn(64, 4096).t()
    g = _cpu_pages.empty_like(x)
    assert g.shape == x.shape and g.is_contiguous()
