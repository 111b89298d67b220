"""What the offline reward labeler does with scored samples (seed 003's ``processor``), written once.

Samples are ``{input_key: prompt, output_key: response, ...}`` records in file order, each with one scalar
reward (after the reward scalarization and standardization the labeler applies first):

- ``rs`` (Rejection Sampling, Touvron et al. 2023, Sec. 3.2.3: best of N): per distinct input, the sample with
  the highest reward; ties go to the first in file order; the groups come out in the order of their inputs'
  first appearance.
- ``rest`` (ReST, Gulcehre et al. 2023, Sec. 2, the Improve step's filter): every sample whose reward is
  strictly above ``threshold``, in file order.
- ``dt`` (Decision Transformer / reward-conditioned SFT, Chen et al. 2021; the seed's "Offline Decision
  Transformer"): every sample, the input rewritten as ``reward_template.format(input=..., reward="%.1f")``.
- ``null``: every sample, unchanged, with its reward.

Output records keep the sample's other fields; ``reward`` (the value the processor used) is added when
``export_reward`` is on, and always for ``null``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional


def reward_text(reward: float) -> str:
    """The reward as the Decision Transformer template shows it: one decimal (Python's ``%.1f``: an exact tie
    rounds to even, 0.25 -> 0.2; ``-0.0`` is written ``0.0``)."""
    text = f"{reward:.1f}"
    return "0.0" if text == "-0.0" else text


def sample_stats(rewards: Sequence[float]) -> tuple[float, float]:
    """``(mean, std)`` of ``rewards``: the sample std (N - 1, as NeMo-Aligner's labeler computes it); 1.0 for
    a single reward or equal ones (NeMo-Aligner would divide by 0 there)."""
    mean = math.fsum(rewards) / len(rewards)
    var = math.fsum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1) if len(rewards) > 1 else 0.0
    return mean, (math.sqrt(var) if var > 0 else 1.0)


def scalar_rewards(rows: Sequence[Sequence[float]], attribute: Optional[int] = None,
                   weights: Optional[Sequence[float]] = None) -> list[float]:
    """One reward per sample from the reward model's ``[B, A]`` outputs: the only one (A = 1), attribute
    ``attribute``, or ``sum_a weights[a] * r_a``."""
    width = len(rows[0]) if rows else 0
    if weights is not None:
        if len(weights) != width:
            raise ValueError(f"reward_weights: {len(weights)} weights for a reward model of {width} "
                             "attributes")
        return [math.fsum(w * r for w, r in zip(weights, row)) for row in rows]
    if attribute is None:
        if width > 1:
            raise ValueError(f"the reward model has {width} attributes: set reward_attribute or "
                             "reward_weights")
        attribute = 0
    if not 0 <= attribute < max(width, 1):
        raise ValueError(f"reward_attribute={attribute}: the reward model has {width} attributes")
    return [float(row[attribute]) for row in rows]


def standardized(rewards: Sequence[float], mean: Optional[float], std: Optional[float]
                 ) -> tuple[list[float], float, float]:
    """``(r - mean) / std`` of every reward (``scoring/standardize.Standardization``), a null mean or std
    taken from ``rewards`` themselves (``sample_stats``); returns the values and the mean and std used."""
    from megatron_align.scoring.standardize import Standardization

    if mean is None or std is None:
        m, s = sample_stats(rewards)
        mean = m if mean is None else mean
        std = s if std is None else std
    values = Standardization((float(mean),), (float(std),)).apply([[r] for r in rewards])
    return [v[0] for v in values], float(mean), float(std)


def process(samples: Sequence[dict], rewards: Sequence[float], processor: str, *, input_key: str = "input",
            threshold: float = 0.0, reward_template: str = "{input} <rm_score>: {reward} ",
            export_reward: bool = False) -> list[dict]:
    """The records ``processor`` keeps (module docstring), in output order."""
    if len(samples) != len(rewards):
        raise ValueError(f"{len(samples)} samples but {len(rewards)} rewards")

    def out(rec: dict, reward: float, **changes) -> dict:
        row = {**rec, **changes}
        if export_reward or processor == "null":
            row["reward"] = reward
        return row

    if processor == "rs":
        best: dict[str, int] = {}  # input -> index of its best sample so far (first on ties)
        for i, rec in enumerate(samples):
            j: Optional[int] = best.get(rec[input_key])
            if j is None or rewards[i] > rewards[j]:
                best[rec[input_key]] = i
        return [out(samples[i], rewards[i]) for i in best.values()]  # dicts keep first-insertion order
    if processor == "rest":
        return [out(rec, r) for rec, r in zip(samples, rewards) if r > threshold]
    if processor == "dt":
        fill = reward_template.format
        return [out(rec, r, **{input_key: fill(input=rec[input_key], reward=reward_text(r))})
                for rec, r in zip(samples, rewards)]
    if processor == "null":
        return [out(rec, r) for rec, r in zip(samples, rewards)]
    raise ValueError(f"processor={processor!r}: use rs | rest | dt | null")
