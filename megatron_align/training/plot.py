"""``megatron-align plot RUN_DIR``: one PNG per logged metric (from ``metrics.jsonl``), plus an overview.

Writes ``RUN_DIR/plots/<metric>.png`` and ``RUN_DIR/plots/overview.png`` (training loss with validation loss
overlaid, learning rate, gradient norm, throughput) and returns the written paths.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def read_metrics(run_dir) -> dict[str, tuple[list[int], list[float]]]:
    """``{metric: (steps, values)}`` from ``metrics.jsonl`` (non-finite values are skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl in this run directory")
    series: dict[str, tuple[list[int], list[float]]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        for k, v in row.items():
            if k == "step" or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            steps, values = series.setdefault(k, ([], []))
            steps.append(row["step"])
            values.append(float(v))
    return series


def plot_run(run_dir) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_metrics(run_dir)
    out_dir = Path(run_dir) / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    for name, (steps, values) in sorted(series.items()):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{name.replace('/', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    panels = [k for k in ("loss", "lr", "grad_norm", "tokens_per_s") if k in series]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
        for ax, name in zip(axes[0], panels):
            ax.plot(*series[name], label=name)
            if name == "loss" and "val_loss" in series:
                ax.plot(*series["val_loss"], marker="o", label="val_loss")
                ax.legend()
            ax.set_title(name)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / "overview.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
