"""Preference losses, pure: the DPO family (NeMo-Aligner's ``model.dpo.preference_loss`` values, seed 002) and
EXO (Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model Alignment", arXiv 2402.00856;
seed 004). Sources and the exact reductions of both code bases: docs/preference_research.md, section A.

Notation, per sequence (a pair's chosen / rejected response, or one of a prompt's K completions):
    r = sum_t m_t (log pi(y_t) - log pi_ref(y_t))     (``sequence_log_ratio``; / sum_t m_t with average)
    delta = r_chosen - r_rejected,  beta = ref_policy_kl_penalty,
    g = gt_reward_scale * (R_chosen - R_rejected)

Per pair (``pair_loss``, [B]):
    dpo         -log sigma(beta delta)                                  Rafailov et al. 2023, eq. 7
    ipo         (delta - 1 / (2 beta))^2                                Azar et al. 2023 (IPO), eq. 17
    rpo_sq      (beta delta - g)^2                                      Nemotron-4 340B report (RPO)
    rpo_bwd_kl  KL(Bern(sigma(g)) || Bern(sigma(beta delta)))
    rpo_fwd_kl  KL(Bern(sigma(beta delta)) || Bern(sigma(g)))
    scale       |R_chosen - R_rejected| * (-log sigma(beta delta)), per pair at any micro-batch size
                (NeMo-Aligner's self-rewarding branch multiplies an already-averaged loss: right only at
                micro-batch 1)
EXO, per group of K completions of one prompt (``exo_loss``, [G]), f_i = beta_pi * r_i (the log-probs of
policy and reference taken with their logits divided by ``temp``), p_f = softmax_K(f),
p_R = softmax_K(R / beta_r):
    exo-rw      KL(p_f || p_R) = sum_i p_f(i) (log p_f(i) - log p_R(i))     Ji et al. 2024, the EXO objective
    dpo-rw      -sum_i p_R(i) log p_f(i)                              (forward KL up to a constant)
    exo-pref    K = 2; the target's log-probabilities are 0 for the preferred completion and -10 for the
                other, unnormalised, as the EXO repository's src/align_stage/loss.py writes them (a reward tie
                prefers the second)
    dpo-pref    -sum_i R_i log p_f(i) with the data's rewards as weights; at K = 2 with rewards (1, 0) this is
                dpo with beta = beta_pi
Groups are ragged (K may differ between prompts): completions of all prompts lie in one flat batch [M] and
``offsets [G+1]`` (cu_seqlens) mark the groups, as in ``kernels.group_softmax``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megatron_align.config.stages.dpo import EXO_LOSSES, PAIR_LOSSES
from megatron_align.kernels.group_softmax import group_kl, group_log_softmax, segment_ids

EXO_PREF_LOG_EPSILON = -10.0
"""The EXO repository's log-probability of the non-preferred completion in the preference target."""


def sequence_log_ratio(policy_logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor,
                       average: bool = False) -> torch.Tensor:
    """r per sequence: policy_logps, ref_logps [N, T] per-token log-probs, mask [N, T] (response tokens)
    -> [N]; the mean over the response's tokens with ``average`` (an empty response gives 0, not NaN)."""
    m = mask.to(policy_logps.dtype)  # [N, T]
    total = ((policy_logps - ref_logps) * m).sum(-1)  # [N]
    return total / m.sum(-1).clamp(min=1) if average else total


def _bernoulli_kl(logit_p: torch.Tensor, logit_q: torch.Tensor) -> torch.Tensor:
    """KL(Bern(sigma(logit_p)) || Bern(sigma(logit_q))), elementwise, through logsigmoid (stable)."""
    lp, lq = F.logsigmoid(logit_p), F.logsigmoid(logit_q)  # log p, log q
    lnp, lnq = F.logsigmoid(-logit_p), F.logsigmoid(-logit_q)  # log (1 - p), log (1 - q)
    return lp.exp() * (lp - lq) + lnp.exp() * (lnp - lnq)


def pair_loss(kind: str, delta: torch.Tensor, beta: float, reward_margin: torch.Tensor | None = None,
              gt_reward_scale: float = 1.0) -> torch.Tensor:
    """Per-pair loss [B] of ``kind`` (module docstring); ``delta`` [B]; ``reward_margin`` [B] is
    R_chosen - R_rejected from the data (needed by rpo_* and scale)."""
    if kind not in PAIR_LOSSES:
        raise ValueError(f"preference_loss={kind!r}: use one of {', '.join(PAIR_LOSSES + EXO_LOSSES)}")
    z = beta * delta  # [B]
    if kind == "dpo":
        return -F.logsigmoid(z)
    if kind == "ipo":
        return (delta - 1.0 / (2.0 * beta)) ** 2
    if reward_margin is None:
        raise ValueError(f"preference_loss={kind}: needs the pairs' rewards (chosen_reward / "
                         "rejected_reward)")
    g = gt_reward_scale * reward_margin.to(delta.dtype)  # [B]
    if kind == "rpo_sq":
        return (z - g) ** 2
    if kind == "rpo_bwd_kl":
        return _bernoulli_kl(g, z)
    if kind == "rpo_fwd_kl":
        return _bernoulli_kl(z, g)
    return reward_margin.to(delta.dtype).abs() * -F.logsigmoid(z)  # scale


def exo_loss(kind: str, f: torch.Tensor, rewards: torch.Tensor, offsets: torch.Tensor,
             beta_r: float = 1.0) -> torch.Tensor:
    """Per-group loss [G] of ``kind`` (module docstring); f [M] = beta_pi * r, rewards [M], offsets [G+1]."""
    if kind not in EXO_LOSSES:
        raise ValueError(f"preference_loss={kind!r}: use one of {', '.join(PAIR_LOSSES + EXO_LOSSES)}")
    logp_f = group_log_softmax(f, offsets, backend="torch")  # [M] fp32
    rewards = rewards.float()
    sizes = offsets[1:] - offsets[:-1]  # [G]
    if kind == "exo-pref" and bool((sizes != 2).any()):
        raise ValueError("exo-pref compares two completions per prompt: num_contrastive must be 2")
    if kind == "exo-rw":
        return group_kl(logp_f, group_log_softmax(rewards / beta_r, offsets, backend="torch"), offsets)
    seg = segment_ids(offsets, f.numel())  # [M]
    g = offsets.numel() - 1
    if kind == "dpo-rw":
        p_r = group_log_softmax(rewards / beta_r, offsets, backend="torch").exp()  # [M]
        return torch.zeros(g, device=f.device).index_add(0, seg, -p_r * logp_f)
    if kind == "dpo-pref":
        return torch.zeros(g, device=f.device).index_add(0, seg, -rewards * logp_f)
    # exo-pref: the first of a pair is preferred when its reward is strictly larger, else the second
    first, second = offsets[:-1], offsets[:-1] + 1  # [G]
    prefer_first = rewards[first] > rewards[second]  # [G]
    log_q = torch.full_like(logp_f, EXO_PREF_LOG_EPSILON)  # [M]
    log_q[torch.where(prefer_first, first, second)] = 0.0
    return group_kl(logp_f, log_q, offsets)
