"""``fused_lm_head_logprobs(..., accumulate_into_main_grad=True)`` inside a real megatron model wrapped in
megatron's DistributedDataParallel (1 gloo rank): every parameter's ``main_grad`` after backward and
``finish_grad_sync`` equals what the plain path (the model's own logits, log_softmax, gather) gives, for an
untied output layer and for an embedding tied to it (megatron marks the tied weight ``zero_out_wgrad``; the
fused op must then hand DDP a zero placeholder so the embedding's own gradient still reaches main_grad), and
two micro-batches accumulate, with DDP's gradient reduction at the end of backward (the trainers' setting) and
overlapped with backward (``overlap_grad_reduce``, whose hooks need every parameter's ``.grad`` to exist)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from megatron_align.logprobs import fused_lm_head_logprobs
from tests.helpers import positions, tiny_gpt2, tiny_llama, tokens


def _setup(cfg, overlap: bool):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.training.setup import prepare_for_training

    cfg.optim.name = "adamw"
    torch.manual_seed(7)
    model = build_gpt_model(cfg)
    if not overlap:
        ddp, _ = prepare_for_training(model, cfg.optim, "32")
        return model, ddp
    ddp_cfg = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=True)
    return model, DistributedDataParallel(config=model.config, ddp_config=ddp_cfg, module=model)


def _loss(model, ddp, tok, fused: bool) -> torch.Tensor:
    """Minus the summed log-prob of the next tokens (last position masked), through the model."""
    labels = tok.roll(-1, 1)
    mask = torch.ones_like(tok, dtype=torch.float32)
    mask[:, -1] = 0
    seen = {}
    hook = model.output_layer.register_forward_pre_hook(lambda mod, args: seen.setdefault("h", args[0]))
    try:
        logits = ddp(tok, positions(tok), None)  # [B, S, V(padded)]; hidden [S, B, H] captured on the way
    finally:
        hook.remove()
    if fused:
        weight = (model.shared_embedding_or_output_weight() if model.share_embeddings_and_output_weights
                  else model.output_layer.weight)
        lp = fused_lm_head_logprobs(seen["h"], weight, labels, loss_mask=mask, sequence_first=True,
                                    accumulate_into_main_grad=True)  # [B, S]
    else:
        lp = torch.log_softmax(logits.float(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1) * mask
    return -lp.sum()


def _main_grads(model, ddp, fused: bool, micro_batches: int) -> dict[str, torch.Tensor]:
    ddp.zero_grad_buffer()
    for i in range(micro_batches):
        last = i == micro_batches - 1
        with contextlib.nullcontext() if last else ddp.no_sync():  # as megatron's schedules accumulate
            _loss(model, ddp, tokens(2, 12, 1000, seed=i), fused).backward()
    ddp.finish_grad_sync()
    for name, p in model.named_parameters():
        assert p.grad is None, name  # DDP's hook moved or skipped every .grad
    return {n: p.main_grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("overlap", [False, True], ids=["sync_at_end", "overlap_grad_reduce"])
@pytest.mark.parametrize("make_cfg", [tiny_llama, tiny_gpt2], ids=["untied", "tied"])
def test_main_grads_equal_the_plain_path(megatron_single, make_cfg, overlap):
    model, ddp = _setup(make_cfg(), overlap)
    tied = model.share_embeddings_and_output_weights
    if tied:  # the case the zero placeholder exists for
        assert getattr(model.shared_embedding_or_output_weight(), "zero_out_wgrad", False)
    for micro_batches in (1, 2):
        want = _main_grads(model, ddp, fused=False, micro_batches=micro_batches)
        got = _main_grads(model, ddp, fused=True, micro_batches=micro_batches)
        assert want.keys() == got.keys()
        for name in want:
            assert want[name].abs().sum() > 0, name  # every parameter takes part
            torch.testing.assert_close(got[name], want[name], rtol=2e-4, atol=2e-6, msg=name)
