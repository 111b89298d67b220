"""How every loss is reduced: a sum over its units (tokens, label cells, pairs, sequences) and their count.

Megatron's schedules, with ``calculate_per_token_loss=True`` (``models.gpt.transformer_config_from`` sets it),
take a ``loss_func`` result ``(loss_sum, count, reduced)``: they sum ``count`` over micro-batches and
data-parallel ranks and ``finalize_model_grads`` divides the gradients by that total, so the loss is one mean
over the whole global batch whatever the micro-batch / DP split (DESIGN.md habit 3; verl's ``agg_loss``,
NeMo-RL's losses). ``reduced["lm_loss"]`` is ``[loss_sum, count]`` detached, which ``training.schedule``
sums for logging; every other key of ``reduced`` is a metric vector summed the same way.
"""

from __future__ import annotations

import torch


def megatron_loss(loss_sum: torch.Tensor, count: torch.Tensor, **metrics: torch.Tensor):
    """The ``(loss_sum, count, reduced)`` triple of a megatron ``loss_func``: ``count`` as int (the divisor
    megatron totals over micro-batches and ranks), ``reduced["lm_loss"] = [loss_sum, count]`` detached for
    logging, and each ``metrics`` vector under its own key."""
    count = count.to(torch.float32)
    reduced = {"lm_loss": torch.stack([loss_sum.detach().float(), count.detach()]), **metrics}
    return loss_sum, count.to(torch.int), reduced
