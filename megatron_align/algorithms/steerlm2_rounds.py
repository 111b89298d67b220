"""SteerLM 2.0 iterations (seed 000: "e.g. n=2"): round r builds its data with the current policy and trains
it (``examples/nlp/gpt/steerlm2_rounds.py``; schema ``config/stages/steerlm2.RoundsSteerLM2Config``).

``output_dir/round_<r>/``: ``data.jsonl`` (the builder's output, its durable work files in
``data.jsonl.work``) and ``train/`` (a SteerLM 2.0 run from the previous round's checkpoint; ``done.json``
names its final checkpoint). Rerunning the command skips finished rounds and resumes the unfinished one
where it died: the builder at its first unfinished chunk, the trainer from its newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from pathlib import Path

from megatron_align.config.stages.steerlm2 import RoundsSteerLM2Config

logger = logging.getLogger(__name__)
DONE = "done.json"
SEED_STRIDE = 1000


def round_dir(cfg: RoundsSteerLM2Config, r: int) -> Path:
    return Path(cfg.output_dir) / f"round_{r}"


def train_config(train_file: Path, policy: str, run_dir: Path, overrides: list[str]):
    """conf/train_steerlm2.yaml + the user's ``train.*`` overrides + this round's policy, data, directory."""
    from megatron_align.config import load_config
    from megatron_align.config.loader import CONF_DIR
    from megatron_align.config.stages.steerlm2 import SteerLM2Config

    return load_config(SteerLM2Config, CONF_DIR / "train_steerlm2.yaml",
                       [*overrides, f"model.restore_from_path={policy}",
                        f"model.data.train_ds.file_path={train_file}",
                        f"exp_manager.explicit_log_dir={run_dir}"])


def run_rounds(cfg: RoundsSteerLM2Config, train_overrides: list[str]) -> list[dict]:
    """Every round (module docstring); one summary per round."""
    from megatron_align.algorithms.steerlm2 import run_steerlm2
    from megatron_align.algorithms.steerlm2_build import build_steerlm2
    from megatron_align.models.checkpoint import latest_checkpoint
    from megatron_align.training.chunks import read_done, write_done

    # the training keys checked before anything runs (a typo fails now, not after round 1's sampling)
    train_config(round_dir(cfg, 1) / "data.jsonl", cfg.build.policy_checkpoint, round_dir(cfg, 1) / "train",
                 train_overrides)
    policy, summaries = str(cfg.build.policy_checkpoint), []
    for r in range(1, cfg.rounds + 1):
        d = round_dir(cfg, r)
        done = d / "train" / DONE
        summary: dict = {"round": r, "policy": policy}
        if (finished := read_done(done)) is not None:
            policy = finished["checkpoint"]
            summaries.append({**summary, "checkpoint": policy, "skipped": True})
            continue
        d.mkdir(parents=True, exist_ok=True)
        sample = dataclasses.replace(cfg.build.sample,
                                     random_seed=cfg.build.sample.random_seed + SEED_STRIDE * (r - 1))
        build = dataclasses.replace(cfg.build, policy_checkpoint=policy, output=str(d / "data.jsonl"),
                                    sample=sample)
        summary["build"] = build_steerlm2(build)
        gc.collect()
        result = run_steerlm2(train_config(d / "data.jsonl", policy, d / "train", train_overrides))
        final = result.get("last_checkpoint") or latest_checkpoint(d / "train" / "checkpoints")
        if final is None:
            raise RuntimeError(f"round {r}: training saved no checkpoint")
        write_done(done, checkpoint=str(final), steps=result.get("steps"))
        policy = str(final)
        summaries.append({**summary, "checkpoint": policy, "losses": result.get("losses")})
        logger.info("SteerLM 2.0 round %d: checkpoint %s", r, policy)
        gc.collect()
    return summaries
