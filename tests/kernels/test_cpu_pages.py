"""kernels/_cpu_pages.py: a large CPU output tensor gets the huge-page advice on its own mapping (VmFlags
``hg`` in /proc/self/smaps), tensors outside [MIN_BYTES, MAX_BYTES] are left alone, values are untouched; with
``reuse`` a dead tensor's block is handed to the next request (never while the tensor lives), at most
MAX_BLOCKS are kept, and stale contents never reach a log-prob gradient."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_align.kernels import _cpu_pages, reference
from megatron_align.logprobs import release_cpu_gradient_cache, token_logprobs


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


_WINDOW = """
import json, torch
from megatron_align.kernels import _cpu_pages
from tests.kernels.test_cpu_pages import _vm_flags
def hg(t):
    return "hg" in _vm_flags(t.data_ptr() + t.nbytes // 2)
plain = torch.empty(_cpu_pages.MIN_BYTES // 4 + 4096)  # control: a plain allocation carries no advice
small = torch.empty(_cpu_pages.MIN_BYTES // 4 - 4096)
same = _cpu_pages.advise_huge_pages(small) is small
huge = torch.empty(_cpu_pages.MAX_BYTES // 4 + 4096)  # never touched: no memory is used
_cpu_pages.advise_huge_pages(huge)
print(json.dumps({"plain": hg(plain), "small": hg(small), "same": same, "huge": hg(huge)}))
"""


@linux_only
def test_tensors_outside_the_size_window_are_left_alone():
    """In a fresh interpreter: where glibc's thresholds were raised (``distributed/cpu_malloc.py``, which
    in-process megatron tests switch on) small tensors share heap ranges that earlier advice covered."""
    proc = subprocess.run([sys.executable, "-c", _WINDOW], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r == {"plain": False, "small": False, "same": True, "huge": False}


def test_non_contiguous_input_gives_contiguous_output():
    x = torch.randn(64, 4096).t()
    g = _cpu_pages.empty_like(x)
    assert g.shape == x.shape and g.is_contiguous()


@pytest.fixture
def cache(monkeypatch):
    """An empty block cache of this test's own, reuse switched on whatever the environment says."""
    monkeypatch.setattr(_cpu_pages, "_blocks", [])
    monkeypatch.delenv("MEGATRON_ALIGN_CPU_GRAD_CACHE", raising=False)
    return _cpu_pages


MIB16 = torch.empty(4 << 20)  # 16 MiB of fp32: above MIN_BYTES


def test_dead_tensor_block_is_reused_live_one_never(cache):
    a = cache.empty_like(MIB16, reuse=True)
    assert a.shape == MIB16.shape and a.dtype == MIB16.dtype and a.is_contiguous()
    a.fill_(1.0)
    b = cache.empty_like(MIB16, reuse=True)  # a is alive: a block of its own
    assert b.data_ptr() != a.data_ptr()
    b.fill_(2.0)
    assert torch.all(a == 1.0)  # writing b did not touch a
    ptr = a.data_ptr()
    del a
    c = cache.empty_like(MIB16, reuse=True)
    assert c.data_ptr() == ptr and cache.cached_bytes() == 2 * MIB16.nbytes


def test_views_keep_a_block_in_use(cache):
    a = cache.empty_like(MIB16, reuse=True)
    row = a.view(4, -1)[1]  # a view alone (e.g. what autograd kept) still holds the storage
    ptr = a.data_ptr()
    del a
    assert cache.empty_like(MIB16, reuse=True).data_ptr() != ptr
    del row
    assert cache.empty_like(MIB16, reuse=True).data_ptr() == ptr


def test_other_dtypes_and_smaller_requests_share_a_block(cache):
    a = cache.empty_like(torch.empty(8 << 20), reuse=True)  # a 32 MiB block
    ptr = a.data_ptr()
    del a
    b = cache.empty_like(torch.empty(5 << 20, 2, dtype=torch.bfloat16), reuse=True)  # 20 MiB: 20 <= 32 <= 40
    assert b.data_ptr() == ptr and b.dtype == torch.bfloat16 and b.shape == (5 << 20, 2)
    del b
    c = cache.empty_like(torch.empty(3 << 20), reuse=True)  # 12 MiB: the 32 MiB block is over twice that
    assert c.data_ptr() != ptr


def test_at_most_max_blocks_are_kept_and_release_frees_idle_ones(cache):
    live = [cache.empty_like(MIB16, reuse=True) for _ in range(cache.MAX_BLOCKS)]
    extra = cache.empty_like(MIB16, reuse=True)  # all blocks in use: a plain tensor, not kept
    assert extra.data_ptr() not in {t.data_ptr() for t in live}
    assert cache.cached_bytes() == cache.MAX_BLOCKS * MIB16.nbytes
    del extra, live
    for k in range(2, 6):  # growing sizes: idle blocks that do not fit are freed, never more than MAX_BLOCKS
        t = cache.empty_like(torch.empty(k << 22), reuse=True)
        del t
        assert len(cache._blocks) <= cache.MAX_BLOCKS
    keep = cache.empty_like(torch.empty(5 << 22), reuse=True)
    freed = release_cpu_gradient_cache()  # the public name
    assert freed > 0 and cache.cached_bytes() == keep.nbytes  # the live block stays
    del keep
    assert cache.release_cached() == 5 << 24 and cache.cached_bytes() == 0


def test_environment_switch_and_small_or_plain_requests_are_not_cached(cache, monkeypatch):
    monkeypatch.setenv("MEGATRON_ALIGN_CPU_GRAD_CACHE", "0")
    cache.empty_like(MIB16, reuse=True)
    monkeypatch.delenv("MEGATRON_ALIGN_CPU_GRAD_CACHE")
    cache.empty_like(MIB16)  # reuse not asked for
    cache.empty_like(torch.empty(1024), reuse=True)  # below MIN_BYTES
    assert cache.cached_bytes() == 0


def test_stale_block_contents_never_reach_the_logprob_gradient(cache):
    """A reused block holds the previous gradient; poison it with NaN and +-inf, then check every element of a
    new gradient (ignored rows included, where the gradient is 0) against the fp64 reference. Two backward
    calls into one leaf also accumulate correctly while the first gradient holds a block as ``.grad``."""
    g = torch.Generator().manual_seed(3)
    n, v = 300, 8000  # 9.6 MB of fp32 gradient: reused
    x = torch.randn(n, v, generator=g) * 3
    t = torch.randint(0, v, (n,), generator=g)
    t[torch.rand(n, generator=g) < 0.3] = -100
    w = torch.randn(n, generator=g)
    poison = cache.empty_like(x, reuse=True)
    poison.view(-1)[0::3] = float("nan")
    poison.view(-1)[1::3] = float("inf")
    poison.view(-1)[2::3] = -float("inf")
    ptr = poison.data_ptr()
    del poison

    leaf = x.clone().requires_grad_()
    (token_logprobs(leaf, t) * w).sum().backward()
    assert leaf.grad.data_ptr() == ptr  # the poisoned block was reused as the gradient
    xr = x.double().requires_grad_()
    rlp, _ = reference.token_logprobs(xr, t, 1.0)
    (ref,) = torch.autograd.grad((rlp * w).sum(), xr)
    torch.testing.assert_close(leaf.grad.double(), ref, atol=6e-5, rtol=1e-5)
    assert torch.all(leaf.grad[t == -100] == 0)

    (token_logprobs(leaf, t) * w).sum().backward()  # second gradient: another block, added into .grad
    torch.testing.assert_close(leaf.grad.double(), 2 * ref, atol=1.2e-4, rtol=1e-5)
