"""``megatron-align plot DIR``: PNG curves of the metrics training stages logged (``metrics.jsonl``).

``DIR`` is one stage's run directory (it holds ``metrics.jsonl``): ``DIR/plots/<metric>.png`` for each metric
plus ``DIR/plots/overview.png`` (training loss with validation loss overlaid, learning rate, gradient norm,
throughput). Or ``DIR`` holds several stages below it (the demo's ``runs/steerlm_demo``, a bootstrap's output
directory): one figure per stage, ``DIR/plots/<stage path>.png``, with a panel per metric.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

Series = dict[str, tuple[list[int], list[float]]]  # {metric: (steps, values)}
OVERVIEW = ("loss", "lr", "grad_norm", "tokens_per_s")


def read_metrics(run_dir) -> Series:
    """``{metric: (steps, values)}`` from ``run_dir/metrics.jsonl``; non-finite values and unreadable lines (a
    line cut short by a crash) are skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl in this run directory")
    series: Series = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            continue
        for k, v in row.items():
            if k == "step" or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            steps, values = series.setdefault(k, ([], []))
            steps.append(row["step"])
            values.append(float(v))
    return series


def stage_dirs(root) -> list[Path]:
    """The stage run directories at or below ``root``: ``[root]`` when it holds ``metrics.jsonl``, else every
    directory below it that does (sorted)."""
    root = Path(root)
    if (root / "metrics.jsonl").is_file():
        return [root]
    found = sorted(p.parent for p in root.rglob("metrics.jsonl") if p.is_file())
    if not found:
        raise FileNotFoundError(f"{root}: no metrics.jsonl in this directory or below it (give a training "
                                "stage's run directory, or one that holds some)")
    return found


def plot_run(run_dir) -> list[Path]:
    """Plot one stage (per-metric PNGs and an overview) or, for a directory of stages, one figure per stage;
    returns the written paths."""
    root = Path(run_dir)
    stages = stage_dirs(root)
    if stages == [root]:
        return _plot_stage(root)
    out_dir = root / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    for stage in stages:
        series = read_metrics(stage)
        if not series:
            continue
        name = "_".join(stage.relative_to(root).parts)
        path = out_dir / f"{name}.png"
        _save_panels(series, [k for k in sorted(series) if k != "val_loss" or "loss" not in series], path,
                     title=str(stage.relative_to(root)))
        written.append(path)
    return written


def _plot_stage(stage: Path) -> list[Path]:
    series = read_metrics(stage)
    out_dir = stage / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    for name in sorted(series):
        path = out_dir / f"{name.replace('/', '_')}.png"
        _save_panels({name: series[name]}, [name], path, overlay_val=False)
        written.append(path)
    panels = [k for k in OVERVIEW if k in series]
    if panels:
        path = out_dir / "overview.png"
        _save_panels(series, panels, path)
        written.append(path)
    return written


def _save_panels(series: Series, panels: list[str], path: Path, *, title: str | None = None,
                 overlay_val: bool = True, columns: int = 4) -> None:
    """One figure, a panel per metric in ``panels`` (``val_loss`` drawn over ``loss``), saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(columns, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, panels):
        steps, values = series[name]
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=name)
        if overlay_val and name == "loss" and "val_loss" in series:
            ax.plot(*series["val_loss"], marker="o", markersize=3, label="val_loss")
            ax.legend()
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
