"""SteerLM 2.0 importance weights (megatron_align.losses.steerlm2) vs numbers computed by hand with math.exp.

w' = softmax(log P(a|x,y) + log P(y|x) - log Q'), b' = softmax(log Q_theta - log Q') per prompt's group,
weights = w' - b' (sum 0 per group, detached), KL(w' || b') >= 0 per group.
"""

from __future__ import annotations

import math

import pytest
import torch

from megatron_align.kernels.group_softmax import group_sizes_to_offsets
from megatron_align.losses.steerlm2 import steerlm2_weights

# three prompts: 3 responses, 1 response, 2 responses
LOG_P_A = [-1.0, -2.5, -0.3, -4.0, -0.7, -1.9]  # log P(a|x,y_i)
LOG_P_Y = [-10.0, -12.0, -11.0, -30.0, -55.0, -54.0]  # log P(y_i|x)
LOG_Q_PRIME = [-9.0, -11.5, -10.0, -29.0, -50.0, -52.5]  # log Q'(y_i|a,x)
LOG_Q_THETA = [-9.5, -11.0, -10.5, -28.0, -51.0, -53.0]  # log Q_theta(y_i|a,x)
SIZES = [3, 1, 2]


def _hand_computed():
    """w', b', w' - b' and KL(w'||b') per group, one scalar at a time with math.exp / math.log."""
    w_all, b_all, kls, start = [], [], [], 0
    for n in SIZES:
        idx = range(start, start + n)
        u = [LOG_P_A[i] + LOG_P_Y[i] - LOG_Q_PRIME[i] for i in idx]
        v = [LOG_Q_THETA[i] - LOG_Q_PRIME[i] for i in idx]
        w = [math.exp(t) / sum(math.exp(s) for s in u) for t in u]
        b = [math.exp(t) / sum(math.exp(s) for s in v) for t in v]
        kls.append(sum(wi * math.log(wi / bi) for wi, bi in zip(w, b)))
        w_all += w
        b_all += b
        start += n
    return w_all, b_all, kls


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_weights_match_hand_computed_example(backend):
    w, b, kls = _hand_computed()
    # spot-check the hand computation itself on the first group: w' logits -2.0, -3.0, -1.3
    z = math.exp(-2.0) + math.exp(-3.0) + math.exp(-1.3)
    assert w[0] == pytest.approx(math.exp(-2.0) / z)
    q_theta = torch.tensor(LOG_Q_THETA, requires_grad=True)
    out = steerlm2_weights(torch.tensor(LOG_P_A), torch.tensor(LOG_P_Y), torch.tensor(LOG_Q_PRIME), q_theta,
                           group_sizes_to_offsets(SIZES), backend=backend)
    torch.testing.assert_close(out.w_prime, torch.tensor(w), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.b_prime, torch.tensor(b), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.weights, torch.tensor(w) - torch.tensor(b), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.kl, torch.tensor(kls), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.kl_mean, torch.tensor(sum(kls) / 3), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.log_w_prime.exp(), out.w_prime)
    assert out.weights[3] == 0 and out.kl[1] == 0  # a single response: w' = b' = 1
    assert kls[0] > 0.01 and kls[2] > 0.01  # the example is not trivially uniform
    # constants for the policy gradient: nothing here carries autograd history
    assert not any(t.requires_grad for t in (out.weights, out.w_prime, out.b_prime, out.kl))


def test_properties_on_random_groups():
    sizes = [1, 2, 5, 8, 3, 16, 4]
    gen = torch.Generator().manual_seed(0)
    m = sum(sizes)
    inputs = [torch.randn(m, generator=gen) * 5 - 20 for _ in range(4)]
    off = group_sizes_to_offsets(sizes)
    out = steerlm2_weights(*inputs, off)
    seg = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    per_group = torch.zeros(len(sizes)).index_add_(0, seg, out.weights)
    torch.testing.assert_close(per_group, torch.zeros(len(sizes)), atol=1e-6, rtol=0)  # sum (w' - b') = 0
    w_sum = torch.zeros(len(sizes)).index_add_(0, seg, out.w_prime)
    torch.testing.assert_close(w_sum, torch.ones(len(sizes)))
    assert torch.all(out.kl >= 0) and torch.all(out.kl[1:] > 0)
    assert torch.all(out.weights.abs() <= 1)


def test_equal_inputs_give_zero_weights_and_zero_kl():
    sizes = [4, 2, 3]
    off = group_sizes_to_offsets(sizes)
    q_prime = torch.tensor([-3.0, -8.0, -1.0, -6.0, -2.0, -2.5, -40.0, -41.0, -39.5])
    # all-equal logits in both softmaxes: w' and b' are uniform
    same = torch.full((9,), -7.0)
    out = steerlm2_weights(same, same - 3.0, same, same - 3.0, off)
    uniform = torch.cat([torch.full((n,), 1.0 / n) for n in sizes])
    torch.testing.assert_close(out.w_prime, uniform)
    torch.testing.assert_close(out.b_prime, uniform)
    assert torch.all(out.weights.abs() < 1e-7) and torch.all(out.kl.abs() < 1e-7)
    # the target already equals the policy (log P(a|x,y) + log P(y|x) = log Q_theta): weights 0, KL 0
    log_p_a = torch.tensor([-1.0, -2.0, -0.5, -3.0, -1.5, -0.2, -2.2, -0.9, -4.0])
    log_p_y = torch.tensor([-12.0, -9.0, -15.0, -7.0, -8.0, -11.0, -60.0, -58.0, -61.0])
    out = steerlm2_weights(log_p_a, log_p_y, q_prime, log_p_a + log_p_y, off)
    assert torch.all(out.weights.abs() < 1e-6) and torch.all(out.kl.abs() < 1e-6)


def test_shape_mismatch_raises():
    off = group_sizes_to_offsets([2])
    with pytest.raises(ValueError, match="one shape"):
        steerlm2_weights(torch.zeros(2), torch.zeros(2), torch.zeros(3), torch.zeros(2), off)


# ------------------------------------------------------------------------------------------------------------
# the loss: its gradient is the estimator (float64)
# ------------------------------------------------------------------------------------------------------------
def _tiny_policy(seed=0):
    """log Q_theta(y) = sum_t log softmax(W e(y_{t-1}))[y_t] for a float64 W [V, V] (a differentiable toy)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(7, 7, generator=g, dtype=torch.float64, requires_grad=True)
    seqs = [torch.randint(0, 7, (n,), generator=g) for n in (4, 6, 3, 5, 2, 7, 4, 3)]

    def seq_logp(weight, y):
        logits = weight[y[:-1]]  # [T-1, V]
        return torch.log_softmax(logits, -1).gather(1, y[1:, None]).sum()

    return w, seqs, seq_logp


def _coefficients(log_q_theta, offsets, seed=1):
    g = torch.Generator().manual_seed(seed)
    m = log_q_theta.numel()
    p_a, p_y = torch.randn(m, generator=g) - 2, torch.randn(m, generator=g) * 3 - 20
    q_prime = torch.randn(m, generator=g) * 3 - 20
    return steerlm2_weights(p_a, p_y, q_prime, log_q_theta.detach().float(), offsets).weights.double()


@pytest.mark.parametrize("normalization", ["group_mean", "none"])
def test_loss_gradient_is_the_estimator(normalization):
    """autograd grad of sum_g L_g == -sum_g (1/N_g) sum_i (w' - b')_i grad log Q_theta(y_i), per sequence."""
    from megatron_align.losses.steerlm2 import steerlm2_loss

    w, seqs, seq_logp = _tiny_policy()
    sizes = [1, 2, 5]  # ragged groups
    offsets = group_sizes_to_offsets(torch.tensor(sizes))
    lengths = torch.tensor([len(y) - 1 for y in seqs])
    logq = torch.stack([seq_logp(w, y) for y in seqs])  # [M] float64
    c = _coefficients(logq, offsets)
    loss = steerlm2_loss(logq, c, offsets, lengths, normalization)
    assert loss.dtype == torch.float64 and loss[0] == 0  # n = 1: w' = b' = 1
    (grad,) = torch.autograd.grad(loss.sum(), w)
    want = torch.zeros_like(w)
    start = 0
    for n in sizes:
        n_g = float(lengths[start:start + n].double().mean()) if normalization == "group_mean" else 1.0
        for i in range(start, start + n):
            (gi,) = torch.autograd.grad(seq_logp(w, seqs[i]), w)
            want -= float(c[i]) / n_g * gi
        start += n
    assert torch.allclose(grad, want, rtol=1e-12, atol=1e-14)


def test_equal_weights_give_zero_gradient_and_groups_are_independent():
    from megatron_align.losses.steerlm2 import steerlm2_loss

    w, seqs, seq_logp = _tiny_policy(3)
    offsets = group_sizes_to_offsets(torch.tensor([1, 2, 5]))
    lengths = torch.tensor([len(y) - 1 for y in seqs])
    logq = torch.stack([seq_logp(w, y) for y in seqs])
    q_prime = torch.full((8,), -5.0)
    # w' = b' when log P(a|x,y) + log P(y|x) equals log Q_theta (up to a per-group constant)
    theta = logq.detach().float()
    same = steerlm2_weights(theta + 1.0, torch.zeros(8), q_prime, theta, offsets)
    assert same.weights.abs().max() < 1e-6  # fp32 rounding of two equal softmaxes
    loss = steerlm2_loss(logq, same.weights.double(), offsets, lengths)
    (grad,) = torch.autograd.grad(loss.sum(), w, retain_graph=True)
    assert grad.abs().max() < 1e-5
    loss = steerlm2_loss(logq, torch.zeros(8, dtype=torch.float64), offsets, lengths)
    (grad,) = torch.autograd.grad(loss.sum(), w)
    assert torch.count_nonzero(grad) == 0
    # packed ragged groups give each group's own loss
    c = _coefficients(logq, offsets, seed=5)
    packed = steerlm2_loss(logq, c, offsets, lengths)
    for gi, (a, b) in enumerate([(0, 1), (1, 3), (3, 8)]):
        alone = steerlm2_loss(logq[a:b], c[a:b], torch.tensor([0, b - a]), lengths[a:b])
        assert torch.allclose(packed[gi], alone[0], rtol=1e-14)


def test_weight_stats_entropy_and_effective_sample_size_by_hand():
    from megatron_align.losses.steerlm2 import weight_stats

    w = [0.5, 0.25, 0.25, 1.0, 0.9, 0.1]
    offsets = group_sizes_to_offsets(torch.tensor([3, 1, 2]))
    entropy, ess = weight_stats(torch.tensor(w, dtype=torch.float64).log(), offsets)
    assert entropy.tolist() == pytest.approx([-(0.5 * math.log(0.5) + 0.5 * math.log(0.25)), 0.0,
                                              -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))])
    assert ess.tolist() == pytest.approx([1 / (0.25 + 2 * 0.0625), 1.0, 1 / 0.82])
    with pytest.raises(ValueError, match="normalization"):
        from megatron_align.losses.steerlm2 import steerlm2_loss

        steerlm2_loss(torch.zeros(2), torch.zeros(2), torch.tensor([0, 2]), torch.ones(2), "mean")
