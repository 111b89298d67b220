"""The one entry point alignment losses use for per-token log-probs of chosen tokens.

Every loss here (DPO family, EXO, SteerLM 2.0, self-rewarding, reward-weighted SFT) starts from
log p(y_t | y_<t) under a vocab-parallel output layer. This module adapts shapes and masks and dispatches to
``kernels``:

- ``token_logprobs``: from the logits a megatron ``GPTModel`` returns (``[B, S, V/tp]``, or ``[S, B, V/tp]``
  with ``sequence_first=True``), never materializing a softmax (kernels/vocab_parallel_logprobs.py);
- ``fused_lm_head_logprobs``: from the final hidden states and the output weight, never materializing the
  logits (kernels/fused_linear_logprobs.py);
- ``group_log_softmax`` / ``group_kl``: softmax over ragged groups of responses (SteerLM 2.0's importance
  weights, EXO's K-sample distributions; kernels/group_softmax.py).

Backends: CUDA tensors use the compiled Triton kernels, CPU tensors a memory-light chunked torch path (same
algorithm); ``backend="triton"`` on CPU runs the kernels through Triton's interpreter (tests). Process groups
are arguments: nothing here reads megatron's global parallel state (pass ``tp_group=
parallel_state.get_tensor_model_parallel_group()`` from the caller).
"""

from __future__ import annotations

from typing import Optional

import torch

from megatron_align.kernels import _cpu_pages
from megatron_align.kernels.fused_linear_logprobs import fused_linear_logprobs
from megatron_align.kernels.group_softmax import group_kl, group_log_softmax, group_sizes_to_offsets
from megatron_align.kernels.vocab_parallel_logprobs import vocab_parallel_logprobs

__all__ = ["token_logprobs", "fused_lm_head_logprobs", "sequence_logprobs", "group_log_softmax", "group_kl",
           "group_sizes_to_offsets", "release_cpu_gradient_cache"]


def release_cpu_gradient_cache() -> int:
    """Free the CPU logits-gradient blocks that ``token_logprobs`` keeps for its next backward (only when no
    gradient uses them); returns the bytes freed. See kernels/_cpu_pages.py; GPUs never use this cache."""
    return _cpu_pages.release_cached()


def _flat_target(x: torch.Tensor, target: torch.Tensor, loss_mask: Optional[torch.Tensor], ignore_index: int,
                 sequence_first: bool) -> tuple[torch.Tensor, torch.Size]:
    """Target ids flattened in ``x``'s row order ([N]), with masked positions set to ignore_index, and the
    leading shape of ``x`` (``[S, B]`` when sequence_first)."""
    if loss_mask is not None:
        if loss_mask.shape != target.shape:
            raise ValueError(f"loss_mask {tuple(loss_mask.shape)} must match target {tuple(target.shape)}")
        target = torch.where(loss_mask.bool(), target, torch.full_like(target, ignore_index))
    if sequence_first:
        if x.dim() != 3:
            raise ValueError("sequence_first=True expects a [S, B, *] input")
        target = target.t()  # [B, S] -> [S, B], the input's layout
    if x.shape[:-1] != target.shape:
        raise ValueError(f"input {tuple(x.shape)} and target {tuple(target.shape)} disagree "
                         f"(sequence_first={sequence_first})")
    return target.reshape(-1), target.shape


def _shaped(logp, ent, lead, sequence_first: bool, return_entropy: bool):
    """[N] results back to [B, S] (transposing megatron's [S, B])."""
    outs = [t.view(lead).t() if sequence_first else t.view(lead) for t in (logp, ent) if t is not None]
    return tuple(outs) if return_entropy else outs[0]


def token_logprobs(logits: torch.Tensor, target: torch.Tensor, *, tp_group=None, temperature: float = 1.0,
                   ignore_index: int = -100, loss_mask: Optional[torch.Tensor] = None,
                   return_entropy: bool = False, sequence_first: bool = False, backend: str = "auto",
                   block: Optional[int] = None, inplace_backward: bool = False):
    """log p(target) per token from vocab-parallel logits.

    logits: [B, S, V/tp] (or [S, B, V/tp] with sequence_first=True; or [N, V/tp]), fp32/bf16/fp16
    target: [B, S] (or [N]) global token ids; positions equal to ignore_index, or where loss_mask == 0, give 0
            and no gradient
    inplace_backward: the logits' gradient is written over the logits (no second [tokens, V/tp] tensor);
            forward never modifies them. Use when the logits are not needed after the backward pass.
    returns logprobs [B, S] fp32, or (logprobs, entropy) when return_entropy
    """
    flat_t, lead = _flat_target(logits, target, loss_mask, ignore_index, sequence_first)
    logp, ent = vocab_parallel_logprobs(logits.reshape(-1, logits.shape[-1]), flat_t, group=tp_group,
                                        temperature=temperature, ignore_index=ignore_index,
                                        return_entropy=return_entropy, backend=backend, block=block,
                                        inplace_backward=inplace_backward)
    return _shaped(logp, ent, lead, sequence_first, return_entropy)


def fused_lm_head_logprobs(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, *,
                           bias: Optional[torch.Tensor] = None, tp_group=None, temperature: float = 1.0,
                           ignore_index: int = -100, loss_mask: Optional[torch.Tensor] = None,
                           return_entropy: bool = False, sequence_first: bool = False, backend: str = "auto",
                           accumulate_into_main_grad: bool = False, **chunks):
    """log p(target) per token straight from the final hidden states and the (vocab-parallel) output weight;
    the ``[tokens, V]`` logits never exist, forward or backward.

    hidden: [B, S, H] (or [S, B, H] with sequence_first=True, megatron's layout; or [N, H]), replicated over
            the TP group (gather sequence-parallel activations first)
    weight: [V/tp, H], this rank's rows of the output layer (``model.output_layer.weight``, or the embedding
            weight when tied); bias: [V/tp] or None
    target: [B, S] (or [N]) global ids; ignore_index / loss_mask == 0 positions give 0 and no gradient
    accumulate_into_main_grad: add the weight's gradient to ``weight.main_grad`` (megatron DDP's buffer)
            instead of allocating it, as megatron's gradient accumulation fusion does
    chunks: ``chunk_n``, ``chunk_v``, ``blocks``, ``num_splits`` tuning knobs of kernels.fused_linear_logprobs
    returns logprobs [B, S] fp32, or (logprobs, entropy)
    """
    flat_t, lead = _flat_target(hidden, target, loss_mask, ignore_index, sequence_first)
    logp, ent = fused_linear_logprobs(hidden.reshape(-1, hidden.shape[-1]), weight, flat_t, group=tp_group,
                                      bias=bias, temperature=temperature, ignore_index=ignore_index,
                                      return_entropy=return_entropy, backend=backend,
                                      accumulate_into_main_grad=accumulate_into_main_grad, **chunks)
    return _shaped(logp, ent, lead, sequence_first, return_entropy)


def sequence_logprobs(token_lp: torch.Tensor, loss_mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Sum (or mean) of per-token log-probs over each sequence's response tokens.

    token_lp: [B, S] fp32; loss_mask: [B, S] (1 on response tokens) -> [B]
    """
    mask = loss_mask.to(token_lp.dtype)
    total = (token_lp * mask).sum(-1)
    return total / mask.sum(-1).clamp_min(1.0) if average else total
