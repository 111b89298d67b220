"""Supervised fine-tuning, including SteerLM's attribute-conditioned SFT (seed 001, "Train the
Attribute-Conditioned SFT Model") and the SFT step of the offline methods and EXO (seeds 003, 004).

Loss: next-token cross entropy summed over trained tokens and divided by the number of trained tokens in the
global batch (``model.answer_only_loss=True`` trains assistant turns only; the label line is context).

The loop: restore weights from ``model.restore_from_path`` (any TP/PP), or resume the newest complete
checkpoint of this run (weights, optimizer, RNG, step, consumed samples); then for each step take the global
batch at ``consumed_samples`` from the resumable sampler, one guarded optimizer step, log, validate every
``trainer.sft.val_check_interval`` steps on ``trainer.sft.limit_val_batches`` batches, save every
``trainer.sft.save_interval`` steps and at the end.
"""

from __future__ import annotations

import dataclasses
import logging
from functools import partial

from megatron_align.config import ModelConfig
from megatron_align.config.restore import check_context
from megatron_align.config.stages.sft import SFTConfig

logger = logging.getLogger(__name__)


def run_sft(cfg: SFTConfig) -> dict:
    """Train; returns a summary (losses and validation losses per step, checkpoint paths)."""
    from megatron.core import parallel_state as ps

    from megatron_align.data.builder import make_microbatches
    from megatron_align.data.sft import build_sft_datasets, collate_sft
    from megatron_align.models.checkpoint import load_checkpoint
    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.training.run import (
        StepOutcome,
        build_trainee,
        start_run,
        train_loop,
        validation_microbatches,
    )
    from megatron_align.training.sampler import GlobalBatchSampler, total_steps
    from megatron_align.training.step import eval_loss, train_step

    m, sft = cfg.model, cfg.trainer.sft
    run = start_run(cfg, m.restore_from_path, "model.restore_from_path", partial(_restored_config, m),
                    lambda tok: dataclasses.replace(m, vocab_size=m.vocab_size or tok.vocab_size))
    tds, vds = m.data.train_ds, m.data.validation_ds
    pp = m.pipeline_model_parallel_size > 1  # pipeline stages exchange fixed [S, B, H] shapes
    pad_id = run.tokenizer.pad_id
    data = m.data if not sft.skip_validation else dataclasses.replace(
        m.data, validation_ds=dataclasses.replace(vds, file_path=None))
    train_ds, val_ds = build_sft_datasets(data, run.tokenizer, answer_only_loss=m.answer_only_loss,
                                          seed=m.seed)
    dp_rank, dp = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    sampler = GlobalBatchSampler(len(train_ds), tds.global_batch_size, tds.micro_batch_size, dp_rank, dp,
                                 seed=m.seed, shuffle=tds.shuffle)
    max_steps = total_steps(len(train_ds), tds.global_batch_size, sft.max_epochs, sft.max_steps)

    model = build_gpt_model(run.model_cfg, precision=cfg.trainer.precision)
    trainee = build_trainee(cfg, run, model, sft,
                            partial(load_checkpoint, m.restore_from_path) if m.restore_from_path else None)
    if m.restore_from_path and int(trainee.state["step"]) == 0:
        logger.info("SFT starts from %s", m.restore_from_path)
    val_len = vds.max_seq_length if (vds.pad_to_max_length or pp) else None
    val_batches = validation_microbatches(val_ds, sft.limit_val_batches, vds, dp_rank, dp, pad_id, val_len,
                                          partial(collate_sft, pad_to_multiple_of=vds.pad_seq_length_to_mult))

    def step_fn(consumed: int) -> StepOutcome:
        # this rank's samples of the step as micro-batches (packed rows with ``packed_sequence``: fewer,
        # fuller rows, so the count may differ between steps and ranks; the per-token loss does not care)
        samples = [train_ds[i] for ix in sampler.microbatches(consumed) for i in ix]
        microbatches = make_microbatches(samples, tds, pad_id, pipeline_parallel=pp)
        res = train_step(trainee.ddp, trainee.optimizer, microbatches, tds.max_seq_length,
                         tds.micro_batch_size)
        return StepOutcome(res, tokens=res.num_tokens, row={"trained_tokens": res.num_tokens})

    def validate() -> dict:
        return {"val_loss": eval_loss(trainee.ddp, val_batches, vds.max_seq_length, vds.micro_batch_size)}

    summary = train_loop(cfg, run, trainee, stage="sft", loop=sft, max_steps=max_steps,
                         global_batch_size=tds.global_batch_size, step_fn=step_fn,
                         validate=validate if val_batches else None, epoch_of=lambda c: c // len(train_ds))
    params = cfg.exp_manager.checkpoint_callback_params
    if run.rank0 and summary.get("last_checkpoint") and params.save_nemo_on_train_end:
        from pathlib import Path

        from megatron_align.training.checkpointing import write_final_copy

        summary["final"] = str(write_final_copy(Path(summary["last_checkpoint"]),
                                                f"{cfg.exp_manager.name or cfg.name}.nemo"))
    summary["data_report"] = train_ds.report(logger)  # skipped / dropped / truncated counts per file
    return summary


def _restored_config(m, path: str) -> ModelConfig:
    """The architecture of the GPT checkpoint at ``path``, with this run's settings."""
    from megatron_align.training.run import restored_gpt_config

    model_cfg = restored_gpt_config(m, path, "model.restore_from_path",
                                    "SFT fine-tunes a language model: give a GPT checkpoint")
    check_context(m.data, model_cfg, path)
    return model_cfg
