"""Steering evaluation of the SteerLM demo: does the model do what the label line asks?

For every attribute ``a`` and requested value ``v`` in 0..4 (the other eight held at ``base`` values, the
seed's ``DEFAULT_VALUES`` unless given), each held-out question is answered from the steering prompt
(``steer.steer_prompt``), and the answer is rated by the demo's rules (``measure_attributes``) - the same
rules that labelled the training data, so "measured" is what a human annotator of the demo would say.

Per attribute the score is Spearman's rank correlation between requested and measured values over all
(question, value) pairs (``stats.spearman``; NaN when the measured values never change). ``steering_table``
writes the markdown table (Spearman, mean measured value at each requested value, the reward model's held-out
MAE next to the MAE of always predicting the training mean), ``plot_steering`` the PNG: one panel per
attribute, requested vs measured, with the ideal diagonal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from megatron_align.data.steerlm.attributes import LIKERT_MAX, STEERLM_ATTRIBUTES
from megatron_align.demo.world.measure import measure_attributes
from megatron_align.demo.world.stats import spearman
from megatron_align.generation.steering import DEFAULT_VALUES, parse_values, steer_prompt

LEVELS: tuple[int, ...] = tuple(range(LIKERT_MAX + 1))
"""Requested values of the sweep: 0..4."""


@dataclass
class Request:
    """One generation of the sweep."""

    attribute: str
    """The attribute being turned."""
    value: int
    """Its requested value."""
    question: str
    """The user turn."""
    prompt: str
    """The steering prompt (chat template + label line)."""


@dataclass
class AttributeResult:
    """The sweep of one attribute."""

    attribute: str
    requested: list[int] = field(default_factory=list)
    """Requested value of each generation."""
    measured: list[int] = field(default_factory=list)
    """The rules' value of each answer (same order)."""

    @property
    def spearman(self) -> float:
        return spearman(self.requested, self.measured)

    def mean_by_level(self) -> list[float]:
        """Mean measured value at each requested level (NaN where none)."""
        out = []
        for level in LEVELS:
            got = [m for r, m in zip(self.requested, self.measured) if r == level]
            out.append(sum(got) / len(got) if got else math.nan)
        return out


def steering_requests(questions: Sequence[str], attributes: Sequence[str] = STEERLM_ATTRIBUTES,
                      base: Optional[Mapping[str, int]] = None,
                      system: Optional[str] = None) -> list[Request]:
    """The sweep: for each attribute, each level, each question, one steering prompt."""
    base_values = parse_values(dict(base) if base is not None else dict(DEFAULT_VALUES))
    out = []
    for attribute in attributes:
        for level in LEVELS:
            values = dict(base_values, **{attribute: level})
            for q in questions:
                out.append(Request(attribute, level, q, steer_prompt(q, values, system)))
    return out


Results = dict[str, AttributeResult]


def evaluate_steering(generate: Callable[[list[str]], list[str]], questions: Sequence[str],
                      attributes: Sequence[str] = STEERLM_ATTRIBUTES,
                      base: Optional[Mapping[str, int]] = None, system: Optional[str] = None,
                      batch_size: int = 64,
                      progress: Optional[Callable[[int], None]] = None) -> tuple[Results, list[dict]]:
    """Run the sweep with ``generate(prompts) -> responses`` (cleaned answers), ``batch_size`` prompts per
    call; returns ``({attribute: result}, samples)`` where ``samples`` lists every request and answer."""
    requests = steering_requests(questions, attributes, base, system)
    answers: list[str] = []
    for lo in range(0, len(requests), batch_size):
        chunk = requests[lo:lo + batch_size]
        got = generate([r.prompt for r in chunk])
        if len(got) != len(chunk):
            raise ValueError(f"generate returned {len(got)} answers for {len(chunk)} prompts")
        answers += got
        if progress is not None:
            progress(len(chunk))
    return summarize(requests, answers)


def summarize(requests: Sequence[Request], answers: Sequence[str]) -> tuple[Results, list[dict]]:
    """Rate every answer by the rules; ``({attribute: result}, samples)``, samples listing each request,
    answer and the nine measured values."""
    if len(requests) != len(answers):
        raise ValueError(f"{len(answers)} answers for {len(requests)} requests")
    results: dict[str, AttributeResult] = {}
    samples = []
    for req, answer in zip(requests, answers):
        measured = measure_attributes(answer, req.question)
        res = results.setdefault(req.attribute, AttributeResult(req.attribute))
        res.requested.append(req.value)
        res.measured.append(measured[req.attribute])
        samples.append({"attribute": req.attribute, "requested": req.value, "question": req.question,
                        "response": answer, "measured": measured})
    return results, samples


def _fmt(x: Optional[float], digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def steering_table(results: Mapping[str, AttributeResult], rm_mae: Optional[Mapping[str, float]] = None,
                   baseline_mae: Optional[Mapping[str, float]] = None) -> str:
    """The markdown table: one row per attribute (module docstring)."""
    rm_mae, baseline_mae = rm_mae or {}, baseline_mae or {}
    levels = " / ".join(str(v) for v in LEVELS)
    lines = [f"| attribute | Spearman | measured mean at requested {levels} | RM val MAE | "
             "mean-predictor MAE |",
             "|---|---:|---|---:|---:|"]
    for name, res in results.items():
        means = " / ".join(_fmt(m, 1) for m in res.mean_by_level())
        lines.append(f"| {name} | {_fmt(res.spearman)} | {means} | {_fmt(rm_mae.get(name))} | "
                     f"{_fmt(baseline_mae.get(name))} |")
    return "\n".join(lines) + "\n"


def plot_steering(results: Mapping[str, AttributeResult], path, rm_mae: Optional[Mapping[str, float]] = None,
                  title: str = "SteerLM demo: requested vs measured attribute value") -> Path:
    """One panel per attribute: every answer (jittered dots), the mean per level, the ideal diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rm_mae = rm_mae or {}
    names = list(results)
    cols = 3
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, name in zip(axes.flat, names):
        res = results[name]
        x = np.asarray(res.requested, dtype=float)
        y = np.asarray(res.measured, dtype=float)
        jitter = rng.uniform(-0.15, 0.15, (2, len(x)))  # [2, N] so that equal points stay visible
        ax.scatter(x + jitter[0], y + jitter[1], s=8, alpha=0.35)
        ax.plot(LEVELS, res.mean_by_level(), marker="o", color="C1", label="mean measured")
        ax.plot([0, LIKERT_MAX], [0, LIKERT_MAX], linestyle="--", color="gray", linewidth=1, label="ideal")
        sub = f"Spearman {_fmt(res.spearman)}"
        if name in rm_mae:
            sub += f", RM MAE {_fmt(rm_mae[name])}"
        ax.set_title(f"{name}\n{sub}", fontsize=10)
        ax.set_xlim(-0.5, LIKERT_MAX + 0.5)
        ax.set_ylim(-0.5, LIKERT_MAX + 0.5)
        ax.set_xticks(LEVELS)
        ax.set_yticks(LEVELS)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes[0][0].set_ylabel("measured (rules)")
    axes[-1][0].set_xlabel("requested")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
