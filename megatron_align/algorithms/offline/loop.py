"""The offline loop as one resumable command (``megatron-align offline-loop``; schema
``config/stages/offline.OfflineLoopConfig``): the seed's Online Rejection Sampling / ReST script, where a
crash costs only the unfinished step.

``output_dir/iter_<i>/``: ``generated.jsonl`` (the sampler on prompt slice i, from the current policy),
``filtered.jsonl`` (the labeler's processor), ``sft/`` (an SFT run from the current policy on the filtered
samples; ``sft/done.json`` names its final model, ``checkpoints/megatron_gpt_sft.nemo``). Each output is
written whole at its step's end, so a rerun skips every step whose output exists and resumes the one that
died (the sampler and labeler at their first unsaved chunk, SFT from its newest checkpoint).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from pathlib import Path

from megatron_align.config.stages.offline import OfflineLoopConfig

logger = logging.getLogger(__name__)
DONE = "done.json"
SEED_STRIDE = 1000


def sft_config(train_file: Path, policy: str, run_dir: Path, overrides: list[str]):
    """conf/gpt_sft.yaml, no validation (the seed's ``++trainer.sft.skip_validation=True``), the user's
    ``sft.*`` overrides, then this iteration's policy, data and directory."""
    from megatron_align.config import load_config
    from megatron_align.config.loader import CONF_DIR
    from megatron_align.config.stages.sft import SFTConfig

    return load_config(SFTConfig, CONF_DIR / "gpt_sft.yaml",
                       ["trainer.sft.skip_validation=True", *overrides, f"model.restore_from_path={policy}",
                        f"model.data.train_ds.file_path={train_file}",
                        f"exp_manager.explicit_log_dir={run_dir}"])


def run_offline_loop(cfg: OfflineLoopConfig, sft_overrides: list[str]) -> list[dict]:
    """Every iteration (module docstring); one summary per iteration."""
    from megatron_align.algorithms.offline.labeler import run_reward_labeler
    from megatron_align.algorithms.offline.sampler import run_random_sampler
    from megatron_align.algorithms.sft import run_sft
    from megatron_align.models.checkpoint import is_complete_checkpoint
    from megatron_align.training.chunks import read_done, write_done

    root = Path(cfg.output_dir)
    sft_config(root / "iter_0" / "filtered.jsonl", cfg.sampler.gpt_model_file, root / "iter_0" / "sft",
               sft_overrides)  # the SFT keys checked before anything runs
    policy, summaries = str(cfg.sampler.gpt_model_file), []
    for i in range(cfg.iterations):
        d = root / f"iter_{i}"
        done = d / "sft" / DONE
        summary: dict = {"iteration": i, "policy": policy}
        if (finished := read_done(done)) is not None:
            policy = finished["checkpoint"]
            summaries.append({**summary, "checkpoint": policy, "skipped": True})
            continue
        d.mkdir(parents=True, exist_ok=True)
        generated, filtered = d / "generated.jsonl", d / "filtered.jsonl"
        if not generated.is_file():
            s = cfg.sampler
            data = dataclasses.replace(s.data, sample_split_size=cfg.rollout_batch_size, sample_split_iter=i)
            seeded = dataclasses.replace(s.inference, random_seed=s.inference.random_seed + SEED_STRIDE * i)
            sampler = dataclasses.replace(s, gpt_model_file=policy, output_file=str(generated), data=data,
                                          inference=seeded)
            summary["sampler"] = run_random_sampler(sampler)
            gc.collect()
        if not filtered.is_file():
            data = dataclasses.replace(cfg.labeler.data, file_names=[str(generated)],
                                       concat_sampling_probabilities=None)
            labeler = dataclasses.replace(cfg.labeler, output_file=str(filtered), data=data)
            summary["labeler"] = run_reward_labeler(labeler)
            gc.collect()
        result = run_sft(sft_config(filtered, policy, d / "sft", sft_overrides))
        final = result.get("final") or str(d / "sft" / "checkpoints" / "megatron_gpt_sft.nemo")
        if not is_complete_checkpoint(final):
            raise RuntimeError(f"iteration {i}: SFT left no final model at {final} "
                               "(keep exp_manager.checkpoint_callback_params.save_nemo_on_train_end=True)")
        write_done(done, checkpoint=final, steps=result.get("steps"))
        policy = final
        summaries.append({**summary, "checkpoint": policy})
        logger.info("offline loop, iteration %d: model %s", i, policy)
        gc.collect()
    return summaries
