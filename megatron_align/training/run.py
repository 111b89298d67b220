"""The run skeleton every training stage shares; a stage's loop file keeps only what is its own.

1. ``start_run``: processes and parallel groups, the run directory, the tokenizer and model config (the
   restored checkpoint's, or a fresh model's with the tokenizer saved into the run);
2. ``build_trainee``: megatron DDP and optimizer around the stage's model, then resume the newest complete
   checkpoint of this run (weights, optimizer, RNG, step, consumed samples) or restore the stage's weights;
3. ``train_loop``: for each step one call of the stage's ``step_fn`` at ``consumed_samples`` (the guarded
   optimizer step), non-finite counting (``max_consecutive_nonfinite`` skips in a row stop the run), metrics
   and progress, validation every ``val_check_interval`` steps and at the end, a checkpoint every
   ``save_interval`` steps and at the end, and the crash hook of the resume tests.

Throughput (``tokens_per_s``, ``samples_per_s``) counts the time of training steps only.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from megatron_align.config import ConfigError, ModelConfig
from megatron_align.config.schema import LoopSection, run_dir_of


def kill_hook(step: int) -> None:
    """Test hook: a crash right after the checkpoint of step ``MEGATRON_ALIGN_TEST_KILL_AFTER_STEP`` (SIGKILL,
    nothing flushed), to test that a resumed run equals an uninterrupted one."""
    if os.environ.get("MEGATRON_ALIGN_TEST_KILL_AFTER_STEP") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class RunStart:
    """What every stage has once its processes are up."""

    env: Any  # distributed.start's environment (rank, world size, device)
    run_dir: Path
    rank0: bool
    tokenizer: Any
    tokenizer_dir: Path  # copied into every checkpoint
    model_cfg: ModelConfig  # the architecture the run builds (the restored one when restoring)


def start_run(cfg, restore: Optional[str], restore_key: str,
              restored_config: Callable[[str], ModelConfig],
              fresh_config: Callable[[Any], ModelConfig]) -> RunStart:
    """Start processes, then take tokenizer and architecture from ``restore`` (``restored_config(path)``) or,
    without one, the tokenizer from ``model.tokenizer.*`` and ``fresh_config(tokenizer)``."""
    import torch

    from megatron_align.distributed import start
    from megatron_align.tokenizers import load_tokenizer, load_tokenizer_from_dir

    m = cfg.model
    env = start(m.tensor_model_parallel_size, m.pipeline_model_parallel_size, seed=m.seed)
    run_dir = run_dir_of(cfg)
    rank0 = env.rank == 0
    if restore:
        model_cfg = restored_config(restore)
        tokenizer_dir = Path(restore) / "tokenizer"
        tokenizer = load_tokenizer_from_dir(tokenizer_dir)
    else:
        if not m.tokenizer.model:
            raise ConfigError(f"model.tokenizer.model is not set (and no {restore_key} to take it from)",
                              key="model.tokenizer.model")
        tokenizer = load_tokenizer(m.tokenizer.library, m.tokenizer.model)
        model_cfg = fresh_config(tokenizer)
        if rank0:
            tokenizer.save(run_dir / "tokenizer")
        torch.distributed.barrier()
        tokenizer_dir = run_dir / "tokenizer"
    return RunStart(env, run_dir, rank0, tokenizer, tokenizer_dir, model_cfg)


def restored_gpt_config(m: ModelConfig, path: str, key: str, why: str) -> ModelConfig:
    """The architecture of the GPT checkpoint at ``path`` (named by config ``key``) with this run's layout and
    training settings; a ``ConfigError`` naming ``key`` when it is another kind of model (``why``: what the
    stage starts from, for the message)."""
    from megatron_align.config.restore import merge_architecture
    from megatron_align.models.checkpoint import checkpoint_kind, read_model_config

    kind = checkpoint_kind(path)
    if kind != "gpt":
        raise ConfigError(f"{key}={path} is a {kind} model checkpoint; {why}", key=key)
    return merge_architecture(m, read_model_config(path), source=path)


@dataclass
class Trainee:
    """The model being trained, its optimizer, its checkpoints and the train state it starts from."""

    model: Any
    ddp: Any
    optimizer: Any
    ckpts: Any  # training.checkpointing.CheckpointManager
    state: dict  # step, consumed_samples, nonfinite_steps (and consecutive_nonfinite when resumed)


def build_trainee(cfg, run: RunStart, model, loop: LoopSection,
                  restore_weights: Optional[Callable[[Any], None]]) -> Trainee:
    """DDP + optimizer around ``model``; resume this run (``exp_manager.resume_if_exists``) or, when there is
    nothing to resume, ``restore_weights(model)`` (None: train from scratch)."""
    from megatron_align.training.checkpointing import CheckpointManager
    from megatron_align.training.setup import prepare_for_training

    m, em = cfg.model, cfg.exp_manager
    ddp, optimizer = prepare_for_training(model, m.optim, cfg.trainer.precision,
                                          clip_grad=loop.gradient_clip_val)
    params = em.checkpoint_callback_params
    ckpts = CheckpointManager(run.run_dir, save_top_k=params.save_top_k, monitor=params.monitor,
                              mode=params.mode)
    state = ckpts.resume(model, optimizer) if em.resume_if_exists else None
    if state is None and restore_weights is not None:
        restore_weights(model)
        optimizer.reload_model_params()  # fp32 master weights from the restored (bf16) weights
    state = state or {"step": 0, "consumed_samples": 0, "nonfinite_steps": 0}
    return Trainee(model, ddp, optimizer, ckpts, state)


@dataclass
class StepOutcome:
    """What a stage's ``step_fn`` reports about one optimizer step."""

    result: Any  # training.step.StepResult
    tokens: float  # tokens of the global batch counted for tokens_per_s
    samples: int = 0  # rows of the global batch counted for samples_per_s (0: not reported)
    empty: bool = False  # nothing to learn (every label missing): skipped, but not counted as non-finite
    row: dict = field(default_factory=dict)  # the stage's own metrics of this step


def train_loop(cfg, run: RunStart, trainee: Trainee, *, stage: str, loop: LoopSection, max_steps: int,
               global_batch_size: int, step_fn: Callable[[int], StepOutcome],
               validate: Optional[Callable[[], dict]], epoch_of: Callable[[int], int]) -> dict:
    """Train from ``trainee.state`` to ``max_steps``.

    ``step_fn(consumed_samples)`` runs one guarded optimizer step on the global batch at that position;
    ``validate()`` returns the validation metrics (keys as logged); ``epoch_of(consumed)`` the epoch stored in
    checkpoints. Returns the summary: ``losses`` and ``val`` per step, ``last_checkpoint``, ``steps``.
    """
    from megatron_align.training.lr import apply_lr, lr_at
    from megatron_align.training.metrics import MetricsWriter
    from megatron_align.training.step import NonFiniteError

    em, optim, state = cfg.exp_manager, cfg.model.optim, trainee.state
    step, consumed = int(state["step"]), int(state["consumed_samples"])
    metrics = MetricsWriter(run.run_dir, enabled=run.rank0, total_steps=max_steps, start_step=step,
                            desc=stage, tensorboard=em.create_tensorboard_logger,
                            wandb=em.create_wandb_logger, wandb_kwargs=dict(em.wandb_logger_kwargs),
                            config={"max_steps": max_steps})
    summary: dict = {"run_dir": str(run.run_dir), "resumed_from_step": step, "losses": {}, "val": {}}
    consecutive_bad = int(state.get("consecutive_nonfinite", 0))
    train_time, tokens_seen, samples_seen = 0.0, 0.0, 0
    try:
        while step < max_steps:
            t0 = time.perf_counter()
            lr = lr_at(step, optim, max_steps)
            apply_lr(trainee.optimizer, lr)
            out = step_fn(consumed)
            step += 1
            consumed += global_batch_size
            tokens_seen += out.tokens
            samples_seen += out.samples
            train_time += time.perf_counter() - t0
            res = out.result
            bad = bool(res.skipped) and not out.empty
            consecutive_bad = consecutive_bad + 1 if bad else 0
            state["nonfinite_steps"] = int(state.get("nonfinite_steps", 0)) + int(bad)
            if consecutive_bad >= loop.max_consecutive_nonfinite:
                raise NonFiniteError(
                    f"{consecutive_bad} steps in a row had NaN/Inf loss or gradients (last at step {step}): "
                    "lower model.optim.lr, check the data, or raise "
                    f"trainer.{stage}.max_consecutive_nonfinite")
            loss = 0.0 if out.empty else res.loss
            row = {"loss": loss, "lr": lr, "grad_norm": res.grad_norm, "skipped": int(bad),
                   "consumed_samples": consumed, "tokens_per_s": tokens_seen / max(train_time, 1e-9)}
            if samples_seen:
                row["samples_per_s"] = samples_seen / max(train_time, 1e-9)
            row.update(out.row)
            summary["losses"][step] = loss
            if validate is not None and (step % loop.val_check_interval == 0 or step == max_steps):
                val = validate()
                row.update(val)
                summary["val"][step] = val
            metrics.log(step, row)
            metrics.progress(step, loss=loss, lr=lr, tok_s=row["tokens_per_s"])
            if step % loop.save_interval == 0 or step == max_steps:
                train_state = {"step": step, "consumed_samples": consumed, "epoch": epoch_of(consumed),
                               "nonfinite_steps": state["nonfinite_steps"],
                               "consecutive_nonfinite": consecutive_bad}
                scores = {k: v for k, v in row.items() if isinstance(v, (int, float))}  # any logged metric
                path = trainee.ckpts.save(step, trainee.model, run.model_cfg, run.tokenizer_dir,
                                          trainee.optimizer, train_state,
                                          {**scores, "step": step, "global_step": step})
                summary["last_checkpoint"] = str(path)
                kill_hook(step)
    finally:
        metrics.close()
    summary["steps"] = step
    return summary


def validation_microbatches(val_ds, limit, vcfg, dp_rank, dp, pad_id, seq_len, collate):
    """This rank's validation micro-batches: the first ``limit`` global batches of the validation set.

    ``collate(samples, pad_id=..., seq_length=seq_len)`` makes one micro-batch (``seq_len`` None: rows padded
    to the longest, as the collate function rounds)."""
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
