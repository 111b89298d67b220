"""SteerLM attributes: their names and order, and the label string ``quality:4,toxicity:0,...``.

The nine attributes, in NeMo-Aligner's order (``ALL_STEERLM_ATTRIBUTES`` there; the regression reward model's
output ``i`` is attribute ``i``)::

    quality, toxicity, humor, creativity,                          <- OpenAssistant (OASST) labels
    helpfulness, correctness, coherence, complexity, verbosity     <- HelpSteer / HelpSteer2 ratings

Values are integers on a 0..4 Likert scale, with one exception: HelpSteer2-Preference data (``-pref``) stores
the preference strength of a response pair (-3..3, negative: the first response is better) in ``quality``, so
``quality`` accepts -3..4.

A label string lists ``name:value`` pairs joined by ``,`` (no spaces), in the order above, each attribute at
most once; an attribute a dataset does not rate is left out. In the regression format an absent attribute is
``-100.0`` (``MISSING``), the value the regression loss masks out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from megatron_align.config.stages.steerlm import (  # noqa: F401 - the names live in the torch-free config
    HELPSTEER_ATTRIBUTES,
    OASST_ATTRIBUTES,
    STEERLM_ATTRIBUTES,
)

MISSING = -100.0
"""Regression label of an attribute the row does not rate (the loss's mask value)."""
LIKERT_MAX = 4
"""Highest value on the 0..4 scale."""
PREFERENCE_STRENGTH = (-3, 3)
"""Range of HelpSteer2-Preference's ``preference_strength``, written as ``quality``."""

_INT = re.compile(r"[+-]?[0-9]+")


class LabelError(ValueError):
    """A malformed label string or attribute value; the message says what is wrong, in one line."""


def value_range(name: str) -> tuple[int, int]:
    """The allowed integer values of attribute ``name`` (inclusive)."""
    if name not in STEERLM_ATTRIBUTES:
        raise LabelError(f"unknown attribute {name!r} (expected one of {', '.join(STEERLM_ATTRIBUTES)})")
    low = PREFERENCE_STRENGTH[0] if name == "quality" else 0
    return low, LIKERT_MAX


def check_value(name: str, value: object) -> int:
    """``value`` if it is an allowed integer for attribute ``name``, else ``LabelError``."""
    low, high = value_range(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise LabelError(f"{name}: expected an integer {low}..{high}, got {value!r}")
    if not low <= value <= high:
        raise LabelError(f"{name}: value {value} is out of range {low}..{high}")
    return value


def encode_label(values: Mapping[str, int]) -> str:
    """``{"helpfulness": 3, "quality": 4}`` -> ``"quality:4,helpfulness:3"`` (canonical order).

    ``{}`` -> ``""``, as NeMo-Aligner writes an OASST message whose labels hold none of the four."""
    for name, value in values.items():
        check_value(name, value)
    return ",".join(f"{name}:{values[name]}" for name in STEERLM_ATTRIBUTES if name in values)


def label_pairs(text: str, strip: bool = False) -> list[tuple[str, str]]:
    """``"quality:4,toxicity:0"`` -> ``[("quality", "4"), ("toxicity", "0")]``: the one splitter of label
    strings (a label line, a ``--values`` argument). ``strip`` allows spaces around names and values (what a
    user types); a label written into data has none."""
    pairs = []
    for item in text.split(","):
        name, sep, raw = item.partition(":")
        if strip:
            name, raw = name.strip(), raw.strip()
        if not item.strip():
            raise LabelError(f"{text!r}: empty item (write name:value pairs joined by commas, e.g. "
                             "quality:4,humor:0)")
        if not sep:
            raise LabelError(f"{item.strip()!r} is not name:value (a label reads quality:4,toxicity:0,...)")
        pairs.append((name, raw))
    return pairs


def check_values(pairs, value_range_of=None) -> dict[str, int]:
    """``[(name, value), ...]`` -> ``{name: int}``: every name known (all unknown ones named at once), none
    twice, every value an integer (an integer string counts) in ``value_range_of(name)`` (default:
    ``value_range``, the data's ranges)."""
    value_range_of = value_range_of or value_range
    unknown = [str(name) for name, _ in pairs if name not in STEERLM_ATTRIBUTES]
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        raise LabelError(f"unknown attribute{'s' if len(unknown) > 1 else ''} {names} (expected one of "
                         f"{', '.join(STEERLM_ATTRIBUTES)})")
    values: dict[str, int] = {}
    for name, value in pairs:
        if name in values:
            raise LabelError(f"attribute {name!r} appears twice")
        if isinstance(value, str) and _INT.fullmatch(value):
            value = int(value)
        low, high = value_range_of(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise LabelError(f"{name}: {value!r} is not an integer (values are integers {low}..{high})")
        if not low <= value <= high:
            raise LabelError(f"{name}: value {value} is out of range {low}..{high}")
        values[name] = value
    return values


def decode_label(text: str) -> dict[str, int]:
    """Parse ``"quality:4,toxicity:0"`` into ``{"quality": 4, "toxicity": 0}``, validating every pair.

    Stricter than NeMo-Aligner's parser, which ignores unknown names and accepts any number: an unknown or
    repeated attribute, a non-integer or an out-of-range value is a ``LabelError`` here.
    """
    if not isinstance(text, str):
        raise LabelError(f"expected a label string, got {type(text).__name__}")
    if not text:
        raise LabelError("empty label (expected name:value pairs such as quality:4,toxicity:0)")
    return check_values(label_pairs(text))


def label_vector(text: str) -> list[float]:
    """The regression label of a label string: nine floats in ``STEERLM_ATTRIBUTES`` order, ``MISSING``
    (-100.0) for an attribute the string does not give."""
    values = decode_label(text)
    return [float(values[name]) if name in values else MISSING for name in STEERLM_ATTRIBUTES]
