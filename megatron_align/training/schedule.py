"""One forward(-backward) pass over megatron's pipeline schedules with per-token loss normalization.

Losses are returned by ``loss_func`` as ``(sum over tokens, token count, reduced metrics)``; with
``calculate_per_token_loss=True`` (set in ``transformer_config_from``) megatron's ``finalize_model_grads``
divides gradients by the token count summed over micro-batches and data-parallel ranks, so micro-batch x
accumulation x DP equals one big batch (DESIGN.md habit 3; verl ``agg_loss``, NeMo-RL losses).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import torch

from megatron_align.distributed.launch import compute_device
from megatron_align.losses.nll import nll_loss_func


def _on_device(batch, device):
    """A ``Batch`` or a plain dict of tensors, moved to ``device`` (no copy when already there)."""
    if isinstance(batch, dict):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return batch.to(device)


def lm_forward_step(data_iterator, model):
    """megatron forward_step_func for causal-LM training batches (tokens, labels, loss_mask, position_ids)."""
    batch = _on_device(next(data_iterator), compute_device())  # collated on the CPU
    mask = batch.get("attention_mask")
    if mask is None and batch.get("cu_seqlens") is not None:
        mask = batch.attention_mask()  # packed rows: [B, 1, S, S], causal within each sample only
    output = model(
        batch["tokens"], batch["position_ids"], mask, labels=batch["labels"]
    )  # [B, S] per-token loss on the last stage, hidden states elsewhere
    return output, partial(nll_loss_func, batch["loss_mask"])


def forward_backward(
    model_chunks: list,
    microbatches: Iterable[dict],
    num_microbatches: int,
    seq_length: int,
    micro_batch_size: int,
    forward_only: bool = False,
    forward_step_func=lm_forward_step,
) -> dict:
    """Run the schedule; returns ``{"loss_sum", "num_tokens", "sums"}`` summed over this rank's micro-batches.

    ``sums``: every other key of the loss functions' reduced dicts (e.g. a reward model's accuracy counts),
    summed over micro-batches as float64 CPU tensors, not reduced across ranks. Values are meaningful on the
    last pipeline stage (zeros, and an empty ``sums``, elsewhere).
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    fb = get_forward_backward_func()
    losses = fb(
        forward_step_func=forward_step_func,
        data_iterator=iter(microbatches),
        model=model_chunks,
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
    total = torch.zeros(2, dtype=torch.float64)
    sums: dict[str, torch.Tensor] = {}
    for item in losses or []:
        total += item["lm_loss"].double().cpu()
        for key, value in item.items():
            if key != "lm_loss":
                value = value.detach().double().cpu()
                sums[key] = sums[key] + value if key in sums else value
    return {"loss_sum": float(total[0]), "num_tokens": float(total[1]), "sums": sums}
