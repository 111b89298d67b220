"""One guarded optimizer step over megatron's schedules, and a forward-only evaluation pass.

Non-finite guard: if the (global) loss or the (global) gradient norm is NaN/Inf, the update is skipped, the
gradients are dropped and the step is counted; ``max_consecutive_nonfinite`` skips in a row stop the run with
a clear message. Every rank reaches the same decision because both values are reduced over all ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from megatron_align.distributed.launch import compute_device
from megatron_align.training.schedule import forward_backward


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with NaN/Inf loss or gradients."""


@dataclass
class StepResult:
    """What one optimizer step did."""

    loss: float  # mean over trained tokens of the global batch
    num_tokens: float  # trained (unmasked) tokens in the global batch
    grad_norm: float
    skipped: bool
    sums: dict = field(default_factory=dict)  # this rank's extra loss-function sums (schedule "sums")


def reduce_loss(res: dict) -> tuple[float, float]:
    """(mean loss, tokens) over the whole job; non-last pipeline stages contribute zeros."""
    t = torch.tensor([res["loss_sum"], res["num_tokens"]], dtype=torch.float64, device=compute_device())
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    t = t.cpu()
    tokens = float(t[1])
    return (float(t[0]) / tokens if tokens > 0 else float("nan")), tokens


def train_step(ddp, optimizer, microbatches: list, seq_length: int, micro_batch_size: int,
               forward_step_func=None) -> StepResult:
    """Zero grads, forward/backward every micro-batch, then step unless loss or gradients are non-finite."""
    kwargs = {} if forward_step_func is None else {"forward_step_func": forward_step_func}
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    res = forward_backward([ddp], microbatches, len(microbatches), seq_length, micro_batch_size, **kwargs)
    loss, tokens = reduce_loss(res)
    grad_norm = float(optimizer.get_grad_norm())
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        optimizer.zero_grad()
        ddp.zero_grad_buffer()
        return StepResult(loss, tokens, grad_norm, skipped=True, sums=res["sums"])
    ok, clipped_norm, _ = optimizer.step()
    return StepResult(loss, tokens, float(clipped_norm if clipped_norm is not None else grad_norm),
                      skipped=not ok, sums=res["sums"])


def evaluate(ddp, microbatches: list, seq_length: int, micro_batch_size: int,
             forward_step_func=None) -> tuple[float, dict]:
    """Forward only: (mean loss over trained tokens on every rank, this rank's extra loss-function sums)."""
    kwargs = {} if forward_step_func is None else {"forward_step_func": forward_step_func}
    ddp.eval()
    try:
        with torch.no_grad():
            res = forward_backward([ddp], microbatches, len(microbatches), seq_length, micro_batch_size,
                                   forward_only=True, **kwargs)
    finally:
        ddp.train()
    return reduce_loss(res)[0], res["sums"]


def eval_loss(ddp, microbatches: list, seq_length: int, micro_batch_size: int,
              forward_step_func=None) -> float:
    """Mean loss over trained tokens of ``microbatches`` on every rank (forward only)."""
    return evaluate(ddp, microbatches, seq_length, micro_batch_size, forward_step_func)[0]
