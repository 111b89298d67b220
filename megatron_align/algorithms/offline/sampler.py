"""The random sampler (``examples/nlp/gpt/offline/launch_random_sampler.py``; schema
``config/stages/offline.RandomSamplerConfig``): ``data.n`` samples of every prompt, ``{input, output}`` lines.

1. Prompts: the ``data.file_names`` blended (``data/offline.blend``), then the slice
   [iter * size, (iter + 1) * size) when ``data.sample_split_size`` is set; none dropped at the end of a file
   or slice (the last batch is just shorter).
2. Rows: each prompt ``n`` times, prompt after prompt; batch b is rows [b * m, (b + 1) * m) with m =
   ``data.micro_batch_size``, drawn with seed ``inference.random_seed + b``; chunk c is batches
   [c * k, (c + 1) * k) with k = ``checkpoint_interval``, and belongs to data-parallel replica c mod DP.
3. Each finished chunk is saved to ``<output_file>_temp/samples/<c>.json``; a restarted run (any layout)
   redoes only the chunks not saved, so it draws what an uninterrupted single process draws.
4. Rank 0 writes ``output_file`` whole, in prompt order (temporary file, then rename), and removes
   ``<output_file>_temp``.

``output`` is the generated continuation without its stop string. A prompt longer than ``data.max_seq_length``
tokens stops the run with ``file:line`` (or is skipped and counted with ``data.on_bad_record=skip``).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import shutil
from pathlib import Path

from megatron_align.config.errors import ConfigError
from megatron_align.config.stages.offline import RandomSamplerConfig
from megatron_align.training.chunks import ChunkDir, ReplicaLayout, open_work_dir

logger = logging.getLogger(__name__)


def sampler_prompts(cfg: RandomSamplerConfig) -> list:
    """The prompts of this run (``OfflineRecord``s), after blending and the split."""
    from megatron_align.data.offline import OfflineFile, blend

    d = cfg.data
    files = [OfflineFile(p, d.input_key, None, d.on_bad_record) for p in d.file_names]
    prompts = blend(files, d.concat_sampling_probabilities)
    if d.sample_split_size > 0:
        lo = d.sample_split_iter * d.sample_split_size
        if lo >= len(prompts):
            raise ConfigError(f"data.sample_split_iter={d.sample_split_iter}: slice {lo}.. is past the "
                              f"{len(prompts)} prompts", key="data.sample_split_iter")
        prompts = prompts[lo:lo + d.sample_split_size]
    return prompts


def _manifest(cfg: RandomSamplerConfig) -> dict:
    keep = {k: v for k, v in dataclasses.asdict(cfg).items()
            if k not in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "trainer")}
    files = [[os.path.abspath(p), os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in cfg.data.file_names]
    return {"config": keep, "files": files}


def _sample_chunk(backend, cfg: RandomSamplerConfig, prompts: list, rows: list, c: int) -> list:
    """``[prompt index, output or None]`` for the rows of chunk c (None: prompt over-long and skipped)."""
    from megatron_align.data.errors import DataError
    from megatron_align.generation.text import clean_response, generate_local

    d, k, m = cfg.data, cfg.checkpoint_interval, cfg.data.micro_batch_size
    out = []
    for b in range(c * k, (c + 1) * k):
        batch = rows[b * m:(b + 1) * m]
        if not batch:
            break
        texts, keep = [], []
        for i in batch:
            text = prompts[i].fields[d.input_key]
            n_tokens = len(backend.tokenizer.text_to_ids(text))
            if n_tokens > d.max_seq_length:
                err = DataError(prompts[i].path, prompts[i].line, d.input_key,
                                f"{n_tokens} tokens > data.max_seq_length={d.max_seq_length}")
                if d.on_bad_record == "error":
                    raise err
                logger.warning("skipped: %s", err)
                keep.append(False)
                continue
            keep.append(True)
            texts.append(text)
        params = dataclasses.replace(cfg.inference, random_seed=cfg.inference.random_seed + b)
        answers = iter(generate_local(backend, texts, params) if texts else [])
        for i, kept in zip(batch, keep):
            out.append([i, clean_response(next(answers), params.end_strings, "") if kept else None])
    return out


def run_random_sampler(cfg: RandomSamplerConfig) -> dict:
    """Write ``cfg.output_file`` (module docstring); returns counts."""
    from megatron_align.data.steerlm.io import write_jsonl
    from megatron_align.generation.build import load_model, make_backend

    layout = ReplicaLayout(cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size,
                           cfg.inference.random_seed)
    d = cfg.data
    prompts = sampler_prompts(cfg)
    rows = [i for i in range(len(prompts)) for _ in range(d.n)]
    per_chunk = cfg.checkpoint_interval * d.micro_batch_size
    n_chunks = -(-len(rows) // per_chunk)
    temp = Path(f"{cfg.output_file}_temp")
    chunks = ChunkDir(open_work_dir(temp, _manifest(cfg), layout, "output_file") / "samples")
    todo = layout.todo(chunks, n_chunks)
    if layout.any_rank(bool(todo)):
        model, tok, mcfg = load_model(cfg.gpt_model_file, "gpt", cfg.trainer.precision)
        backend = make_backend(model, tok, mcfg, d.micro_batch_size)
        try:
            for c in todo:
                done = _sample_chunk(backend, cfg, prompts, rows, c)
                logger.info("chunk %d/%d sampled (%d rows)", c + 1, n_chunks, len(done))
                layout.save(chunks, "samples", c, done)
        finally:
            backend.close()
        del model, backend
        gc.collect()
    layout.barrier()
    counts = {"prompts": len(prompts), "samples": 0, "skipped": 0}
    if layout.rank0:
        lines, skipped = [], 0
        for c in range(n_chunks):
            for i, output in chunks.read(c):
                if output is None:
                    skipped += 1
                    continue
                lines.append({d.input_key: prompts[i].fields[d.input_key], d.output_key: output})
        write_jsonl(cfg.output_file, lines)
        shutil.rmtree(temp)
        counts.update(samples=len(lines), skipped=skipped)
    layout.barrier()
    return counts
