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
import time
from pathlib import Path
from typing import Optional

import torch

from megatron_align.config import ConfigError, ModelConfig
from megatron_align.config.restore import check_context, merge_architecture
from megatron_align.config.schema import run_dir_of
from megatron_align.config.stages.sft import SFTConfig

logger = logging.getLogger(__name__)


def run_sft(cfg: SFTConfig) -> dict:
    """Train; returns a summary (first/last loss, validation losses, checkpoint paths)."""
    from megatron.core import parallel_state as ps

    from megatron_align.data.collate import collate_packed
    from megatron_align.data.packing import pack_samples
    from megatron_align.data.sft import build_sft_datasets, collate_sft
    from megatron_align.distributed import start
    from megatron_align.models.checkpoint import checkpoint_kind, load_checkpoint, read_model_config
    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.tokenizers import load_tokenizer, load_tokenizer_from_dir
    from megatron_align.training.checkpointing import CheckpointManager
    from megatron_align.training.lr import apply_lr, lr_at
    from megatron_align.training.metrics import MetricsWriter
    from megatron_align.training.run import kill_hook, validation_microbatches
    from megatron_align.training.sampler import GlobalBatchSampler, total_steps
    from megatron_align.training.setup import prepare_for_training
    from megatron_align.training.step import NonFiniteError, eval_loss, train_step

    m, sft, em = cfg.model, cfg.trainer.sft, cfg.exp_manager
    env = start(m.tensor_model_parallel_size, m.pipeline_model_parallel_size, seed=m.seed)
    run_dir = run_dir_of(cfg)
    rank0 = env.rank == 0

    # --- model config and tokenizer: from the restored checkpoint when there is one ---
    model_cfg: ModelConfig = m
    tokenizer_dir: Optional[Path] = None
    if m.restore_from_path:
        kind = checkpoint_kind(m.restore_from_path)
        if kind != "gpt":
            raise ConfigError(f"model.restore_from_path={m.restore_from_path} is a {kind} model checkpoint; "
                              "SFT fine-tunes a language model: give a GPT checkpoint",
                              key="model.restore_from_path")
        restored = read_model_config(m.restore_from_path)
        model_cfg = merge_architecture(m, restored, source=m.restore_from_path)
        check_context(m.data, model_cfg, m.restore_from_path)
        tokenizer_dir = Path(m.restore_from_path) / "tokenizer"
        tokenizer = load_tokenizer_from_dir(tokenizer_dir)
    else:
        if not m.tokenizer.model:
            raise ConfigError("model.tokenizer.model is not set (and no model.restore_from_path to take it "
                              "from)", key="model.tokenizer.model")
        tokenizer = load_tokenizer(m.tokenizer.library, m.tokenizer.model)
        model_cfg = dataclasses.replace(m, vocab_size=m.vocab_size or tokenizer.vocab_size)
        if rank0:
            tokenizer.save(run_dir / "tokenizer")
        torch.distributed.barrier()
        tokenizer_dir = run_dir / "tokenizer"
    seq_len = m.data.train_ds.max_seq_length

    train_ds, val_ds = build_sft_datasets(m.data, tokenizer, answer_only_loss=m.answer_only_loss,
                                          seed=m.seed)
    dp_rank, dp = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    tds = m.data.train_ds
    sampler = GlobalBatchSampler(len(train_ds), tds.global_batch_size, tds.micro_batch_size, dp_rank, dp,
                                 seed=m.seed, shuffle=tds.shuffle)
    max_steps = total_steps(len(train_ds), tds.global_batch_size, sft.max_epochs, sft.max_steps)

    # --- model, optimizer, restore or resume ---
    model = build_gpt_model(model_cfg, precision=cfg.trainer.precision)
    ddp, optimizer = prepare_for_training(model, m.optim, cfg.trainer.precision,
                                          clip_grad=sft.gradient_clip_val)
    params = em.checkpoint_callback_params
    ckpts = CheckpointManager(run_dir, save_top_k=params.save_top_k, monitor=params.monitor, mode=params.mode)
    state = ckpts.resume(model, optimizer) if em.resume_if_exists else None
    if state is None and m.restore_from_path:
        load_checkpoint(m.restore_from_path, model)
        optimizer.reload_model_params()  # fp32 master weights from the restored (bf16) weights
    state = state or {"step": 0, "consumed_samples": 0, "nonfinite_steps": 0}
    step, consumed = int(state["step"]), int(state["consumed_samples"])

    metrics = MetricsWriter(run_dir, enabled=rank0, total_steps=max_steps, start_step=step, desc="sft",
                            tensorboard=em.create_tensorboard_logger, wandb=em.create_wandb_logger,
                            wandb_kwargs=dict(em.wandb_logger_kwargs), config={"max_steps": max_steps})
    val_batches = validation_microbatches(val_ds, sft.limit_val_batches, m.data.validation_ds, dp_rank, dp,
                                    tokenizer.pad_id, seq_len, collate_sft)

    def step_microbatches(index_lists: list[list[int]]) -> list:
        """This rank's micro-batches of one step: padded rows, or packed rows (``packed_sequence``)."""
        if not tds.packed_sequence:
            return [collate_sft([train_ds[i] for i in ix], pad_id=tokenizer.pad_id, seq_length=seq_len)
                    for ix in index_lists]
        # The rank's samples of this step, packed into rows of seq_len (fewer, fuller rows); the number of
        # micro-batches may differ between steps and ranks, the per-token loss normalization does not care.
        rows = pack_samples([train_ds[i] for ix in index_lists for i in ix], seq_len)
        mbs = tds.micro_batch_size
        return [collate_packed(rows[i:i + mbs], pad_id=tokenizer.pad_id, seq_length=seq_len)
                for i in range(0, len(rows), mbs)]

    summary: dict = {"run_dir": str(run_dir), "resumed_from_step": step, "losses": {}, "val_losses": {}}
    consecutive_bad = int(state.get("consecutive_nonfinite", 0))
    t0, tokens_seen = time.perf_counter(), 0.0
    try:
        while step < max_steps:
            lr = lr_at(step, m.optim, max_steps)
            apply_lr(optimizer, lr)
            microbatches = step_microbatches(sampler.microbatches(consumed))
            res = train_step(ddp, optimizer, microbatches, seq_len, tds.micro_batch_size)
            step += 1
            consumed += tds.global_batch_size
            tokens_seen += res.num_tokens
            consecutive_bad = consecutive_bad + 1 if res.skipped else 0
            state["nonfinite_steps"] = int(state.get("nonfinite_steps", 0)) + int(res.skipped)
            if consecutive_bad >= sft.max_consecutive_nonfinite:
                raise NonFiniteError(
                    f"{consecutive_bad} steps in a row had NaN/Inf loss or gradients (last at step {step}): "
                    "lower model.optim.lr, check the data, or raise trainer.sft.max_consecutive_nonfinite")
            row = {"loss": res.loss, "lr": lr, "grad_norm": res.grad_norm, "trained_tokens": res.num_tokens,
                   "tokens_per_s": tokens_seen / (time.perf_counter() - t0), "skipped": int(res.skipped),
                   "consumed_samples": consumed}
            summary["losses"][step] = res.loss
            if val_batches and (step % sft.val_check_interval == 0 or step == max_steps):
                row["val_loss"] = eval_loss(ddp, val_batches, seq_len, m.data.validation_ds.micro_batch_size)
                summary["val_losses"][step] = row["val_loss"]
            metrics.log(step, row)
            metrics.progress(step, loss=res.loss, lr=lr, tok_s=row["tokens_per_s"])
            if step % sft.save_interval == 0 or step == max_steps:
                train_state = {"step": step, "consumed_samples": consumed, "epoch": consumed // len(train_ds),
                               "nonfinite_steps": state["nonfinite_steps"],
                               "consecutive_nonfinite": consecutive_bad}
                path = ckpts.save(step, model, model_cfg, tokenizer_dir, optimizer, train_state,
                                  {"val_loss": row.get("val_loss"), "loss": res.loss})
                summary["last_checkpoint"] = str(path)
                kill_hook(step)
    finally:
        metrics.close()
    summary["steps"] = step
    summary["data_report"] = train_ds.report(logger)  # skipped / dropped / truncated counts per file
    return summary
