"""losses.nll and losses.reduce against sums written out by hand (plain Python loops over the entries)."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_align.logprobs import sequence_logprobs
from megatron_align.losses.nll import nll_loss_func, weighted_sequence_nll
from megatron_align.losses.reduce import megatron_loss


def test_nll_loss_func_sums_masked_tokens_and_counts_them():
    nll = torch.tensor([[0.5, 1.0, 2.0, 9.0], [3.0, 0.25, 4.0, float("1e30")]])  # [B, S]
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]])
    loss_sum, count, reduced = nll_loss_func(mask, nll)
    expect = sum(nll[b, t].item() for b in range(2) for t in range(4) if mask[b, t] == 1)
    assert loss_sum.item() == pytest.approx(expect) and count.item() == 4 and count.dtype == torch.int32
    assert reduced["lm_loss"].tolist() == pytest.approx([expect, 4.0])
    assert not reduced["lm_loss"].requires_grad


def test_megatron_loss_keeps_metrics_and_detaches_the_logged_sum():
    x = torch.tensor(2.0, requires_grad=True)
    loss_sum, count, reduced = megatron_loss(x * 3, torch.tensor(5.0), rm=torch.tensor([1.0, 2.0]))
    assert loss_sum.requires_grad and count.item() == 5 and count.dtype == torch.int32
    assert reduced["lm_loss"].tolist() == [6.0, 5.0] and reduced["rm"].tolist() == [1.0, 2.0]


def test_weighted_sequence_nll_value_and_gradient():
    """-sum_i c_i log p(y_i): the gradient on each response token's log-prob is -c_i (0 off the mask)."""
    lp = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -3.0, -4.0], [-2.0, -2.0, -2.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 0, 0]])
    c = torch.tensor([0.5, -0.25, 2.0])
    total, n = weighted_sequence_nll(sequence_logprobs(lp, mask), c)
    seq = [sum(lp[i, t].item() for t in range(3) if mask[i, t]) for i in range(3)]
    assert total.item() == pytest.approx(-sum(ci * si for ci, si in zip(c.tolist(), seq))) and n.item() == 3
    total.backward()
    expect = [[-c[i].item() if mask[i, t] else 0.0 for t in range(3)] for i in range(3)]
    assert lp.grad.tolist() == expect
    with pytest.raises(ValueError, match="one \\[N\\] shape"):
        weighted_sequence_nll(torch.zeros(3), torch.zeros(2))
    assert math.isfinite(total.item())
