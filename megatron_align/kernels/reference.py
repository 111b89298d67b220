"""Plain torch references for the kernels, used only by tests (and benchmarks as the "naive" method).

Straight from the definitions, materializing everything: log_softmax over the full vocabulary, gather, entropy
as -sum p log p, group softmax per group. Never used on a training path.
"""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0,
                   ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and entropy per token from full-vocabulary logits.

    logits: [..., V] any float dtype (computed in fp32); target: [...] int64
    returns (logprobs [...] fp32, entropy [...] fp32); both 0 where target == ignore_index.
    """
    z = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature  # [..., V], fp32 or fp64
    logp_all = torch.log_softmax(z, dim=-1)
    keep = target != ignore_index
    safe = torch.where(keep, target, torch.zeros_like(target))
    logp = logp_all.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    ent = -(logp_all.exp() * logp_all).sum(-1)
    zero = torch.zeros_like(logp)
    return torch.where(keep, logp, zero), torch.where(keep, ent, zero)


def fused_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                         temperature: float = 1.0, ignore_index: int = -100,
                         bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for the fused LM head: logits = hidden @ weight.T (+ bias) in fp32, then token_logprobs.

    hidden: [N, H]; weight: [V, H] (full vocabulary); target: [N]
    """
    logits = hidden.float() @ weight.float().t()  # [N, V]
    if bias is not None:
        logits = logits + bias.float()
    return token_logprobs(logits, target, temperature, ignore_index)
