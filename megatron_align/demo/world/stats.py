"""Spearman's rank correlation, for the demo's steering table (requested vs measured attribute values).

Spearman (1904): Pearson's correlation of the ranks, ties given their average rank,
``rho = cov(rank(x), rank(y)) / (std(rank(x)) * std(rank(y)))``; NaN when either side is constant.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks of ``values``, tied values sharing the mean of their ranks."""
    x = np.asarray(values, dtype=np.float64)  # [N]
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)  # [U] rank sum per distinct value
    return (sums / counts)[inverse]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho of paired samples ``x``, ``y`` (NaN when fewer than 2 or either is constant)."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} x values but {len(y)} y values")
    if len(x) < 2:
        return float("nan")
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(np.sqrt((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")
