"""Group (segmented) log-softmax and group KL vs a per-group loop over torch.log_softmax in fp64.

Both faces are tested: the torch segment-reduction path and the Triton kernels, run on CPU through Triton's
interpreter (conftest sets TRITON_INTERPRET=1 before triton is imported). Cases: ragged groups (1, 2, 5),
many random sizes including empty groups and groups several blocks long, equal values, extreme values
(+-1e4, -1e30, -inf entries, an all -inf group), fp32 and bf16 inputs; forward and gradient. The EXO test
checks group_log_softmax + group_kl against a reverse KL computed by hand with math.exp.
"""

from __future__ import annotations

import math

import pytest
import torch

from megatron_align.kernels.group_softmax import (
    group_kl,
    group_log_softmax,
    group_sizes_to_offsets,
    segment_ids,
)

BACKENDS = ["torch", "triton"]
NEG_INF = -math.inf


def ref_log_softmax(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Independent reference: a Python loop over groups, torch.log_softmax on each, in fp64."""
    parts, start = [], 0
    for n in sizes:
        parts.append(torch.log_softmax(x[start:start + n].double(), dim=0))
        start += n
    return torch.cat(parts) if parts else x.new_zeros(0, dtype=torch.float64)


def ref_kl(logp: torch.Tensor, logq: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    out, start = [], 0
    for n in sizes:
        lp, lq = logp[start:start + n].double(), logq[start:start + n].double()
        out.append(sum(float(math.exp(a)) * (float(a) - float(b)) for a, b in zip(lp, lq) if a > NEG_INF))
        start += n
    return torch.tensor(out, dtype=torch.float64)


def _forward_and_grad(x, sizes, backend, block, seed=0):
    """Ours and the reference: outputs and gradients of sum(out * g) for a random upstream gradient g."""
    offsets = group_sizes_to_offsets(sizes)
    upstream = torch.randn(x.numel(), generator=torch.Generator().manual_seed(seed))
    xo = x.clone().requires_grad_()
    out = group_log_softmax(xo, offsets, backend=backend, block=block)
    (gx,) = torch.autograd.grad((torch.where(torch.isinf(out), 0.0, out) * upstream).sum(), xo)
    xr = x.double().requires_grad_()
    ref = ref_log_softmax(xr, sizes)
    (rgx,) = torch.autograd.grad((torch.where(torch.isinf(ref), 0.0, ref) * upstream.double()).sum(), xr)
    assert out.dtype == torch.float32 and out.shape == x.shape and gx.dtype == x.dtype
    assert torch.equal(xo.detach(), x), "the input was modified"
    return out, gx, ref, rgx


def _assert_grad_close(gx, rgx, dtype):
    """The fp64 reference gradient rounded to the input dtype, as autograd hands it back: fp32 to 1e-5; bf16
    within one bf16 ulp (2^-8 relative; in these cases the rounded values are in fact identical)."""
    atol, rtol = (1e-5, 1e-5) if dtype == torch.float32 else (1e-6, 2.0**-8)
    torch.testing.assert_close(gx.double(), rgx.to(dtype).double(), atol=atol, rtol=rtol)


def _random_sizes(seed, g=30, hi=70):
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(0, hi, (g,), generator=gen).tolist()
    return sizes[:3] + [0, 1, 2, 5] + sizes[3:]  # an empty group and the small sizes among the random ones


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sizes,block",
                         [([1, 2, 5], 16), ("random", 16), ("random", 128), ([300, 1, 33], 32)])
def test_matches_per_group_reference(backend, dtype, sizes, block):
    if sizes == "random":
        sizes = _random_sizes(seed=block)
    x = (torch.randn(sum(sizes), generator=torch.Generator().manual_seed(1)) * 4).to(dtype)
    out, gx, ref, rgx = _forward_and_grad(x, sizes, backend, block)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-5)
    _assert_grad_close(gx, rgx, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_size_one_groups_and_equal_values(backend):
    sizes = [1, 4, 1, 3, 7]
    x = torch.cat([torch.full((n,), v) for n, v in zip(sizes, [5.0, -2.0, -1e30, 1e4, 0.0])])
    out, gx, _, _ = _forward_and_grad(x, sizes, backend, block=2)
    expect = torch.cat([torch.full((n,), -math.log(n)) for n in sizes])  # uniform: log(1/n); size 1 -> 0
    torch.testing.assert_close(out, expect, atol=1e-6, rtol=0)
    assert out[0] == 0 and out[5] == 0 and gx[0] == 0 and gx[5] == 0  # size 1: log-softmax 0, no gradient
    offsets = group_sizes_to_offsets(sizes)
    assert torch.all(group_kl(out, out, offsets) == 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_values_give_no_nan_or_inf(backend, dtype):
    sizes = [3, 4, 2, 5]
    x = torch.tensor([1e4, -1e4, 0.0,
                      -1e30, -1e30, -1e30, 3.0,
                      -1e30, -1e30,
                      1e4, 1e4 - 1, 9990.0, -1e4, -1e30], dtype=torch.float32).to(dtype)
    out, gx, ref, rgx = _forward_and_grad(x, sizes, backend, block=2)
    assert torch.isfinite(out).all() and torch.isfinite(gx.float()).all()
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-6)
    _assert_grad_close(gx, rgx, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_neg_inf_entries_and_all_neg_inf_group(backend):
    sizes = [4, 3, 1, 2]
    x = torch.tensor([NEG_INF, 1.0, NEG_INF, 2.0,  # -inf entries beside finite ones: probability exactly 0
                      NEG_INF, NEG_INF, NEG_INF,  # all -inf: defined as uniform
                      NEG_INF,  # size 1, -inf: uniform over 1 -> 0
                      -5.0, NEG_INF])
    out, gx, ref, rgx = _forward_and_grad(x, sizes, backend, block=2, seed=3)
    assert not torch.isnan(out).any() and torch.isfinite(gx).all()
    partial = torch.tensor([0, 1, 2, 3, 8, 9])  # groups with a finite entry: exactly torch's log_softmax
    torch.testing.assert_close(out[partial].double(), ref[partial], atol=1e-6, rtol=0)
    torch.testing.assert_close(gx[partial].double(), rgx[partial], atol=1e-6, rtol=0)
    assert torch.all(out[[0, 2, 9]] == NEG_INF)
    torch.testing.assert_close(out[4:7], torch.full((3,), -math.log(3)))
    assert out[7] == 0 and gx[7] == 0
    upstream = torch.randn(x.numel(), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(gx[4:7], upstream[4:7] - upstream[4:7].sum() / 3)  # g - softmax * sum(g)


def test_backends_agree_and_auto_is_torch_on_cpu():
    sizes = _random_sizes(seed=7, g=12, hi=40)
    x = torch.randn(sum(sizes), generator=torch.Generator().manual_seed(2)) * 10
    off = group_sizes_to_offsets(sizes)
    a, b = group_log_softmax(x, off, backend="triton", block=8), group_log_softmax(x, off, backend="torch")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-6)
    assert torch.equal(group_log_softmax(x, off), b)


def test_group_kl_matches_reference_and_gradient():
    sizes = [1, 2, 5, 0, 9]
    gen = torch.Generator().manual_seed(4)
    off = group_sizes_to_offsets(sizes)
    a, b = torch.randn(sum(sizes), generator=gen) * 2, torch.randn(sum(sizes), generator=gen) * 2
    a[3] = NEG_INF  # p = 0 there: contributes 0, no NaN in the gradient
    logp, logq = ref_log_softmax(a, sizes), ref_log_softmax(b, sizes)  # fp64
    lp, lq = logp.clone().requires_grad_(), logq.clone().requires_grad_()
    kl = group_kl(lp, lq, off)
    torch.testing.assert_close(kl.double(), ref_kl(logp, logq, sizes), atol=1e-6, rtol=1e-6)
    assert kl[0] == 0 and kl[3] == 0 and torch.all(kl >= 0)
    kl.sum().backward()
    assert torch.isfinite(lp.grad).all() and torch.isfinite(lq.grad).all()
    # d KL / d logq_i = -p_i ;  d KL / d logp_i = p_i (logp_i - logq_i + 1) (p = 0 -> 0)
    p = logp.exp()
    torch.testing.assert_close(lq.grad.double(), -p, atol=1e-6, rtol=1e-6)
    expect = torch.where(p > 0, p * (logp - logq + 1), 0.0)
    torch.testing.assert_close(lp.grad.double(), expect, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_exo_reverse_kl_k4(backend):
    """EXO (Ji et al. 2024, arXiv 2402.00856): p_theta = softmax_K(beta (log pi - log pi_ref)),
    p_r = softmax_K(r / beta_r); loss = KL(p_theta || p_r); DPO-rw's forward KL(p_r || p_theta). Two prompts,
    K = 4 each."""
    beta, beta_r = 0.1, 0.5
    logratio = [[-2.0, 3.5, 0.25, -7.0], [10.0, 10.5, -4.0, 0.0]]  # log pi_theta - log pi_ref per sample
    reward = [[1.0, 0.2, -0.3, 2.5], [0.0, 0.0, 1.0, -1.0]]

    def softmax(v):
        e = [math.exp(t - max(v)) for t in v]
        return [t / sum(e) for t in e]

    def kl(p, q):
        return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q))

    p_theta = [softmax([beta * t for t in row]) for row in logratio]
    p_r = [softmax([t / beta_r for t in row]) for row in reward]
    reverse = [kl(pt, pr) for pt, pr in zip(p_theta, p_r)]
    forward = [kl(pr, pt) for pt, pr in zip(p_theta, p_r)]

    off = group_sizes_to_offsets([4, 4])
    lr = torch.tensor(logratio).flatten().requires_grad_()
    log_pt = group_log_softmax(beta * lr, off, backend=backend, block=2)
    log_pr = group_log_softmax(torch.tensor(reward).flatten() / beta_r, off, backend=backend, block=2)
    torch.testing.assert_close(log_pt.exp(), torch.tensor(p_theta).flatten())
    loss = group_kl(log_pt, log_pr, off)
    torch.testing.assert_close(loss, torch.tensor(reverse), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(group_kl(log_pr, log_pt, off), torch.tensor(forward), atol=1e-6, rtol=1e-5)
    # gradient of the reverse KL vs autograd through a plain per-group log_softmax
    loss.sum().backward()
    lr_ref = torch.tensor(logratio, dtype=torch.float64).requires_grad_()
    lpt = torch.log_softmax(beta * lr_ref, dim=1)
    lpr = torch.log_softmax(torch.tensor(reward, dtype=torch.float64) / beta_r, dim=1)
    (lpt.exp() * (lpt - lpr)).sum().backward()
    torch.testing.assert_close(lr.grad.double(), lr_ref.grad.flatten(), atol=1e-6, rtol=1e-5)


def test_offsets_helpers_and_validation():
    assert group_sizes_to_offsets([1, 2, 5]).tolist() == [0, 1, 3, 8]
    assert group_sizes_to_offsets([]).tolist() == [0]
    assert segment_ids(torch.tensor([0, 1, 1, 4]), 4).tolist() == [0, 2, 2, 2]
    x = torch.zeros(4)
    for bad in ([0, 3], [1, 4], [0, 3, 2, 4]):
        with pytest.raises(ValueError, match="offsets"):
            group_log_softmax(x, torch.tensor(bad))
    with pytest.raises(ValueError):
        group_sizes_to_offsets([2, -1])
    with pytest.raises(ValueError, match="power of two"):
        group_log_softmax(x, torch.tensor([0, 4]), block=24)
    with pytest.raises(ValueError, match="backend"):
        group_log_softmax(x, torch.tensor([0, 4]), backend="cuda")
    assert group_log_softmax(torch.zeros(0), torch.tensor([0])).numel() == 0
