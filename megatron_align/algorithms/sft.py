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
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch

from megatron_align.config import ConfigError, ModelConfig, RunConfig, TrainerConfig
from megatron_align.config.data import DataConfig

logger = logging.getLogger(__name__)


@dataclass
class SFTSection:
    """``trainer.sft.*``"""

    max_epochs: int = 1
    """Passes over the training data; the run stops at whichever of max_epochs / max_steps comes first."""
    max_steps: int = -1
    """Optimizer steps; -1 means as many as ``max_epochs`` take."""
    val_check_interval: int = 100
    """Validate every this many steps (and at the end)."""
    save_interval: int = 100
    """Save a checkpoint every this many steps (and at the end)."""
    limit_val_batches: Union[int, float] = 1.0
    """Validation global batches per validation: an int counts batches, a float in (0, 1] is a fraction."""
    gradient_clip_val: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    max_consecutive_nonfinite: int = 10
    """Stop after this many steps in a row whose loss or gradients were NaN/Inf (each is skipped)."""


@dataclass
class SFTTrainerConfig(TrainerConfig):
    """``trainer.*`` for SFT."""

    sft: SFTSection = field(default_factory=SFTSection)
    """Step, validation and checkpoint cadence."""


@dataclass
class SFTModelConfig(ModelConfig):
    """``model.*`` for SFT."""

    answer_only_loss: bool = True
    """Train only on assistant turns (and the end of turn after them)."""
    data: DataConfig = field(default_factory=DataConfig)
    """``model.data.*``: files, chat template, batch sizes."""


@dataclass
class SFTConfig(RunConfig):
    """Top-level schema of ``examples/train_gpt_sft.py`` (``conf/gpt_sft.yaml``)."""

    name: str = "megatron_gpt_sft"
    trainer: SFTTrainerConfig = field(default_factory=SFTTrainerConfig)
    model: SFTModelConfig = field(default_factory=SFTModelConfig)

    def resolve(self) -> SFTConfig:
        """Take the architecture from ``model.restore_from_path``'s checkpoint (it decides the model)."""
        path = self.model.restore_from_path
        if not path:
            return self
        config_file = Path(path) / "model_config.yaml"
        if not config_file.is_file():
            raise ConfigError(f"model.restore_from_path={path}: not a megatron_align checkpoint (no "
                              "model_config.yaml); convert HF weights with "
                              "`megatron-align convert --from-hf`",
                              key="model.restore_from_path")
        from megatron_align.config import from_yaml_file

        restored = from_yaml_file(ModelConfig, config_file)
        return dataclasses.replace(self, model=_merge_architecture(self.model, restored))

    def validate(self, world_size: int) -> None:
        from megatron_align.config import check_batch_sizes

        tp, pp = self.model.tensor_model_parallel_size, self.model.pipeline_model_parallel_size
        ds = self.model.data.train_ds
        check_batch_sizes(ds.global_batch_size, ds.micro_batch_size, world_size // (tp * pp),
                          prefix="model.data.train_ds")
        if not ds.file_path:
            raise ConfigError("model.data.train_ds.file_path is not set: give the training JSONL file(s)",
                              key="model.data.train_ds.file_path")
        if ds.packed_sequence and pp > 1:
            raise ConfigError("model.data.train_ds.packed_sequence=True with pipeline parallelism: packed "
                              "steps have a varying number of rows; use it with "
                              "model.pipeline_model_parallel_size=1",
                              key="model.data.train_ds.packed_sequence")
        if self.model.data.validation_ds.packed_sequence:
            raise ConfigError("model.data.validation_ds.packed_sequence=True: validation batches are padded, "
                              "set it to False", key="model.data.validation_ds.packed_sequence")


def run_dir_of(cfg: RunConfig) -> Path:
    """``exp_manager.explicit_log_dir``, else ``exp_manager.exp_dir/<name>`` (NeMo's layout)."""
    em = cfg.exp_manager
    if em.explicit_log_dir:
        return Path(em.explicit_log_dir)
    return Path(em.exp_dir or "results") / (em.name or cfg.name)


def _kill_hook(step: int) -> None:
    # Test hook: simulate a crash right after the checkpoint of step k (SIGKILL, nothing flushed).
    if os.environ.get("MEGATRON_ALIGN_TEST_KILL_AFTER_STEP") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


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
        model_cfg = _merge_architecture(m, restored, source=m.restore_from_path)
        _check_context(m.data, model_cfg, m.restore_from_path)
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
    val_batches = _val_microbatches(val_ds, sft.limit_val_batches, m.data.validation_ds, dp_rank, dp,
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
                _kill_hook(step)
    finally:
        metrics.close()
    summary["steps"] = step
    summary["data_report"] = train_ds.report(logger)  # skipped / dropped / truncated counts per file
    return summary


def _merge_architecture(requested: ModelConfig, restored: ModelConfig, source: str = "the checkpoint",
                        ) -> ModelConfig:
    """The restored checkpoint decides the architecture; the command line decides layout and training. An
    architecture key the user set to something else is named in one warning line (it is not used)."""
    keep = {f.name for f in dataclasses.fields(ModelConfig)} - {
        "tensor_model_parallel_size", "pipeline_model_parallel_size", "sequence_parallel",
        "restore_from_path", "optim", "data", "micro_batch_size", "global_batch_size", "hidden_dropout",
        "attention_dropout", "seed", "megatron_amp_O2", "activations_checkpoint_granularity",
        "activations_checkpoint_method", "activations_checkpoint_num_layers"}
    defaults = type(requested)()
    ignored = []
    for k in sorted(keep):
        asked, saved = getattr(requested, k), getattr(restored, k)
        if asked != getattr(defaults, k) and asked != saved:
            ignored.append(f"model.{k}={asked!r} (checkpoint: {saved!r})")
    if ignored:
        logger.warning("ignored: %s: the architecture comes from %s/model_config.yaml", "; ".join(ignored),
                       source)
    return dataclasses.replace(requested, **{k: getattr(restored, k) for k in keep})


def _check_context(data: DataConfig, model_cfg: ModelConfig, source: str) -> None:
    """Training rows must fit the restored model's context (its position table and training length)."""
    context = min(model_cfg.encoder_seq_length, model_cfg.max_position_embeddings)
    for split in ("train_ds", "validation_ds"):
        ds = getattr(data, split)
        length = ds.max_seq_length
        if length > context and (split == "train_ds" or ds.file_path):  # an unset validation split is unused
            key = f"model.data.{split}.max_seq_length"
            raise ConfigError(f"{key}={length} is longer than the context of {context} tokens of {source} "
                              f"(encoder_seq_length={model_cfg.encoder_seq_length}, max_position_embeddings="
                              f"{model_cfg.max_position_embeddings}): use at most {context}", key=key)


def _val_microbatches(val_ds, limit, vcfg, dp_rank, dp, pad_id, seq_len, collate):
    """This rank's validation micro-batches: the first ``limit`` global batches of the validation set."""
    if val_ds is None or len(val_ds) == 0:
        return []
    n_global = max(1, len(val_ds) // vcfg.global_batch_size)
    if isinstance(limit, int) and not isinstance(limit, bool):
        n = limit
    else:
        n = max(1, math.floor(n_global * float(limit)))
    n = min(n, n_global)
    per_rank = vcfg.global_batch_size // dp
    out = []
    for b in range(n):
        base = b * vcfg.global_batch_size + dp_rank * per_rank
        idx = [(base + i) % len(val_ds) for i in range(per_rank)]
        for i in range(0, per_rank, vcfg.micro_batch_size):
            out.append(collate([val_ds[j] for j in idx[i:i + vcfg.micro_batch_size]], pad_id=pad_id,
                               seq_length=seq_len))
    return out
