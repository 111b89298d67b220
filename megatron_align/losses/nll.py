"""Causal-LM negative log-likelihood: plain (every response token counts once) and per-sequence weighted.

- ``nll_loss_func``: SFT's loss, ``sum_{b,t} m_bt * nll_bt / sum_{b,t} m_bt`` over the global batch (the
  per-token cross entropy comes from ``GPTModel(labels=...)``; ``m`` is the loss mask: response tokens).
- ``weighted_sequence_nll``: ``-sum_i c_i log p(y_i) / N`` for sequence coefficients ``c_i`` fixed (no
  gradient through them), ``N`` sequences and ``log p(y_i) = sum_t m_it log p(y_it)``: the policy-gradient
  form of a weighted maximum likelihood, e.g. SteerLM 2.0's ``-sum_i (w'_i - b'_i) grad log Q_theta(y_i|a,x)``
  (Wang et al. 2024, HelpSteer2-Preference, SteerLM 2.0 section), with ``c = w' - b'`` (``losses.steerlm2``).
"""

from __future__ import annotations

import torch

from megatron_align.losses.reduce import megatron_loss


def nll_loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """megatron ``loss_func``: ``output_tensor`` per-token cross entropy ``[B, S]``, ``loss_mask`` ``[B, S]``
    -> (sum over masked tokens, their count, reduced); the divisor is the global token count."""
    mask = loss_mask.to(output_tensor.device, torch.float32)  # [B, S]
    return megatron_loss((output_tensor.float() * mask).sum(), mask.sum())


def weighted_sequence_nll(sequence_logprobs: torch.Tensor, coefficients: torch.Tensor):
    """``-sum_i c_i log p(y_i)`` and the sequence count ``N`` (the divisor): ``sequence_logprobs`` ``[N]``
    (``logprobs.sequence_logprobs`` of the policy, with gradient), ``coefficients`` ``[N]`` (detached here, so
    the gradient is ``-sum_i c_i grad log p(y_i)``)."""
    if sequence_logprobs.shape != coefficients.shape or sequence_logprobs.dim() != 1:
        raise ValueError(f"sequence log-probs {tuple(sequence_logprobs.shape)} and coefficients "
                         f"{tuple(coefficients.shape)} must be one [N] shape")
    c = coefficients.detach().to(sequence_logprobs.device, torch.float32)  # [N]
    total = -(c * sequence_logprobs.float()).sum()
    return total, torch.tensor(float(c.numel()), device=total.device)
