"""Reward standardization, written once: ``(r - mean) / std`` per attribute.

The reward server applies it when ``model.reward_standardization.enable=True`` (NeMo-Aligner's key; the
offline reward labeler of seed 003 standardizes the same way), and the in-process ``RewardScorer`` when given
a mean and std, so that a served and an in-process score of one text agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from megatron_align.config.errors import ConfigError


@dataclass(frozen=True)
class Standardization:
    """Per-attribute ``mean[A]`` and ``std[A]`` (every std > 0)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or min(self.std, default=1.0) <= 0:
            raise ValueError(f"mean/std: one value per attribute each, std > 0 (got {len(self.mean)} means, "
                             f"{len(self.std)} stds)")

    def apply(self, rows: Sequence[Sequence[float]]) -> list[list[float]]:
        """``rows`` ``[B, A]`` -> ``(r - mean) / std`` per attribute."""
        return [[(r - m) / s for r, m, s in zip(row, self.mean, self.std)] for row in rows]


def standardization_of(cfg: Any, num_attributes: int,
                       prefix: str = "model.reward_standardization") -> Optional[Standardization]:
    """From ``model.reward_standardization`` (``enable``, ``mean``, ``std``; keys named under ``prefix``): a
    ``Standardization`` when enabled, else None; a one-line error for a wrong shape or a std <= 0."""
    if not cfg.enable:
        return None
    out = []
    for name in ("mean", "std"):
        value = getattr(cfg, name)
        key = f"{prefix}.{name}"
        if value is None:
            raise ConfigError(f"{key} is not set but reward_standardization.enable=True", key=key)
        values = list(value) if isinstance(value, (list, tuple)) else [value] * num_attributes
        if len(values) != num_attributes or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"{key}={value!r}: give one number, or a list of {num_attributes} numbers (one "
                              "per reward attribute)", key=key)
        if name == "std" and any(v <= 0 for v in values):
            raise ConfigError(f"{key}={value!r}: standard deviations must be > 0", key=key)
        out.append([float(v) for v in values])
    return Standardization(tuple(out[0]), tuple(out[1]))
