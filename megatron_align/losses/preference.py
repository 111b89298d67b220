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

from dataclasses import dataclass

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


PREFERENCE_METRICS = ("groups", "preference_loss", "sft_loss", "chosen_reward", "rejected_reward", "correct",
                      "kl_chosen", "entropy_pf", "kl_pf_pr", "ignored")
"""The sums ``preference_objective`` returns per micro-batch, in this order."""


@dataclass(frozen=True)
class PreferenceSpec:
    """The objective of one run (``model.dpo.*``)."""

    loss: str = "dpo"
    beta: float = 0.2  # ref_policy_kl_penalty
    average_log_probs: bool = False  # preference_average_log_probs
    sft_average_log_probs: bool = False
    gt_reward_scale: float = 1.0
    preference_loss_weight: float = 1.0
    sft_loss_weight: float = 0.0
    beta_pi: float = 0.2  # EXO: f = beta_pi * r
    beta_r: float = 1.0  # EXO: p_R = softmax(R / beta_r)


def _best_and_worst(rewards: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group the row of the largest and of the smallest reward (the first on ties) -> [G], [G]."""
    best, worst = [], []
    for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        best.append(a + int(torch.argmax(rewards[a:b])))
        worst.append(a + int(torch.argmin(rewards[a:b])))
    return torch.tensor(best, device=rewards.device), torch.tensor(worst, device=rewards.device)


def preference_objective(spec: PreferenceSpec, policy: torch.Tensor, reference: torch.Tensor,
                         counts: torch.Tensor, rewards: torch.Tensor, offsets: torch.Tensor,
                         ignored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The total loss per group and the metric sums of one micro-batch.

    policy, reference [M]: sum_t m_t log pi(y_t) per sequence (policy with gradient, reference without);
    counts [M]: response tokens per sequence; rewards [M]: the data's; offsets [G+1]: groups (pairs: chosen
    row first); ignored [G]: over-length groups kept untrained.
    Returns total [G] = preference_loss_weight * L_pref + sft_loss_weight * L_sft, where L_sft is the chosen
    (pairs) or best-rewarded (EXO) completion's negative log-likelihood, and ``PREFERENCE_METRICS`` sums [10]
    (detached). Reward metrics are beta-scaled: beta * r (beta_pi * r for EXO), as NeMo-Aligner's dpo.rst
    defines rewards_chosen_mean (its code logs r unscaled) and as TRL logs rewards/chosen.
    """
    policy, reference = policy.float(), reference.float()
    n = counts.to(policy.dtype).clamp(min=1)  # [M]
    r = policy - reference.detach()  # [M]
    if spec.average_log_probs:
        r = r / n
    exo = spec.loss in EXO_LOSSES
    if exo:
        f = spec.beta_pi * r  # [M]
        pref = exo_loss(spec.loss, f, rewards, offsets, spec.beta_r)  # [G]
        chosen, rejected = _best_and_worst(rewards.float(), offsets)
        scale = spec.beta_pi
    else:
        if bool(((offsets[1:] - offsets[:-1]) != 2).any()):
            raise ValueError(f"preference_loss={spec.loss} scores pairs: every group needs 2 sequences")
        chosen, rejected = offsets[:-1], offsets[:-1] + 1  # [G]
        margin = rewards[chosen].float() - rewards[rejected].float()  # [G]
        pref = pair_loss(spec.loss, r[chosen] - r[rejected], spec.beta, margin, spec.gt_reward_scale)
        scale = spec.beta
    nll = -policy[chosen]  # [G]
    if spec.sft_average_log_probs:
        nll = nll / n[chosen]
    total = spec.preference_loss_weight * pref + spec.sft_loss_weight * nll  # [G]
    with torch.no_grad():
        rd = r.detach()
        if exo:
            logp_f = group_log_softmax(f.detach(), offsets, backend="torch")  # [M]
            seg = segment_ids(offsets, f.numel())
            g = offsets.numel() - 1
            entropy = torch.zeros(g, device=f.device).index_add(0, seg, -logp_f.exp() * logp_f)  # [G]
            log_pr = group_log_softmax(rewards.float() / spec.beta_r, offsets, backend="torch")
            kl_pf_pr = group_kl(logp_f, log_pr, offsets)
            exo_sums = [entropy.sum(), kl_pf_pr.sum()]
        else:
            exo_sums = [torch.zeros((), device=r.device)] * 2
        sums = torch.stack([
            torch.tensor(float(offsets.numel() - 1), device=r.device), pref.detach().sum(),
            nll.detach().sum(),
            scale * rd[chosen].sum(), scale * rd[rejected].sum(), (rd[chosen] > rd[rejected]).float().sum(),
            (policy.detach() - reference)[chosen].sum(), *exo_sums, ignored.float().sum()]).double()
    return total, sums
