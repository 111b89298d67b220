"""log P(a|x,y): how likely the requested SteerLM attribute values a are, given the values the regression
reward model predicts for response y to prompt x (SteerLM 2.0's attribute model; seed 000).

A discretized Gaussian over each attribute's integer scale V_k (``value_range``: 0..4, quality -3..4), centred
at the reward model's raw prediction r_k, with a shared width sigma, independent across the attributes that a
names:

    log P(a|x,y) = sum_{k in a} [ -(a_k - r_k)^2 / (2 s^2) - log sum_{v in V_k} exp(-(v - r_k)^2 / (2 s^2)) ]

(s = sigma)

Each term is a normalized log-probability over V_k (so it is <= 0 and finite for any prediction), the
prediction is used unclamped (a prediction of 5.3 still ranks 4 above 3), and sigma -> 0 tends to "the
requested value is the one nearest the prediction". Attributes the label does not name do not count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from megatron_align.data.steerlm.attributes import STEERLM_ATTRIBUTES, decode_label, value_range


def attribute_log_likelihood(requested: Mapping[str, int], predicted: Sequence[float] | Mapping[str, float],
                             sigma: float = 1.0) -> float:
    """log P(a|x,y) (module docstring) of ``requested`` values given the reward model's ``predicted`` values
    (nine floats in ``STEERLM_ATTRIBUTES`` order, or a mapping by name)."""
    if not sigma > 0:
        raise ValueError(f"sigma={sigma} must be > 0")
    pred = predicted if isinstance(predicted, Mapping) else dict(zip(STEERLM_ATTRIBUTES, predicted))
    total = 0.0
    for name, a in requested.items():
        r = float(pred[name])
        low, high = value_range(name)
        z = [-((v - r) ** 2) / (2 * sigma * sigma) for v in range(low, high + 1)]
        top = max(z)
        log_norm = top + math.log(sum(math.exp(t - top) for t in z))
        total += -((a - r) ** 2) / (2 * sigma * sigma) - log_norm
    return total


def label_log_likelihood(label: str, predicted: Sequence[float] | Mapping[str, float],
                         sigma: float = 1.0) -> float:
    """``attribute_log_likelihood`` of a label string (``quality:4,toxicity:0``; strict parse)."""
    return attribute_log_likelihood(decode_label(label), predicted, sigma)
