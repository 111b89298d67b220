"""Where metrics go: ``metrics.jsonl`` and TensorBoard in the run directory, W&B when asked, a progress bar.

Only global rank 0 writes or draws (DESIGN.md habit 10); other ranks get a ``MetricsWriter`` that does
nothing.
W&B (``exp_manager.create_wandb_logger=True``) runs offline unless ``WANDB_API_KEY`` is set, so it works on a
machine without network; ``exp_manager.wandb_logger_kwargs`` (project, name) are passed through.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)


class MetricsWriter:
    """Append-only metric sink for one run (rank 0 only); also owns the progress bar."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool, total_steps: int, start_step: int = 0,
                 desc: str = "train", tensorboard: bool = True, wandb: bool = False,
                 wandb_kwargs: Optional[dict] = None, config: Optional[dict] = None):
        self.enabled = enabled
        self._tb = self._wandb = self._bar = None
        self._t0 = time.perf_counter()
        if not enabled:
            return
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Resumed runs append: rows past the resume step are dropped so the file reads as one run.
        self.path = self.run_dir / "metrics.jsonl"
        self._truncate_after(start_step)
        self._file = open(self.path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step + 1)
            except ImportError:
                logger.warning("tensorboard is not installed: metrics go to metrics.jsonl only")
        if wandb:
            self._wandb = _start_wandb(self.run_dir, wandb_kwargs or {}, config or {})
        from megatron_align.log import progress_bar

        self._bar = progress_bar(total_steps, desc, initial=start_step)

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(x + "\n" for x in keep))

    def log(self, step: int, values: dict) -> None:
        """Record ``values`` for optimizer step ``step`` (numbers only; NaN/Inf written as strings)."""
        if not self.enabled:
            return
        row = {"step": step, **{k: _jsonable(v) for k, v in values.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        for k, v in values.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                if self._tb is not None:
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in values.items() if isinstance(v, (int, float))}, step=step)

    def progress(self, step: int, **shown) -> None:
        """Advance the bar to ``step``, showing ``shown`` (loss, lr, tokens/s ...) and tqdm's ETA."""
        if self._bar is None:
            return
        self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in shown.items()},
                              refresh=False)
        self._bar.update(step - self._bar.n)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _start_wandb(run_dir: Path, kwargs: dict, config: dict):
    try:
        import wandb
    except ImportError:
        logger.warning("exp_manager.create_wandb_logger=True but wandb is not installed (pip install wandb)")
        return None
    mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return wandb.init(dir=str(run_dir), mode=mode, config=config,
                      **{k: v for k, v in kwargs.items() if v is not None})
