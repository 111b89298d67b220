"""Fused LM-head log-probs (kernels/fused_linear_logprobs.py) vs the plain reference with autograd.

Checks log-probs, entropy and the gradients of hidden, weight and bias for both faces: the chunked torch path
(what CPU runs use) and the Triton kernels, run on CPU by Triton's interpreter (conftest sets
TRITON_INTERPRET=1 before triton is imported; interpreter shapes stay small: N <= 64, V <= ~1k, H <= 64,
blocks >= 16 for tl.dot). Cases mix ignored rows, temperature != 1, bias, entropy on/off with nonzero
gradients into both outputs, chunk sizes that do not divide N or V, and several Triton vocabulary splits.
A dispatch-mode recorder proves the torch path never allocates an [N, V] tensor in forward or backward.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from megatron_align.kernels import reference
from megatron_align.kernels.fused_linear_logprobs import fused_linear_logprobs

# Tolerances, as max |ours - ref| / max(1, max |ref|), per (backend, dtype): (forward, gradients).
# Both sides compute logits in fp32 from the same inputs, so forward differences are fp32 summation order.
# bf16 gradients are rounded to bf16 on both sides (torch path: one ulp, 2^-8 of the largest value); the
# Triton path also hands cuBLAS bf16 grad_z tiles (relative error 2^-9 per element), measured ~8e-3.
TOL = {("torch", torch.float32): (2e-5, 2e-5), ("torch", torch.bfloat16): (2e-5, 8e-3),
       ("triton", torch.float32): (2e-5, 2e-5), ("triton", torch.bfloat16): (2e-5, 3e-2)}

# name -> (N, V, H, kwargs for the op)
TORCH_SHAPES = {
    "realistic": (512, 8192, 128, dict(chunk_n=160, chunk_v=3000)),
    "odd": (47, 1023, 40, dict(chunk_n=16, chunk_v=100)),
    "defaults": (300, 5000, 64, {}),
}
TRITON_SHAPES = {
    "realistic": (64, 1024, 64, dict(chunk_n=32, chunk_v=512, blocks=(32, 64, 32), num_splits=2)),
    "odd": (47, 1023, 40, dict(chunk_n=32, chunk_v=300, blocks=(16, 64, 16), num_splits=3)),
}


def _inputs(n, v, h, dtype, seed, bias=True, ignore_frac=0.25, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype)
    weight = (torch.randn(v, h, generator=g) * scale / h ** 0.5 * 3).to(dtype)
    b = torch.randn(v, generator=g).to(dtype) if bias else None
    target = torch.randint(0, v, (n,), generator=g)
    target[0], target[-1] = 0, v - 1  # both vocabulary edges
    target[torch.rand(n, generator=g) < ignore_frac] = -100
    return hidden, weight, b, target, torch.randn(n, generator=g), torch.randn(n, generator=g)


def _run(fn, hidden, weight, bias, target, a, c, entropy):
    leaves = [x.clone().requires_grad_() for x in (hidden, weight) + ((bias,) if bias is not None else ())]
    lp, ent = fn(*leaves[:2], target, leaves[2] if bias is not None else None)
    loss = (lp * a).sum() + ((ent * c).sum() if entropy else 0.0)
    return lp, ent, torch.autograd.grad(loss, leaves)


def _err(x, ref):
    return ((x.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1.0)).item()


def _check(backend, n, v, h, kw, dtype, temperature=0.7, entropy=True, bias=True, seed=0, tol_ent=None,
           **inp_kw):
    inputs = _inputs(n, v, h, dtype, seed, bias=bias, **inp_kw)
    target = inputs[3]

    def ours(hd, w, t, b):
        return fused_linear_logprobs(hd, w, t, bias=b, temperature=temperature, return_entropy=entropy,
                                     backend=backend, **kw)

    def ref(hd, w, t, b):
        return reference.fused_token_logprobs(hd, w, t, temperature=temperature, bias=b)

    lp, ent, grads = _run(ours, *inputs, entropy)
    rlp, rent, rgrads = _run(ref, *inputs, entropy)
    tol_f, tol_g = TOL[(backend, dtype)]
    assert lp.dtype == torch.float32 and lp.shape == (n,)
    assert _err(lp, rlp) < tol_f, _err(lp, rlp)
    assert (lp[target == -100] == 0).all()
    if entropy:
        assert ent.dtype == torch.float32 and _err(ent, rent) < (tol_ent or tol_f), _err(ent, rent)
    else:
        assert ent is None
    for name, g, rg in zip(("hidden", "weight", "bias"), grads, rgrads):
        assert g.dtype == dtype and g.shape == rg.shape, name
        assert rg.abs().max() > 0, name  # the case does exercise this gradient
        assert _err(g, rg) < tol_g, (name, _err(g, rg))
    # ignored rows get no hidden gradient
    assert (grads[0][target == -100] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", list(TORCH_SHAPES))
def test_torch_path_matches_reference(shape, dtype):
    n, v, h, kw = TORCH_SHAPES[shape]
    _check("torch", n, v, h, kw, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", list(TRITON_SHAPES))
def test_triton_kernels_match_reference(shape, dtype):
    n, v, h, kw = TRITON_SHAPES[shape]
    _check("triton", n, v, h, kw, dtype)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_without_entropy_or_bias_at_unit_temperature(backend):
    n, v, h, kw = (TORCH_SHAPES if backend == "torch" else TRITON_SHAPES)["odd"]
    _check(backend, n, v, h, kw, torch.float32, temperature=1.0, entropy=False, bias=False, seed=1)


def test_large_logits_stay_finite():
    # logits of magnitude ~100: the online max keeps exp() in range. H = lse - E[z] cancels two numbers of
    # that size in fp32 (error ~ a few eps * |z|, up to ~4e-5 here), hence the looser entropy tolerance.
    n, v, h, kw = TORCH_SHAPES["odd"]
    _check("torch", n, v, h, kw, torch.float32, temperature=1.3, seed=2, scale=10.0, tol_ent=1e-4)


def test_frozen_weight_and_all_ignored_rows():
    hidden, weight, _, target, a, _ = _inputs(33, 500, 24, torch.float32, seed=3, bias=False)
    hd = hidden.clone().requires_grad_()
    lp, _ = fused_linear_logprobs(hd, weight, target, backend="torch", chunk_n=8, chunk_v=64)
    (gh,) = torch.autograd.grad((lp * a).sum(), hd)
    hr = hidden.clone().requires_grad_()
    rlp, _ = reference.fused_token_logprobs(hr, weight, target)
    (rgh,) = torch.autograd.grad((rlp * a).sum(), hr)
    assert _err(gh, rgh) < 2e-5
    # every row ignored: zeros forward and a zero gradient
    hd = hidden.clone().requires_grad_()
    lp, ent = fused_linear_logprobs(hd, weight, torch.full_like(target, -7), ignore_index=-7,
                                    return_entropy=True, backend="torch")
    (gh,) = torch.autograd.grad(lp.sum() + ent.sum(), hd)
    assert (lp == 0).all() and (ent == 0).all() and (gh == 0).all()


def test_auto_backend_on_cpu_is_the_torch_path():
    hidden, weight, b, target, _, _ = _inputs(20, 300, 16, torch.float32, seed=4)
    auto = fused_linear_logprobs(hidden, weight, target, bias=b, return_entropy=True, chunk_n=7, chunk_v=50)
    torch_ = fused_linear_logprobs(hidden, weight, target, bias=b, return_entropy=True, backend="torch",
                                   chunk_n=7, chunk_v=50)
    assert torch.equal(auto[0], torch_[0]) and torch.equal(auto[1], torch_[1])


def test_bad_arguments_are_refused():
    hidden, weight, _, target, _, _ = _inputs(4, 40, 16, torch.float32, seed=5, bias=False)
    with pytest.raises(ValueError):
        fused_linear_logprobs(hidden, weight.bfloat16(), target)
    with pytest.raises(ValueError):
        fused_linear_logprobs(hidden, weight, target[:3])
    with pytest.raises(ValueError):
        fused_linear_logprobs(hidden, weight, target, backend="triton", blocks=(8, 16, 16))
    with pytest.raises(ValueError):
        fused_linear_logprobs(hidden, weight, target, temperature=0.0)


class _LargestAllocation(TorchDispatchMode):
    """Records the largest storage (in elements) of any tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes() // t.element_size())
        return out


def _largest_allocation(fn, n, v, h):
    hidden, weight, b, target, a, c = _inputs(n, v, h, torch.float32, seed=6)
    leaves = [x.requires_grad_() for x in (hidden, weight, b)]
    with _LargestAllocation() as rec:
        lp, ent = fn(*leaves, target)
        torch.autograd.grad((lp * a).sum() + (ent * c).sum(), leaves)
    return rec.largest


def test_torch_path_never_allocates_n_by_v():
    n, v, h = 256, 2048, 32  # weight / its gradient ([V, H]) are N*V/8: below the bound
    bound = n * v // 4

    def ours(hd, w, b, t):
        return fused_linear_logprobs(hd, w, t, bias=b, temperature=0.9, return_entropy=True, backend="torch",
                                     chunk_n=64, chunk_v=256)

    def ref(hd, w, b, t):
        return reference.fused_token_logprobs(hd, w, t, temperature=0.9, bias=b)

    largest = _largest_allocation(ours, n, v, h)
    assert largest == v * h  # the recorder saw backward: grad_W [V, H] is the largest tensor
    assert largest < bound
    assert _largest_allocation(ref, n, v, h) >= n * v  # and it does catch a materialized [N, V]


@pytest.mark.parametrize("ddp_flag", [False, True], ids=["plain", "megatron_ddp_flag"])
@pytest.mark.parametrize("backend,dtype", [("torch", torch.float32), ("torch", torch.bfloat16),
                                           ("triton", torch.float32)])
def test_weight_gradient_accumulates_into_main_grad(backend, dtype, ddp_flag):
    """accumulate_into_main_grad: grad_W is added onto weight.main_grad (fp32, already holding an earlier
    micro-batch's gradient) and no [V, H] gradient is returned; megatron DDP's flag is set when present."""
    n, v, h = 40, 300, 32
    kw = dict(chunk_n=16, chunk_v=128) if backend == "torch" else dict(chunk_n=16, chunk_v=128,
                                                                       blocks=(16, 64, 16))
    hidden, weight, _, target, a, _ = _inputs(n, v, h, dtype, seed=7, bias=False)
    ref_w = weight.clone().requires_grad_()
    (reference.fused_token_logprobs(hidden, ref_w, target, temperature=0.9)[0] * a).sum().backward()
    earlier = torch.randn(v, h, generator=torch.Generator().manual_seed(1))  # an earlier micro-batch's grad_W
    w = weight.clone().requires_grad_()
    w.main_grad = earlier.clone()
    if ddp_flag:
        w.grad_added_to_main_grad = False
    hd = hidden.clone().requires_grad_()
    lp, _ = fused_linear_logprobs(hd, w, target, temperature=0.9, backend=backend,
                                  accumulate_into_main_grad=True, **kw)
    (lp * a).sum().backward()
    tol = TOL[(backend, dtype)][1]
    assert _err(w.main_grad - earlier, ref_w.grad) < tol, _err(w.main_grad - earlier, ref_w.grad)
    assert w.main_grad.dtype == torch.float32
    if ddp_flag:
        assert w.grad_added_to_main_grad is True and w.grad.shape == w.shape  # placeholder for DDP's hook
    else:
        assert w.grad is None
    assert hd.grad is not None and hd.grad.abs().max() > 0


def test_accumulate_into_main_grad_needs_a_matching_buffer():
    hidden, weight, _, target, _, _ = _inputs(8, 50, 16, torch.float32, seed=0, bias=False)
    with pytest.raises(ValueError, match="main_grad"):
        fused_linear_logprobs(hidden, weight, target, accumulate_into_main_grad=True)
    weight.main_grad = torch.zeros(49, 16)
    with pytest.raises(ValueError, match="does not match"):
        fused_linear_logprobs(hidden, weight, target, accumulate_into_main_grad=True)
