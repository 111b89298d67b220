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

The loss whose gradient is that estimator, per group g of n_g responses (``steerlm2_loss``):

    L_g = -(1 / N_g) sum_{i in g} (w'_i - b'_i) log Q_theta(y_i|a,x),   log Q_theta(y) = sum_t log Q(y_t|.)

with N_g = the group's mean response length in tokens (``normalization="group_mean"``, NeMo-Aligner's
choice: its loss divides each prompt's sum by the mean length of its responses, so a learning rate tuned there
carries over) or N_g = 1 (``"none"``, the estimator as the paper writes it); the trainer averages L_g over the
prompts of the global batch. Groups may have different n (n = 1 contributes 0: w' = b' = 1).
``weight_stats`` gives the entropy and the effective sample size 1 / sum_i w'_i^2 of each group's w'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_align.kernels.group_softmax import group_kl, group_log_softmax, segment_ids

__all__ = ["LENGTH_NORMALIZATIONS", "SteerLM2Weights", "row_coefficients", "steerlm2_loss",
           "steerlm2_weights", "weight_stats"]

LENGTH_NORMALIZATIONS = ("group_mean", "none")
"""``normalization`` values of ``steerlm2_loss`` (module docstring)."""


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


def row_coefficients(coefficients: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor,
                     normalization: str = "group_mean") -> torch.Tensor:
    """(w'_i - b'_i) / N_g per response [M] (module docstring), detached: the loss of response i is
    ``-row_coefficient_i * log Q_theta(y_i)``, so a group's responses may lie in different micro-batches."""
    if normalization not in LENGTH_NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r}: use one of {', '.join(LENGTH_NORMALIZATIONS)}")
    if coefficients.dim() != 1 or lengths.shape != coefficients.shape:
        raise ValueError(f"coefficients and lengths must be one [M] shape, got {tuple(coefficients.shape)} "
                         f"and {tuple(lengths.shape)}")
    c = coefficients.detach()
    if normalization == "none":
        return c
    dtype, m, g = c.dtype, c.numel(), offsets.numel() - 1
    seg = segment_ids(offsets, m)  # [M]
    sizes = (offsets[1:] - offsets[:-1]).to(dtype).clamp(min=1)  # [G]
    tokens = torch.zeros(g, dtype=dtype, device=c.device).index_add(0, seg, lengths.to(dtype))  # [G]
    return c / (tokens / sizes).clamp(min=1)[seg]  # / N_g


def steerlm2_loss(log_q_theta: torch.Tensor, coefficients: torch.Tensor, offsets: torch.Tensor,
                  lengths: torch.Tensor, normalization: str = "group_mean") -> torch.Tensor:
    """L_g per group [G] (module docstring), in ``log_q_theta``'s dtype (float64 stays float64).

    log_q_theta:  [M] sum_t log Q_theta(y_it|a,x) per response, with gradient
    coefficients: [M] w' - b' (``SteerLM2Weights.weights``), used as constants
    offsets:      [G+1] int64 cu_seqlens of the groups
    lengths:      [M] response tokens per response (the terms of log Q_theta)
    """
    if log_q_theta.shape != coefficients.shape:
        raise ValueError(f"log_q_theta {tuple(log_q_theta.shape)} and coefficients "
                         f"{tuple(coefficients.shape)} must be one [M] shape")
    rc = row_coefficients(coefficients.to(log_q_theta.dtype), offsets, lengths, normalization)  # [M]
    seg = segment_ids(offsets, log_q_theta.numel())
    g = offsets.numel() - 1
    return torch.zeros(g, dtype=log_q_theta.dtype, device=log_q_theta.device).index_add(
        0, seg, -rc * log_q_theta)  # [G]


@torch.no_grad()
def weight_stats(log_w: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(entropy [G], effective sample size [G]) of normalized log-weights [M] per group: -sum w log w
    (0 log 0 = 0) and 1 / sum w^2 (between 1 and n)."""
    w = log_w.exp()
    seg = segment_ids(offsets, log_w.numel())
    g = offsets.numel() - 1
    terms = torch.where(w > 0, -w * log_w, torch.zeros_like(w))
    entropy = torch.zeros(g, dtype=w.dtype, device=w.device).index_add(0, seg, terms)
    sq = torch.zeros(g, dtype=w.dtype, device=w.device).index_add(0, seg, w * w)
    return entropy, 1.0 / sq.clamp(min=torch.finfo(w.dtype).tiny)
