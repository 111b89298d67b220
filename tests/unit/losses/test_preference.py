"""losses/preference: every DPO-family and EXO variant against an independent float64 reference (Python loops
over math functions) on random inputs with ragged masks and groups, gradcheck, one hand-computed value each,
and dpo-pref at K = 2 equal to dpo."""

import math
import random

import pytest
import torch

from megatron_align.kernels.group_softmax import group_sizes_to_offsets
from megatron_align.losses.preference import exo_loss, pair_loss, sequence_log_ratio


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def _ref_pair(kind, d, beta, m, s=1.0):
    z, g = beta * d, s * m
    if kind == "dpo":
        return -math.log(_sig(z))
    if kind == "ipo":
        return (d - 1 / (2 * beta)) ** 2
    if kind == "rpo_sq":
        return (z - g) ** 2
    if kind == "scale":
        return abs(m) * -math.log(_sig(z))
    p, q = (_sig(g), _sig(z)) if kind == "rpo_bwd_kl" else (_sig(z), _sig(g))
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def _ref_exo(kind, f, r, beta_r):
    mf = max(f)
    lse = mf + math.log(sum(math.exp(x - mf) for x in f))
    logp = [x - lse for x in f]
    if kind == "exo-pref":
        logq = [0.0, -10.0] if r[0] > r[1] else [-10.0, 0.0]
        return sum(math.exp(a) * (a - b) for a, b in zip(logp, logq))
    if kind == "dpo-pref":
        return -sum(w * a for w, a in zip(r, logp))
    mr = max(x / beta_r for x in r)
    lser = mr + math.log(sum(math.exp(x / beta_r - mr) for x in r))
    logq = [x / beta_r - lser for x in r]
    if kind == "exo-rw":
        return sum(math.exp(a) * (a - b) for a, b in zip(logp, logq))
    return -sum(math.exp(b) * a for a, b in zip(logp, logq))  # dpo-rw


@pytest.mark.parametrize("average", [False, True])
def test_sequence_log_ratio_with_ragged_masks(average):
    g = torch.Generator().manual_seed(0)
    pol, ref = (
        torch.randn(5, 9, dtype=torch.float64, generator=g),
        torch.randn(5, 9, dtype=torch.float64, generator=g),
    )
    mask = torch.rand(5, 9, generator=g) > 0.4
    mask[2] = False  # an empty response: 0, never NaN
    got = sequence_log_ratio(pol, ref, mask, average)
    for i in range(5):
        terms = [pol[i, t].item() - ref[i, t].item() for t in range(9) if mask[i, t]]
        want = (sum(terms) / len(terms) if terms else 0.0) if average else sum(terms)
        assert got[i].item() == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("kind", ["dpo", "ipo", "rpo_sq", "rpo_bwd_kl", "rpo_fwd_kl", "scale"])
def test_pair_losses_equal_the_float64_reference_and_gradcheck(kind):
    g = torch.Generator().manual_seed(1)
    delta = torch.randn(7, dtype=torch.float64, generator=g) * 3
    margin = torch.randn(7, dtype=torch.float64, generator=g)
    got = pair_loss(kind, delta, 0.3, margin, gt_reward_scale=1.5)
    want = [_ref_pair(kind, d, 0.3, m, 1.5) for d, m in zip(delta.tolist(), margin.tolist())]
    assert got.tolist() == pytest.approx(want, rel=1e-10, abs=1e-12)
    x = delta[:3].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: pair_loss(kind, t, 0.3, margin[:3], 1.5), (x,))


@pytest.mark.parametrize(
    "kind, margin, value",
    [
        ("dpo", 1.0, math.log(2)),
        ("ipo", 1.0, 6.25),
        ("rpo_sq", 1.0, 1.0),
        ("rpo_bwd_kl", 1.0, 0.110944),
        ("rpo_fwd_kl", 1.0, 0.120115),
        ("scale", 2.0, 2 * math.log(2)),
    ],
)
def test_step_zero_values_by_hand(kind, margin, value):
    """Policy equal to the reference (delta = 0), beta 0.2, rewards 1 / 0 (margin 2 for scale)."""
    got = pair_loss(
        kind, torch.zeros(1, dtype=torch.float64), 0.2, torch.tensor([margin], dtype=torch.float64)
    )
    assert got.item() == pytest.approx(value, abs=1e-6)


def _groups(sizes, seed):
    rng = random.Random(seed)
    f = [rng.gauss(0, 2) for _ in range(sum(sizes))]
    r = [rng.choice([0.0, 1.0, 2.5, -1.0, rng.gauss(0, 1)]) for _ in range(sum(sizes))]
    return f, r


@pytest.mark.parametrize("kind", ["exo-rw", "dpo-rw", "dpo-pref"])
@pytest.mark.parametrize("sizes", [[2, 2, 2], [3, 3], [5, 2, 3, 5]])
def test_exo_losses_equal_the_float64_reference(kind, sizes):
    f, r = _groups(sizes, len(sizes))
    offsets = group_sizes_to_offsets(sizes)
    got = exo_loss(kind, torch.tensor(f, dtype=torch.float64), torch.tensor(r), offsets, beta_r=0.7)
    lo = 0
    for gi, k in enumerate(sizes):
        want = _ref_exo(kind, f[lo : lo + k], r[lo : lo + k], 0.7)
        assert got[gi].item() == pytest.approx(want, rel=1e-5, abs=1e-5), (kind, sizes, gi)
        lo += k


def test_exo_pref_is_the_repositorys_target_and_needs_pairs():
    f, r = _groups([2, 2, 2, 2], 3)
    r[0], r[1] = 1.0, 1.0  # a tie prefers the second, as the EXO repository does
    offsets = group_sizes_to_offsets([2, 2, 2, 2])
    got = exo_loss("exo-pref", torch.tensor(f, dtype=torch.float64), torch.tensor(r), offsets)
    for gi in range(4):
        assert got[gi].item() == pytest.approx(
            _ref_exo("exo-pref", f[2 * gi : 2 * gi + 2], r[2 * gi : 2 * gi + 2], 1.0), rel=1e-5
        )
    zero = exo_loss("exo-pref", torch.zeros(2), torch.tensor([1.0, 0.0]), group_sizes_to_offsets([2]))
    assert zero.item() == pytest.approx(math.log(0.5) + 5, abs=1e-5)  # 4.306853 at step 0
    with pytest.raises(ValueError, match="num_contrastive must be 2"):
        exo_loss("exo-pref", torch.zeros(3), torch.zeros(3), group_sizes_to_offsets([3]))


def test_exo_rw_at_step_zero_is_the_kl_from_uniform():
    r = torch.tensor([1.0, 0.0, 2.0])
    got = exo_loss("exo-rw", torch.zeros(3), r, group_sizes_to_offsets([3]), beta_r=0.5)
    q = torch.softmax(r.double() / 0.5, 0)
    assert got.item() == pytest.approx(sum((1 / 3) * math.log((1 / 3) / qi) for qi in q.tolist()), abs=1e-6)


def test_dpo_pref_at_k2_equals_dpo():
    g = torch.Generator().manual_seed(5)
    r_c, r_r = (
        torch.randn(6, dtype=torch.float64, generator=g),
        torch.randn(6, dtype=torch.float64, generator=g),
    )
    beta_pi = 0.4
    f = torch.stack([beta_pi * r_c, beta_pi * r_r], 1).reshape(-1)  # chosen, rejected per prompt
    rewards = torch.tensor([1.0, 0.0] * 6)
    got = exo_loss("dpo-pref", f, rewards, group_sizes_to_offsets([2] * 6))
    torch.testing.assert_close(got.double(), pair_loss("dpo", r_c - r_r, beta_pi), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["exo-rw", "dpo-rw", "dpo-pref", "exo-pref"])
def test_exo_gradcheck(kind):
    sizes = [2, 2] if kind == "exo-pref" else [2, 3]
    f, r = _groups(sizes, 9)
    x = torch.tensor(f, dtype=torch.float64, requires_grad=True)
    offsets = group_sizes_to_offsets(sizes)
    # the group ops accumulate in fp32: a coarse step and tolerance
    assert torch.autograd.gradcheck(
        lambda t: exo_loss(kind, t, torch.tensor(r), offsets, 0.7).double(),
        (x,),
        eps=1e-3,
        atol=2e-3,
        rtol=2e-3,
    )


def test_unknown_kind_and_missing_rewards_are_one_line():
    with pytest.raises(ValueError, match="preference_loss='kto'"):
        pair_loss("kto", torch.zeros(1), 0.1)
    with pytest.raises(ValueError, match="needs the pairs' rewards"):
        pair_loss("rpo_sq", torch.zeros(1), 0.1)


def test_objective_sums_match_hand_computation():
    """Two pairs: totals with the SFT term, beta-scaled reward metrics, strict accuracy, the chosen KL."""
    from megatron_align.losses.preference import PREFERENCE_METRICS, PreferenceSpec, preference_objective

    pol = torch.tensor([-3.0, -5.0, -4.0, -4.0], requires_grad=True)
    ref = torch.tensor([-4.0, -4.0, -4.0, -4.0])
    counts = torch.tensor([2, 4, 1, 3])
    spec = PreferenceSpec(loss="dpo", beta=0.5, sft_loss_weight=0.25)
    total, sums = preference_objective(spec, pol, ref, counts, torch.tensor([1.0, 0, 1, 0]),
                                       torch.tensor([0, 2, 4]), torch.tensor([False, True]))
    d = [1.0 - (-1.0), 0.0]  # r_c - r_r per pair
    want = [math.log1p(math.exp(-0.5 * x)) + 0.25 * n for x, n in zip(d, [3.0, 4.0])]
    assert torch.allclose(total, torch.tensor(want, dtype=torch.float32))
    v = dict(zip(PREFERENCE_METRICS, sums.tolist()))
    assert v["groups"] == 2 and v["ignored"] == 1 and v["correct"] == 1  # the tie is not correct
    assert v["chosen_reward"] == pytest.approx(0.5 * (1 + 0)) and v["rejected_reward"] == pytest.approx(-0.5)
    assert v["kl_chosen"] == pytest.approx(1.0) and v["sft_loss"] == pytest.approx(7.0)
    total.sum().backward()
    # tie pair's chosen: d(-log sigma(beta delta))/dpol_c = -beta sigma(0) = -0.25; SFT term: 0.25 * -1
    assert pol.grad[2].item() == pytest.approx(-0.5)
    avg = PreferenceSpec(loss="dpo", beta=0.5, average_log_probs=True, sft_average_log_probs=True,
                         sft_loss_weight=1.0)
    total, _ = preference_objective(avg, pol.detach(), ref, counts, torch.zeros(4), torch.tensor([0, 2, 4]),
                                    torch.tensor([False, False]))
    d0 = 1.0 / 2 - (-1.0) / 4
    assert total[0].item() == pytest.approx(math.log1p(math.exp(-0.5 * d0)) + 3.0 / 2)


def test_objective_exo_entropy_and_kl_to_reward_distribution():
    from megatron_align.losses.preference import PREFERENCE_METRICS, PreferenceSpec, preference_objective

    pol, ref = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-2.0, -2.0, -2.0])
    rewards = torch.tensor([0.0, 1.0, 2.0])
    spec = PreferenceSpec(loss="exo-rw", beta_pi=0.5, beta_r=2.0)
    total, sums = preference_objective(spec, pol, ref, torch.ones(3), rewards, torch.tensor([0, 3]),
                                       torch.tensor([False]))
    f = 0.5 * torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    p_f, p_r = torch.softmax(f, 0), torch.softmax(rewards.double() / 2.0, 0)
    kl = float((p_f * (p_f.log() - p_r.log())).sum())
    v = dict(zip(PREFERENCE_METRICS, sums.tolist()))
    assert total.item() == pytest.approx(kl, rel=1e-5) and v["kl_pf_pr"] == pytest.approx(kl, rel=1e-5)
    assert v["entropy_pf"] == pytest.approx(float(-(p_f * p_f.log()).sum()), rel=1e-5)
    # best-rewarded completion (row 2) is "chosen", worst (row 0) "rejected": its beta_pi-scaled log-ratios
    assert v["chosen_reward"] == pytest.approx(-0.5) and v["rejected_reward"] == pytest.approx(0.5)
    assert v["correct"] == 0
