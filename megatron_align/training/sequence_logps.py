"""Per-sequence log-probs of batched rows, the quantity every sequence-level objective starts from (DPO, EXO,
SteerLM 2.0): ``sum_t m_t log p(y_t)`` per row, from the vocab-parallel logits through ``logprobs``.

``sequence_logps`` scores one micro-batch's logits (inside a loss function, with gradient); ``score_rows``
runs a forward-only pass of megatron's schedule over micro-batches with whatever weights the model holds (the
reference swapped in, or the current policy for a baseline) and returns each micro-batch's ``[R]`` values.
Training and scoring use the same function on the same tensors, so equal weights give bit-identical values.
Batches carry ``tokens``, ``position_ids``, ``labels`` (next tokens) and ``loss_mask`` ``[R, S]``.
"""

from __future__ import annotations

import torch

from megatron_align.distributed.launch import compute_device
from megatron_align.logprobs import token_logprobs


def on_device(batch: dict) -> dict:
    """A micro-batch's tensors on the compute device."""
    dev = compute_device()
    return {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def sequence_logps(logits: torch.Tensor, batch: dict, temperature: float = 1.0) -> torch.Tensor:
    """sum_t m_t log p(y_t) per row [R] from the vocab-parallel logits [R, S, V/tp] (logits / temperature)."""
    from megatron.core import parallel_state as ps

    lp = token_logprobs(logits, batch["labels"], tp_group=ps.get_tensor_model_parallel_group(),
                        temperature=temperature, loss_mask=batch["loss_mask"])  # [R, S]
    return (lp * batch["loss_mask"]).sum(-1)  # [R]


def score_rows(ddp, microbatches: list, seq_length: int, rows: int, temperature: float = 1.0) -> list:
    """Forward only over ``microbatches`` (eval mode, no grad): per micro-batch the rows' sequence log-probs
    ``float32 [R]`` on the CPU (zeros off the last pipeline stage)."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    def step(data_iterator, model):
        batch = on_device(next(data_iterator))
        logits = model(batch["tokens"], batch["position_ids"], None)

        def collect(output, non_loss_data=True):
            return sequence_logps(output, batch, temperature).detach().float().cpu()

        return logits, collect

    ddp.eval()
    try:
        with torch.no_grad():
            out = get_forward_backward_func()(
                forward_step_func=step, data_iterator=iter(microbatches), model=[ddp],
                num_microbatches=len(microbatches), seq_length=seq_length, micro_batch_size=rows,
                forward_only=True, collect_non_loss_data=True)
    finally:
        ddp.train()
    if ps.is_pipeline_last_stage(ignore_virtual=True):
        return list(out)
    return [torch.zeros(b["tokens"].shape[0]) for b in microbatches]
