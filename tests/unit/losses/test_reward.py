"""Reward-model losses against values computed by hand (numbers and math.log / math.exp written here).

Formulas, as NeMo-Aligner's ``megatron_gpt_regression_reward_model.py`` writes them:
- regression: ``sum(mask * (out - label)^2) / sum(mask)``, ``mask = label != -100``;
- pairs: ``label = labels[0, 0]`` of the pair's first row; ``label < 0``: first row chosen, else second;
  ``margin = |label|``; the score is head output 4; regular ``-logsigmoid(c - r)``, margin
  ``-logsigmoid(c - r - margin)``, scaled ``margin * -logsigmoid(c - r)``;
- binary ranking (``megatron_gpt_reward_model.py``): ``-logsigmoid(chosen - rejected)``, accuracy
  ``chosen > rejected``.
``-log sigmoid(x) = log(1 + exp(-x))``.
"""

import math

import pytest
import torch

from megatron_align.losses.reward import (
    PAIR_METRICS,
    bt_pair_losses,
    pair_loss_func,
    regression_loss,
    regression_loss_func,
    regression_terms,
)

M = -100.0


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + exp(x))."""
    return math.log(1.0 + math.exp(x))


def test_regression_masks_missing_cells():
    pred = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]], requires_grad=True)
    labels = torch.tensor([[2.0, M, 1.0], [M, M, 4.5]])
    loss = regression_loss(pred, labels)
    # valid cells: (1-2)^2 = 1, (3-1)^2 = 4, (4-4.5)^2 = 0.25 -> 5.25 / 3
    assert loss.item() == pytest.approx(1.75, abs=1e-6)
    loss.backward()
    # d/d pred = 2 (pred - label) / 3 on valid cells, 0 elsewhere
    expected = torch.tensor([[-2 / 3, 0.0, 4 / 3], [0.0, 0.0, -1 / 3]])
    torch.testing.assert_close(pred.grad, expected)
    _, n, abs_err, counts = regression_terms(pred, labels)
    assert n.item() == 3
    torch.testing.assert_close(abs_err, torch.tensor([1.0, 0.0, 2.5]))  # |1-2|; none; |3-1| + |4-4.5|
    torch.testing.assert_close(counts, torch.tensor([1.0, 0.0, 2.0]))


def test_regression_ignores_garbage_in_masked_cells():
    pred = torch.tensor([[float("inf"), 1.0]], requires_grad=True)
    loss = regression_loss(pred, torch.tensor([[M, 3.0]]))
    assert loss.item() == pytest.approx(4.0)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[0, 0] == 0


def test_all_masked_batch_is_zero_with_finite_zero_grads():
    pred = torch.randn(3, 9, requires_grad=True)
    labels = torch.full((3, 9), M)
    loss = regression_loss(pred, labels)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(pred.grad).all() and not pred.grad.any()
    loss_sum, count, reduced = regression_loss_func(labels, M, pred.detach())
    assert loss_sum.item() == 0.0 and count.item() == 0 and torch.isfinite(reduced["rm"]).all()


def test_micro_batch_split_gives_the_global_mean():
    """(sum, count) pairs add up: two micro-batches normalised together equal one batch."""
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(6, 4, generator=g)
    labels = torch.randn(6, 4, generator=g)
    labels[torch.rand(6, 4, generator=g) < 0.4] = M
    labels[:3] = M  # the first micro-batch has nothing to learn
    parts = [regression_loss_func(labels[i:i + 3], M, pred[i:i + 3]) for i in (0, 3)]
    total = sum(p[0] for p in parts) / sum(p[1] for p in parts)
    torch.testing.assert_close(total, regression_loss(pred, labels))


def _pair_output(first: float, second: float, junk: float = 7.0) -> torch.Tensor:
    """Rewards [2, 9] of one pair; only column 4 (helpfulness) is the score."""
    out = torch.full((2, 9), junk)
    out[0, 4], out[1, 4] = first, second
    return out


@pytest.mark.parametrize("pref, chosen, rejected", [(-2.0, 1.5, 0.25), (3.0, 0.25, 1.5), (0.0, 0.25, 1.5)])
def test_bt_variants_by_hand(pref, chosen, rejected):
    out = _pair_output(1.5, 0.25)
    d = chosen - rejected
    margin = abs(pref)
    expected = {"regular_bt": softplus(-d), "margin_bt": softplus(-(d - margin)),
                "scaled_bt": margin * softplus(-d)}
    for name, value in expected.items():
        loss_sum, count, reduced = pair_loss_func(torch.tensor([pref]), name, 4, out)
        assert count.item() == 1
        assert loss_sum.item() == pytest.approx(value, rel=1e-6), name
        v = dict(zip(PAIR_METRICS, reduced["rm"].tolist()))
        assert v["chosen_sum"] == pytest.approx(chosen) and v["rejected_sum"] == pytest.approx(rejected)
        assert v["decided"] == (0.0 if pref == 0 else 1.0)
        assert v["correct"] == (1.0 if (pref != 0 and chosen > rejected) else 0.0)


def test_scaled_bt_example_numbers():
    """Pref -2 with scores (1.5, 0.25): 2 * log(1 + exp(-1.25)) = 0.50386; ties cost nothing."""
    loss_sum, count, _ = pair_loss_func(torch.tensor([-2.0, 0.0]), "scaled_bt", 4,
                                        torch.cat([_pair_output(1.5, 0.25), _pair_output(3.0, -3.0)]))
    assert count.item() == 2
    assert loss_sum.item() == pytest.approx(2 * math.log(1 + math.exp(-1.25)), rel=1e-6)
    assert loss_sum.item() == pytest.approx(0.50386, abs=1e-5)


def test_bt_gradient_pushes_chosen_up():
    first = torch.tensor([1.5], requires_grad=True)
    second = torch.tensor([0.25], requires_grad=True)
    loss, _, _ = bt_pair_losses(first, second, torch.tensor([-1.0]), "regular_bt")
    loss.sum().backward()
    # d/dc -log s(c - r) = -(1 - s(d)) = -1 / (1 + exp(d)), d = 1.25
    assert first.grad.item() == pytest.approx(-1 / (1 + math.exp(1.25)), rel=1e-6)
    assert second.grad.item() == pytest.approx(1 / (1 + math.exp(1.25)), rel=1e-6)


def test_binary_ranking_bt_and_accuracy():
    # rows: (chosen 0.3, rejected 0.9), (chosen 2.0, rejected -1.0); one head output
    out = torch.tensor([[0.3], [0.9], [2.0], [-1.0]])
    loss_sum, count, reduced = pair_loss_func(torch.tensor([-1.0, -1.0]), "regular_bt", 0, out)
    assert count.item() == 2
    assert loss_sum.item() == pytest.approx(softplus(0.6) + softplus(-3.0), rel=1e-6)
    v = dict(zip(PAIR_METRICS, reduced["rm"].tolist()))
    assert v["correct"] / v["decided"] == 0.5
    assert reduced["lm_loss"].tolist() == pytest.approx([loss_sum.item(), 2.0])


def test_unknown_pair_loss_is_refused():
    with pytest.raises(ValueError, match="not one of"):
        bt_pair_losses(torch.zeros(1), torch.zeros(1), torch.zeros(1), "hinge")
