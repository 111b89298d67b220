"""Token log-probs from vocab-parallel logits: forward and gradients vs the plain torch reference.

Both faces are tested: the row-chunked torch path (what CPU runs use) and the Triton kernels themselves, run
on CPU through Triton's interpreter (conftest sets TRITON_INTERPRET=1 before triton is imported). Shapes cover
a realistic size (torch path) and awkward ones: odd, prime, non-power-of-two, fewer columns than a block, a
chunk size that does not divide the rows.
"""

from __future__ import annotations

import pytest
import torch

from megatron_align.kernels import reference
from megatron_align.kernels.vocab_parallel_logprobs import vocab_parallel_logprobs
from megatron_align.logprobs import sequence_logprobs, token_logprobs

# Tolerance table against an fp64 reference: (logprob atol, entropy atol, gradient atol). Log-probs are
# accumulated in fp32 whatever the input dtype; the entropy gradient -p (z - E[z]) loses a few fp32 digits
# at V = 32k (both we and an fp32 log_softmax reference sit ~3e-5 from fp64 there). A bf16/fp16 gradient is
# rounded to its dtype; ours may land one ulp from the rounded reference (1.6e-2 in bf16, 2e-3 in fp16, for
# gradient values up to ~4).
TOL = {torch.float32: (2e-5, 1e-4, 6e-5), torch.bfloat16: (2e-5, 1e-4, 1.6e-2),
       torch.float16: (2e-5, 1e-4, 2e-3)}

# (N, V, block): block is Triton's BLOCK_V, or the torch path's bytes per chunk temporary
TRITON_SHAPES = [(47, 1023, 256), (13, 7, 16), (1, 2, 16), (64, 2048, 512), (29, 997, 128)]
TORCH_SHAPES = [(47, 1023, 4096 * 3), (13, 7, 16), (1, 2, 16), (29, 997, 64 * 997), (512, 32000, 4 << 20)]


def _case(n, v, dtype, seed, ignore_frac=0.25, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, v, generator=g) * scale).to(dtype)
    t = torch.randint(0, v, (n,), generator=g)
    t[torch.rand(n, generator=g) < ignore_frac] = -100
    return x, t, torch.randn(n, generator=g), torch.randn(n, generator=g)


def _check(n, v, block, dtype, backend, temperature, entropy, seed=0):
    x, t, g_lp, g_ent = _case(n, v, dtype, seed)
    x_ours = x.clone().requires_grad_()
    lp, ent = vocab_parallel_logprobs(x_ours, t, temperature=temperature, return_entropy=entropy,
                                      backend=backend, block=block)
    loss = (lp * g_lp).sum() + ((ent * g_ent).sum() if entropy else 0.0)
    (gx,) = torch.autograd.grad(loss, x_ours)

    x_ref = x.double().requires_grad_()  # fp64 reference: fp32 rounding of either side stays visible
    rlp, rent = reference.token_logprobs(x_ref, t, temperature)
    rloss = (rlp * g_lp).sum() + ((rent * g_ent).sum() if entropy else 0.0)
    (rgx,) = torch.autograd.grad(rloss, x_ref)

    tol_lp, tol_ent, tol_g = TOL[dtype]
    assert lp.dtype == torch.float32 and gx.dtype == dtype
    torch.testing.assert_close(lp.double(), rlp, atol=tol_lp, rtol=1e-5)
    if entropy:
        torch.testing.assert_close(ent.double(), rent, atol=tol_ent, rtol=1e-5)
    else:
        assert ent is None
    # the reference gradient rounded to the input dtype, as autograd would hand it back
    torch.testing.assert_close(gx.double(), rgx.to(dtype).double(), atol=tol_g, rtol=1e-5)
    ignored = t == -100
    assert torch.all(lp[ignored] == 0) and torch.all(gx[ignored] == 0)
    assert torch.equal(x_ours.detach(), x), "the input logits were modified"


@pytest.mark.parametrize("n,v,block", TRITON_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_kernels_match_reference(n, v, block, dtype):
    _check(n, v, block, dtype, "triton", temperature=0.7, entropy=True)


@pytest.mark.parametrize("n,v,block", TORCH_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_path_matches_reference(n, v, block, dtype):
    _check(n, v, block, dtype, "torch", temperature=0.7, entropy=True)


@pytest.mark.parametrize("backend,block", [("triton", 256), ("torch", 4096 * 8)])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("entropy", [False, True])
def test_temperature_and_entropy_switch(backend, block, temperature, entropy):
    _check(31, 517, block, torch.float32, backend, temperature, entropy, seed=3)


@pytest.mark.parametrize("backend,block", [("triton", 128), ("torch", 4096)])
def test_fp16_inputs(backend, block):
    _check(23, 331, block, torch.float16, backend, temperature=1.3, entropy=True, seed=5)


@pytest.mark.parametrize("entropy", [True, False])
@pytest.mark.parametrize("backend,block", [("triton", 256), ("torch", 4096)])
def test_extreme_logits_stay_finite(backend, block, entropy):
    x = torch.full((4, 300), -1e4)
    x[0, 5] = 1e4  # one dominant logit
    x[1] = 0.0  # uniform
    x[2, :] = torch.linspace(-3e4, 3e4, 300)
    x[3, 7] = float("-inf")  # a masked-out vocabulary entry
    t = torch.tensor([5, 9, 299, 8])
    xr = x.clone().requires_grad_()
    lp, ent = vocab_parallel_logprobs(xr, t, return_entropy=entropy, backend=backend, block=block)
    (lp.sum() + (ent.sum() if entropy else 0.0)).backward()
    assert torch.isfinite(lp).all() and torch.isfinite(xr.grad).all()
    assert lp[0].item() == pytest.approx(0.0, abs=1e-6)
    assert lp[1].item() == pytest.approx(-torch.log(torch.tensor(300.0)).item(), abs=1e-5)
    assert lp[2].item() == pytest.approx(0.0, abs=1e-6)  # the largest of a spread 200 apart: p = 1
    # 299 equal logits and one -inf
    assert lp[3].item() == pytest.approx(-torch.log(torch.tensor(299.0)).item(), abs=2e-3)
    if entropy:
        assert torch.isfinite(ent).all()
        assert ent[1].item() == pytest.approx(torch.log(torch.tensor(300.0)).item(), abs=1e-5)


def test_all_rows_ignored_gives_zero_and_zero_grad():
    x = torch.randn(5, 64, requires_grad=True)
    t = torch.full((5,), -100)
    lp = token_logprobs(x, t, backend="torch")
    lp.sum().backward()
    assert torch.all(lp == 0) and torch.all(x.grad == 0)


def test_facade_layouts_and_loss_mask_match_reference():
    """[B, S, V] and megatron's [S, B, V] give the same [B, S] result; loss_mask == 0 acts as ignore_index."""
    g = torch.Generator().manual_seed(7)
    b, s, v = 3, 11, 97
    x = torch.randn(b, s, v, generator=g)
    t = torch.randint(0, v, (b, s), generator=g)
    mask = (torch.rand(b, s, generator=g) > 0.3).long()
    ref, _ = reference.token_logprobs(x, torch.where(mask.bool(), t, -100))
    ours = token_logprobs(x, t, loss_mask=mask, backend="torch")
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    sbv = x.transpose(0, 1).contiguous()  # [S, B, V], megatron's layout
    ours_sb = token_logprobs(sbv, t, loss_mask=mask, sequence_first=True, backend="triton", block=64)
    torch.testing.assert_close(ours_sb, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sequence_logprobs(ours, mask), (ref * mask).sum(-1))
    with pytest.raises(ValueError, match="disagree"):
        token_logprobs(x, t.t(), backend="torch")


def test_noncontiguous_rows_shifted_view():
    """Logits sliced as logits[:, :-1] (the next-token shift) are a strided view; results still exact."""
    g = torch.Generator().manual_seed(11)
    full = torch.randn(2, 9, 50, generator=g, requires_grad=True)
    t = torch.randint(0, 50, (2, 8), generator=g)
    lp = token_logprobs(full[:, :-1], t, backend="triton", block=16)
    lp.sum().backward()
    ref_x = full.detach().clone().requires_grad_()
    rlp, _ = reference.token_logprobs(ref_x[:, :-1], t)
    rlp.sum().backward()
    torch.testing.assert_close(lp, rlp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full.grad, ref_x.grad, atol=1e-6, rtol=1e-5)


def test_bad_arguments_are_clear():
    x = torch.randn(4, 10)
    with pytest.raises(ValueError, match="temperature"):
        vocab_parallel_logprobs(x, torch.zeros(4, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match="target"):
        vocab_parallel_logprobs(x, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="backend"):
        vocab_parallel_logprobs(x, torch.zeros(4, dtype=torch.long), backend="cuda")


def test_fused_facade_sequence_first_and_mask_match_reference():
    """fused_lm_head_logprobs on megatron's [S, B, H] hidden states == reference on [B, S] targets."""
    from megatron_align.logprobs import fused_lm_head_logprobs

    g = torch.Generator().manual_seed(13)
    b, s, h, v = 2, 9, 24, 211
    hidden = torch.randn(s, b, h, generator=g)
    weight = torch.randn(v, h, generator=g) * 0.3
    t = torch.randint(0, v, (b, s), generator=g)
    mask = (torch.rand(b, s, generator=g) > 0.25).long()
    ours, ent = fused_lm_head_logprobs(hidden, weight, t, loss_mask=mask, sequence_first=True,
                                       return_entropy=True, backend="torch", chunk_n=5, chunk_v=64)
    ref, rent = reference.fused_token_logprobs(hidden.transpose(0, 1).reshape(-1, h), weight,
                                               torch.where(mask.bool(), t, -100).reshape(-1))
    torch.testing.assert_close(ours, ref.view(b, s), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, rent.view(b, s), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("backend,block", [("triton", 128), ("torch", 4096)])
@pytest.mark.parametrize("dtype,entropy,temperature", [
    (torch.float32, False, 1.0), (torch.float32, False, 1.7), (torch.float32, True, 0.8),
    (torch.bfloat16, False, 1.3)])
def test_inplace_backward_writes_the_gradient_over_the_logits(backend, block, dtype, entropy, temperature):
    x, t, g_lp, g_ent = _case(37, 301, dtype, seed=17)
    leaf = x.clone().requires_grad_()
    logits = leaf * 1.0  # a non-leaf, as a model's output layer produces
    lp, ent = vocab_parallel_logprobs(logits, t, temperature=temperature, return_entropy=entropy,
                                      backend=backend, block=block, inplace_backward=True)
    assert torch.equal(logits.detach(), x), "forward must not modify the logits"
    ((lp * g_lp).sum() + ((ent * g_ent).sum() if entropy else 0.0)).backward()
    # d(leaf * 1)/d leaf = 1: the logits' storage now holds exactly the gradient handed to the leaf
    assert torch.equal(logits.detach(), leaf.grad), "the gradient should live in the logits' storage"
    x_ref = x.double().requires_grad_()
    rlp, rent = reference.token_logprobs(x_ref, t, temperature)
    ((rlp * g_lp).sum() + ((rent * g_ent).sum() if entropy else 0.0)).backward()
    torch.testing.assert_close(leaf.grad.double(), x_ref.grad.to(dtype).double(), atol=TOL[dtype][2],
    rtol=1e-5)


def test_inplace_backward_is_refused_loudly_when_logits_are_needed_later():
    x = torch.randn(6, 40, requires_grad=True)
    logits = x * 2.0
    t = torch.randint(0, 40, (6,))
    lp = token_logprobs(logits, t, backend="torch", inplace_backward=True)
    other = (logits ** 2).sum()  # saves the logits for its own backward
    lp.sum().backward(retain_graph=True)  # overwrites the logits with their gradient
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        other.backward()


@pytest.mark.parametrize("entropy", [False, True])
def test_all_minus_inf_row_and_nan_row_on_the_cpu_path(entropy):
    """A row of only -inf logits has lse -inf (log p = nan, as the reference gives); a NaN logit stays visible
    as NaN instead of being turned into a finite or infinite value."""
    x = torch.randn(4, 64)
    x[1] = float("-inf")
    x[2, 5] = float("nan")
    t = torch.tensor([3, 4, 6, 7])
    lp, _ = vocab_parallel_logprobs(x, t, backend="torch", return_entropy=entropy)
    rlp, _ = reference.token_logprobs(x.double(), t, 1.0)
    assert torch.isnan(lp[2]) and torch.isnan(rlp[2])
    assert torch.isnan(lp[1]) == torch.isnan(rlp[1]) and not torch.isfinite(lp[1])
    torch.testing.assert_close(lp[[0, 3]], rlp[[0, 3]].float(), atol=1e-5, rtol=1e-5)
