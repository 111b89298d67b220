"""The reward model reads the last real token; the host reference policy swaps weights in and out exactly.

In-process at TP=1/PP=1 (``megatron_single``). TP=2 equivalence of both lives in tests/distributed.
"""

import pytest
import torch
import torch.nn.functional as F

from megatron_align.models.gpt import build_gpt_model
from megatron_align.models.reference import HostReferencePolicy
from megatron_align.models.reward import build_reward_model
from megatron_align.training.schedule import forward_backward
from megatron_align.training.setup import prepare_for_training
from tests.helpers import positions, tiny_llama, tokens

V = 1000


# ----------------------------------------------------------------------------------------------------------
# reward model
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reward_model(megatron_single):
    torch.manual_seed(7)
    model = build_reward_model(tiny_llama(num_attributes=9))
    model.eval()
    return model


def _rewards(model, tok, lengths=None):
    with torch.no_grad():
        return model(tok, positions(tok), None, lengths=lengths)


LENGTHS = torch.tensor([12, 7, 3, 1])


def test_rewards_read_the_last_real_token(reward_model):
    tok = tokens(4, 12, V, seed=1)
    rewards = _rewards(reward_model, tok, LENGTHS)
    assert rewards.shape == (4, 9)

    # (1) each sequence alone, cut to its own length, no `lengths`: the last position is the last real token
    for i, n in enumerate(LENGTHS.tolist()):
        alone = _rewards(reward_model, tok[i:i + 1, :n])
        torch.testing.assert_close(rewards[i], alone[0], atol=1e-5, rtol=0)

    # (2) the head applied by hand to the trunk's final hidden state [S, B, H] at position lengths-1
    captured = {}
    handle = reward_model.decoder.register_forward_hook(lambda mod, args, out: captured.update(h=out))
    try:
        _rewards(reward_model, tok, LENGTHS)
    finally:
        handle.remove()
    hidden = captured["h"]  # [S, B, H], after the final norm
    last = hidden[LENGTHS - 1, torch.arange(4)]  # [B, H]
    head = reward_model.rm_head
    torch.testing.assert_close(rewards, F.linear(last, head.weight, head.bias), atol=1e-6, rtol=0)


def test_garbage_after_lengths_does_not_change_rewards(reward_model):
    tok = tokens(4, 12, V, seed=2)
    ref = _rewards(reward_model, tok, LENGTHS)
    noisy = tok.clone()
    garbage = tokens(4, 12, V, seed=3)
    for i, n in enumerate(LENGTHS.tolist()):
        noisy[i, n:] = garbage[i, n:]
    assert not torch.equal(noisy, tok)
    torch.testing.assert_close(_rewards(reward_model, noisy, LENGTHS), ref, atol=1e-6, rtol=0)
    # and lengths=None means "every token is real"
    full = torch.full((4,), 12)
    assert torch.equal(_rewards(reward_model, tok, full), _rewards(reward_model, tok))


# ----------------------------------------------------------------------------------------------------------
# host reference policy
# ----------------------------------------------------------------------------------------------------------
def _logits(model, tok):
    model.eval()
    with torch.no_grad():
        return model(tok, positions(tok), None)[..., :V]


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_bit_exact(model, snapshot):
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), snapshot[name]), name


def test_swapped_in_computes_with_reference_and_restores_after_an_optimizer_step(megatron_single):
    cfg = tiny_llama()
    cfg.optim.lr = 1e-2
    model = build_gpt_model(cfg)  # vocab-parallel logits (= full logits at TP=1), as training needs
    ddp, optimizer = prepare_for_training(model, cfg.optim, "32")
    tok = tokens(2, 16, V, seed=4)
    ref_logits = _logits(model, tok)
    reference = HostReferencePolicy(model)
    assert reference.nbytes == sum(p.numel() * p.element_size() for p in model.parameters())

    # one real training step moves the policy away from the reference
    ddp.train()
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    batch = {"tokens": tok, "labels": torch.roll(tok, -1, 1), "loss_mask": torch.ones(2, 16),
             "position_ids": positions(tok)}
    forward_backward([ddp], [batch], 1, 16, 2)
    assert optimizer.step()[0]
    trained = _snapshot(model)
    trained_logits = _logits(model, tok)
    assert not torch.allclose(trained_logits, ref_logits)

    with reference.swapped_in(model) as swapped:
        assert swapped is model
        assert torch.equal(_logits(model, tok), ref_logits)
    _assert_bit_exact(model, trained)
    assert torch.equal(_logits(model, tok), trained_logits)

    # the policy keeps training normally after a swap
    ddp.train()
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    forward_backward([ddp], [batch], 1, 16, 2)
    assert optimizer.step()[0]


def test_swap_restores_on_error_update_and_mismatch(megatron_single):
    model = build_gpt_model(tiny_llama(), parallel_output=False)
    tok = tokens(2, 16, V, seed=5)
    ref_logits = _logits(model, tok)
    reference = HostReferencePolicy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    perturbed = _snapshot(model)

    with pytest.raises(KeyError):
        with reference.swapped_in(model):
            assert torch.equal(_logits(model, tok), ref_logits)
            raise KeyError("boom")
    _assert_bit_exact(model, perturbed)

    # update(): the current weights become the reference
    reference.update(model)
    perturbed_logits = _logits(model, tok)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    halved = _snapshot(model)
    with reference.swapped_in(model):
        assert torch.equal(_logits(model, tok), perturbed_logits)
    _assert_bit_exact(model, halved)

    # a model with other parameters is refused before anything is touched
    other = build_reward_model(tiny_llama(num_attributes=9))
    before = _snapshot(other)
    with pytest.raises(RuntimeError, match="different parameters"):
        with reference.swapped_in(other):
            pass
    _assert_bit_exact(other, before)
