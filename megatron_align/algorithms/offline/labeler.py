"""The reward labeler (``examples/nlp/gpt/offline/launch_reward_labeler.py``; schema
``config/stages/offline.RewardLabelerConfig``): every ``{input, output}`` sample scored by the reward model,
then the ``processor`` (``scoring/filters.py``: rs, rest, dt, null).

1. Samples: the ``data.file_names`` blended (``data/offline.blend``); chunk c is samples
   [c * k * m, (c + 1) * k * m) (k = ``checkpoint_interval`` batches of m = ``data.micro_batch_size``),
   scored by data-parallel replica c mod DP.
2. The reward model reads ``input + output`` (the sampler's prompt text followed by its continuation, as the
   policy saw them) and eos (NeMo-Aligner's labeler), cut to its context with a warning; its ``[A]`` outputs
   per sample are saved to ``<output_file>_temp/rewards/<c>.json``. A restarted run scores only the chunks
   not saved.
3. Rank 0 turns them into one reward per sample (``reward_attribute`` / ``reward_weights`` for a
   multi-attribute model), standardizes it (``reward_standardization``; a null mean or std is computed over
   all samples and logged), runs the processor, writes ``output_file`` whole and removes the ``_temp`` folder.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
from pathlib import Path

from megatron_align.config.errors import ConfigError
from megatron_align.config.stages.offline import RewardLabelerConfig
from megatron_align.training.chunks import ChunkDir, ReplicaLayout, open_work_dir

logger = logging.getLogger(__name__)


def labeler_samples(cfg: RewardLabelerConfig) -> list:
    """The samples of this run (``OfflineRecord``s), blended."""
    from megatron_align.data.offline import OfflineFile, blend

    d = cfg.data
    files = [OfflineFile(p, d.input_key, d.output_key, d.on_bad_record) for p in d.file_names]
    return blend(files, d.concat_sampling_probabilities)


def _manifest(cfg: RewardLabelerConfig) -> dict:
    """What the saved rewards depend on (the processor and standardization act after them)."""
    d = cfg.data
    files = [[os.path.abspath(p), os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in d.file_names]
    return {"model": str(cfg.gpt_model_file), "files": files,
            "probabilities": d.concat_sampling_probabilities, "keys": [d.input_key, d.output_key],
            "micro_batch_size": d.micro_batch_size, "checkpoint_interval": cfg.checkpoint_interval,
            "on_bad_record": d.on_bad_record, "precision": cfg.trainer.precision}


def attribute_index(cfg: RewardLabelerConfig, width: int):
    """``reward_attribute`` as an index (a SteerLM attribute name for a 9-attribute model)."""
    from megatron_align.config.stages.steerlm import STEERLM_ATTRIBUTES

    a = cfg.reward_attribute
    if a is None or isinstance(a, int):
        return a
    if isinstance(a, str) and width == len(STEERLM_ATTRIBUTES) and a in STEERLM_ATTRIBUTES:
        return STEERLM_ATTRIBUTES.index(a)
    raise ConfigError(f"reward_attribute={a!r}: give an index below {width}"
                      + (f" or one of {', '.join(STEERLM_ATTRIBUTES)}" if width == 9 else ""),
                      key="reward_attribute")


def scalar_and_standardized(cfg: RewardLabelerConfig, rows: list) -> tuple[list[float], dict]:
    """One (standardized) reward per sample and what was used (``mean`` / ``std`` when standardized)."""
    from megatron_align.scoring.filters import scalar_rewards, standardized

    width = len(rows[0])
    try:
        rewards = scalar_rewards(rows, attribute_index(cfg, width), cfg.reward_weights)
    except ValueError as e:
        raise ConfigError(str(e), key="reward_attribute") from None
    s = cfg.reward_standardization
    if not s.enable:
        return rewards, {}
    values, mean, std = standardized(rewards, s.mean, s.std)
    how = {True: "given", False: "computed over the samples"}
    logger.info("reward standardization: mean %.6g (%s), std %.6g (%s)", mean, how[s.mean is not None], std,
                how[s.std is not None])
    return values, {"mean": mean, "std": std}


def run_reward_labeler(cfg: RewardLabelerConfig) -> dict:
    """Write ``cfg.output_file`` (module docstring); returns counts."""
    from megatron_align.data.steerlm.io import write_jsonl
    from megatron_align.scoring.filters import process
    from megatron_align.scoring.reward_model import RewardScorer

    layout = ReplicaLayout(cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size, 1234)
    d = cfg.data
    samples = labeler_samples(cfg)
    per_chunk = cfg.checkpoint_interval * d.micro_batch_size
    n_chunks = -(-len(samples) // per_chunk)
    temp = Path(f"{cfg.output_file}_temp")
    chunks = ChunkDir(open_work_dir(temp, _manifest(cfg), layout, "output_file") / "rewards")
    todo = layout.todo(chunks, n_chunks)
    if layout.any_rank(bool(todo)):
        scorer = RewardScorer(cfg.gpt_model_file, cfg.trainer.precision, d.micro_batch_size, add_eos=True)
        for c in todo:
            part = samples[c * per_chunk:(c + 1) * per_chunk]
            rows = scorer.score([r.fields[d.input_key] + r.fields[d.output_key] for r in part])
            logger.info("chunk %d/%d scored (%d samples)", c + 1, n_chunks, len(part))
            layout.save(chunks, "rewards", c, rows)
        del scorer
        gc.collect()
    layout.barrier()
    counts = {"samples": len(samples), "kept": 0, "processor": cfg.processor_name()}
    if layout.rank0:
        rows = [row for c in range(n_chunks) for row in chunks.read(c)]
        rewards, used = scalar_and_standardized(cfg, rows)
        out = process([r.fields for r in samples], rewards, cfg.processor_name(), input_key=d.input_key,
                      threshold=cfg.threshold, reward_template=cfg.reward_template,
                      export_reward=cfg.export_reward)
        write_jsonl(cfg.output_file, out)
        shutil.rmtree(temp)
        counts.update(kept=len(out), **used)
    layout.barrier()
    return counts


