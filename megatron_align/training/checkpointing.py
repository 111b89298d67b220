"""Periodic checkpoints, ``save_top_k`` retention and resume for a training run.

Checkpoints live in ``<run_dir>/checkpoints/step=<N>`` (format: ``megatron_align.models.checkpoint``).
Retention: the ``save_top_k`` best by the monitored metric
(``exp_manager.checkpoint_callback_params.monitor``, ``mode``) are kept, and so is the newest one whatever its
score, because resuming needs it; ``save_top_k=-1`` keeps all. Resume: the newest *complete* checkpoint is
loaded with its optimizer, RNG and train state; a ``*.incomplete`` directory left by a killed writer is
ignored and removed.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Optional

import torch

from megatron_align.models.checkpoint import (
    INCOMPLETE_SUFFIX,
    is_complete_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)

logger = logging.getLogger(__name__)


class CheckpointManager:
    """Saves, prunes and finds the checkpoints of one run."""

    def __init__(self, run_dir, save_top_k: int = 3, monitor: str = "val_loss", mode: str = "min"):
        self.dir = Path(run_dir) / "checkpoints"
        self.save_top_k, self.monitor, self.mode = save_top_k, monitor, mode
        self._scores_file = self.dir / "scores.json"

    def _rank0(self) -> bool:
        return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0

    def _scores(self) -> dict:
        return json.loads(self._scores_file.read_text()) if self._scores_file.is_file() else {}

    def save(self, step: int, model, model_cfg, tokenizer_dir, optimizer, train_state: dict,
             metrics: Optional[dict] = None) -> Path:
        """Save step ``step`` (collective), record its monitored score, prune (rank 0)."""
        path = save_checkpoint(self.dir / f"step={step}", model, model_cfg, tokenizer_dir=tokenizer_dir,
                               optimizer=optimizer, train_state=train_state, save_rng=True)
        if self._rank0():
            scores = self._scores()
            value = (metrics or {}).get(self.monitor)
            scores[path.name] = value if isinstance(value, (int, float)) else None
            self._scores_file.write_text(json.dumps(scores, indent=1))
            self._prune(path.name)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        return path

    def _prune(self, newest: str) -> None:
        if self.save_top_k < 0:
            return
        scores = self._scores()
        present = {k: v for k, v in scores.items() if (self.dir / k).is_dir()}
        scored = [k for k, v in present.items() if v is not None]
        sign = 1.0 if self.mode == "min" else -1.0
        best = set(sorted(scored, key=lambda k: sign * present[k])[: self.save_top_k])
        for name in present:
            if name != newest and name not in best:
                shutil.rmtree(self.dir / name, ignore_errors=True)
                logger.info("removed checkpoint %s (not in the best %d by %s)", name, self.save_top_k,
                            self.monitor)
        self._scores_file.write_text(json.dumps({k: v for k, v in present.items()
                                                 if (self.dir / k).is_dir()}, indent=1))

    def latest(self) -> Optional[Path]:
        """The newest complete checkpoint of this run, if any."""
        return latest_checkpoint(self.dir)

    def resume(self, model, optimizer) -> Optional[dict]:
        """Load the newest complete checkpoint (weights, optimizer, RNG); returns its train state or None."""
        if self._rank0() and self.dir.is_dir():
            for stale in self.dir.glob(f"*{INCOMPLETE_SUFFIX}"):
                logger.warning("removing %s: its writer did not finish", stale)
                shutil.rmtree(stale, ignore_errors=True)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        ckpt = self.latest()
        if ckpt is None or not is_complete_checkpoint(ckpt):
            return None
        has_optim = read_metadata(ckpt).get("has_optimizer", False)
        state = load_checkpoint(ckpt, model, optimizer=optimizer if has_optim else None, load_rng=True)
        logger.info("resumed from %s (step %s)", ckpt, state.get("step"))
        return state


def write_final_copy(checkpoint: Path, name: str) -> Path:
    """``<checkpoint's dir>/<name>``: the final checkpoint as a real directory beside it (files hard-linked
    where the filesystem allows, else copied; written under a temporary name, then renamed). It is what the
    seeds' scripts expect at ``checkpoints/megatron_gpt_sft.nemo``: a path that survives the seed's loop
    moving it away and deleting ``checkpoints/*``. Our checkpoint format, not a tarball; never resumed from
    (``latest_checkpoint`` skips ``*.nemo``)."""
    import os

    final = checkpoint.parent / name
    tmp = checkpoint.parent / f".{name}.tmp{os.getpid()}"

    def link_or_copy(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint, tmp, copy_function=link_or_copy)
    if final.is_symlink() or final.is_file():
        final.unlink()
    elif final.is_dir():
        shutil.rmtree(final)
    os.replace(tmp, final)
    logger.info("final checkpoint: %s", final)
    return final
