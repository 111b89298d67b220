"""log P(a|x,y) as a discretized Gaussian over each attribute's scale: by hand, normalized over the scale,
quality's -3..4 range, unnamed attributes ignored, the nearest value most likely."""

import math

import pytest

from megatron_align.data.steerlm.attributes import STEERLM_ATTRIBUTES
from megatron_align.scoring.attribute_likelihood import attribute_log_likelihood, label_log_likelihood


def _term(a, r, values, sigma):
    num = math.exp(-((a - r) ** 2) / (2 * sigma**2))
    return math.log(num / sum(math.exp(-((v - r) ** 2) / (2 * sigma**2)) for v in values))


def test_matches_hand_computation_and_ignores_unnamed_attributes():
    pred = [3.2, 0.4, 1.0, 2.0, 3.9, 2.5, 4.0, 1.1, 2.2]  # STEERLM_ATTRIBUTES order
    got = label_log_likelihood("quality:4,helpfulness:2", pred, sigma=0.8)
    want = _term(4, 3.2, range(-3, 5), 0.8) + _term(2, 3.9, range(0, 5), 0.8)
    assert got == pytest.approx(want, rel=1e-12)
    assert attribute_log_likelihood({}, pred) == 0.0


def test_normalized_over_the_scale_and_peaked_at_the_nearest_value():
    pred = dict(zip(STEERLM_ATTRIBUTES, [0.0] * 9), verbosity=2.7)
    probs = [math.exp(attribute_log_likelihood({"verbosity": v}, pred, 0.5)) for v in range(5)]
    assert sum(probs) == pytest.approx(1.0, abs=1e-12) and max(range(5), key=probs.__getitem__) == 3
    far = attribute_log_likelihood({"verbosity": 0}, {**pred, "verbosity": 40.0}, 0.5)  # unclamped, finite
    assert math.isfinite(far) and far < -100
    q = [math.exp(attribute_log_likelihood({"quality": v}, pred, 1.0)) for v in range(-3, 5)]
    assert sum(q) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="sigma"):
        attribute_log_likelihood({"quality": 1}, pred, 0.0)
