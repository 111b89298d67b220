"""SteerLM 2.0 normalized importance weights over each prompt's group of sampled responses.

SteerLM 2.0 (Wang et al. 2024, "HelpSteer2-Preference", SteerLM 2.0 section) samples n responses y_i per
prompt x and attributes a from Q'(y|a,x) and follows the gradient

    grad L ~= -sum_{y_i ~ Q'(y|a,x)} (w'_i - b'_i) grad log Q_theta(y_i|a,x)

with the self-normalized importance weights, each a softmax over the prompt's n responses:

    w'_i = softmax_i( log P(a|x,y_i) + log P(y_i|x) - log Q'(y_i|a,x) )
    b'_i = softmax_i( log Q_theta(y_i|a,x) - log Q'(y_i|a,x) )

``w' - b'`` multiplies grad log Q_theta as a constant, so everything here is computed without autograd.
KL(w' || b') per group is the logged distance between the target and the current policy. Responses of all
prompts lie in one flat batch [M]; ``offsets [G+1]`` (cu_seqlens) mark the groups, as in
``kernels.group_softmax``, whose ``group_log_softmax`` / ``group_kl`` do the work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_align.kernels.group_softmax import group_kl, group_log_softmax

__all__ = ["SteerLM2Weights", "steerlm2_weights"]


@dataclass
class SteerLM2Weights:
    """Per-response and per-group quantities of SteerLM 2.0's gradient estimator (all detached, fp32)."""

    weights: torch.Tensor  # [M] w' - b': the coefficient of grad log Q_theta(y_i|a,x) (sums to 0 per group)
    w_prime: torch.Tensor  # [M] target weights w'
    b_prime: torch.Tensor  # [M] baseline weights b' (the current policy's normalized weights)
    log_w_prime: torch.Tensor  # [M] log w'
    log_b_prime: torch.Tensor  # [M] log b'
    kl: torch.Tensor  # [G] KL(w' || b') per group

    @property
    def kl_mean(self) -> torch.Tensor:
        """Mean KL(w' || b') over groups, a 0-d tensor for logging (no host sync)."""
        return self.kl.mean()


@torch.no_grad()
def steerlm2_weights(log_p_a_given_xy: torch.Tensor, log_p_y_given_x: torch.Tensor,
                     log_q_prime: torch.Tensor, log_q_theta: torch.Tensor, offsets: torch.Tensor, *,
                     backend: str = "auto", validate: bool = True) -> SteerLM2Weights:
    """SteerLM 2.0 weights for M responses packed in groups (one group per prompt).

    log_p_a_given_xy: [M] log P(a|x,y_i), the attribute model's log-likelihood of the target attributes
    log_p_y_given_x:  [M] log P(y_i|x), the (reference) policy's sequence log-prob without attributes
    log_q_prime:      [M] log Q'(y_i|a,x), the sampling policy's sequence log-prob
    log_q_theta:      [M] log Q_theta(y_i|a,x), the policy being trained (detached here)
    offsets:          [G+1] int64 cu_seqlens of the groups
    """
    inputs = (log_p_a_given_xy, log_p_y_given_x, log_q_prime, log_q_theta)
    if any(t.dim() != 1 or t.shape != log_q_theta.shape for t in inputs):
        raise ValueError(f"all log-probs must be [M] of one shape, got {[tuple(t.shape) for t in inputs]}")
    p_ay, p_y, q_prime, q_theta = (t.detach().float() for t in inputs)  # [M] each
    log_w = group_log_softmax(p_ay + p_y - q_prime, offsets, backend=backend, validate=validate)  # [M] log w'
    log_b = group_log_softmax(q_theta - q_prime, offsets, backend=backend, validate=False)  # [M] log b'
    w, b = log_w.exp(), log_b.exp()
    return SteerLM2Weights(weights=w - b, w_prime=w, b_prime=b, log_w_prime=log_w, log_b_prime=log_b,
                           kl=group_kl(log_w, log_b, offsets))
