"""The reward-model training loop (schema and meanings: ``config/stages/reward_model.py``; losses:
``losses/reward.py``).

Restore the trunk (and with ``load_rm_head_weights`` the head) from
``pretrained_checkpoint.restore_from_path`` or resume the newest complete checkpoint of this run; then for
each step take the global batch at ``consumed_samples`` from the resumable sampler, one guarded optimizer
step, log, validate every ``trainer.rm.val_check_interval`` steps on ``trainer.rm.limit_val_batches``
batches, save every ``trainer.rm.save_interval`` steps and at the end. The final checkpoint is also linked as
``checkpoints/<exp_manager.name>.nemo`` (``megatron_gpt.nemo`` by default), the path NeMo-Aligner's
HelpSteer2-Preference recipe restores stage 2 from.

Metrics (``metrics.jsonl``): ``loss``, ``lr``, ``grad_norm``, ``tokens_per_s``, ``samples_per_s`` (training
steps only); regression adds the batch's ``mae_<attribute>``; pair losses add ``accuracy`` (ties excluded) and
the chosen / rejected / all reward means and the std of all rewards; validation adds ``val_loss`` and, for
regression, ``val_mae_<attribute>`` per attribute (over non-missing cells), for pairs ``val_accuracy``.
A global batch whose label cells are all missing has nothing to learn: its update is skipped, not counted as
non-finite, and logged as ``empty_batch``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from megatron_align.config import ConfigError
from megatron_align.config.schema import run_dir_of
from megatron_align.config.stages.reward_model import RMConfig, merge_architecture, split_files
from megatron_align.data.steerlm.attributes import STEERLM_ATTRIBUTES
from megatron_align.distributed.launch import compute_device
from megatron_align.losses.reward import (
    PAIR_METRICS,
    pair_loss_func,
    regression_loss_func,
    regression_metric_size,
)

logger = logging.getLogger(__name__)


def rm_forward_step(loss_fn, data_iterator, model):
    """megatron forward_step_func: rewards ``[B, A]`` at each row's last real token, then ``loss_fn``."""
    batch = {k: v.to(compute_device()) for k, v in next(data_iterator).items()}
    output = model(batch["tokens"], batch["position_ids"], None, lengths=batch["lengths"])
    return output, partial(loss_fn, batch)


class Objective:
    """Which loss a run trains and how its metric sums read (``losses.reward``)."""

    def __init__(self, cfg: RMConfig):
        m, reg = cfg.model, cfg.model.regression
        self.regression = m.reward_model_type == "regression" and reg.loss_func == "regression"
        self.pairs = not self.regression
        self.rows_per_item = 2 if (self.pairs and m.reward_model_type == "regression") else 1
        self.loss_func = reg.loss_func if m.reward_model_type == "regression" else "regular_bt"
        self.score_attribute = reg.score_attribute if m.reward_model_type == "regression" else 0
        self.mask_val, self.num_attributes = reg.loss_mask_val, reg.num_attributes
        self.metric_size = (regression_metric_size(reg.num_attributes) if self.regression
                            else len(PAIR_METRICS))

    def loss(self, batch: dict, output: torch.Tensor):
        if self.regression:
            return regression_loss_func(batch["labels"], self.mask_val, output)
        return pair_loss_func(batch["preference"], self.loss_func, self.score_attribute, output)

    def reduce(self, sums: dict) -> np.ndarray:
        """All-reduce this rank's ``rm`` sums (zeros on non-last pipeline stages); every rank calls it."""
        local = sums.get("rm")
        vec = torch.zeros(self.metric_size, dtype=torch.float64) if local is None else local.double()
        vec = vec.to(compute_device())
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(vec)
        return vec.cpu().numpy()

    def metrics(self, vec: np.ndarray, prefix: str = "") -> dict:
        """Readable metrics from reduced sums (ratios only: tensor-parallel ranks count alike)."""
        out = {}
        if self.regression:
            a = self.num_attributes
            names = STEERLM_ATTRIBUTES if a == len(STEERLM_ATTRIBUTES) else [f"attr{i}" for i in range(a)]
            for name, err, n in zip(names, vec[:a], vec[a:]):
                if n > 0:
                    out[f"{prefix}mae_{name}"] = float(err / n)
            return out
        v = dict(zip(PAIR_METRICS, vec))
        if v["decided"] > 0:
            out[f"{prefix}accuracy"] = float(v["correct"] / v["decided"])
        if v["pairs"] > 0:
            n = 2 * v["pairs"]
            mean = (v["chosen_sum"] + v["rejected_sum"]) / n
            var = max(0.0, (v["chosen_sq_sum"] + v["rejected_sq_sum"]) / n - mean * mean)
            out[f"{prefix}rewards_chosen_mean"] = float(v["chosen_sum"] / v["pairs"])
            out[f"{prefix}rewards_rejected_mean"] = float(v["rejected_sum"] / v["pairs"])
            out[f"{prefix}rewards_all_mean"] = float(mean)
            out[f"{prefix}rewards_all_std"] = float(np.sqrt(var))  # population std of all scores
        return out


def build_rm_datasets(cfg: RMConfig, tokenizer, seq_length: int, objective: Objective):
    """``(train, {validation name: dataset})`` from ``model.data.data_prefix``."""
    from megatron_align.data.reward import ComparisonFile, RegressionFile, RMDataset, RMRules

    m, data = cfg.model, cfg.model.data
    rules = RMRules(seq_length=seq_length, num_attributes=objective.num_attributes,
                    mask_val=objective.mask_val, append_eod=data.append_eod, on_bad_record=data.on_bad_record,
                    pairs=objective.pairs and m.reward_model_type == "regression")
    cls = RegressionFile if m.reward_model_type == "regression" else ComparisonFile

    def build(files, weights):
        return RMDataset([cls(p, tokenizer, rules, index_dir=data.index_mapping_dir) for p in files], weights,
                         seed=m.seed)

    splits = split_files(data.data_prefix)
    train = build(*splits.pop("train"))
    return train, {name: build(*spec) for name, spec in sorted(splits.items())}


class _Shuffled:
    """A seeded random order of a validation dataset (``trainer.rm.val_random_sampler``)."""

    def __init__(self, ds, seed: int):
        self.ds, self.order = ds, np.random.default_rng([seed, 0xA1]).permutation(len(ds))

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return self.ds[int(self.order[i])]


def _link_final(ckpt_dir: Path, target: Path, name: str) -> None:
    """``<ckpt_dir>/<name>.nemo`` -> the final checkpoint (relative symlink, replaced atomically)."""
    link = ckpt_dir / f"{name}.nemo"
    tmp = ckpt_dir / f".{name}.nemo.tmp{os.getpid()}"
    try:
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(target.name, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError as e:
        logger.warning("could not link %s -> %s (%s)", link, target.name, e)


def run_reward_model(cfg: RMConfig) -> dict:
    """Train a reward model; returns a summary (losses, validation metrics, checkpoint paths)."""
    from megatron.core import parallel_state as ps

    from megatron_align.data.reward import collate_rm
    from megatron_align.distributed import start
    from megatron_align.models.checkpoint import read_model_config
    from megatron_align.models.reward import build_reward_model, load_reward_weights
    from megatron_align.tokenizers import load_tokenizer, load_tokenizer_from_dir
    from megatron_align.training.checkpointing import CheckpointManager
    from megatron_align.training.lr import apply_lr, lr_at
    from megatron_align.training.metrics import MetricsWriter
    from megatron_align.training.run import kill_hook, validation_microbatches
    from megatron_align.training.sampler import GlobalBatchSampler, total_steps
    from megatron_align.training.setup import prepare_for_training
    from megatron_align.training.step import NonFiniteError, evaluate, train_step

    m, rm, em = cfg.model, cfg.trainer.rm, cfg.exp_manager
    env = start(m.tensor_model_parallel_size, m.pipeline_model_parallel_size, seed=m.seed)
    run_dir = run_dir_of(cfg)
    rank0 = env.rank == 0
    restore = cfg.restore_path()

    # --- model config and tokenizer: from the restored checkpoint when there is one ---
    if restore:
        model_cfg = merge_architecture(m, read_model_config(restore))
        tokenizer_dir = Path(restore) / "tokenizer"
        tokenizer = load_tokenizer_from_dir(str(tokenizer_dir))
    else:
        if not m.tokenizer.model:
            raise ConfigError("model.tokenizer.model is not set (and no "
                              "pretrained_checkpoint.restore_from_path to take it from)",
                              key="model.tokenizer.model")
        tokenizer = load_tokenizer(m.tokenizer.library, m.tokenizer.model)
        model_cfg = dataclasses.replace(m, vocab_size=m.vocab_size or tokenizer.vocab_size,
                                        num_attributes=m.regression.num_attributes)
        if rank0:
            tokenizer.save(str(run_dir / "tokenizer"))
        torch.distributed.barrier()
        tokenizer_dir = run_dir / "tokenizer"
    seq_len = m.data.seq_length or model_cfg.encoder_seq_length
    pp = m.pipeline_model_parallel_size
    pad_len = seq_len if pp > 1 else None  # pipeline stages exchange fixed [S, B, H] shapes

    # --- data: items are rows (regression) or pairs; batch sizes count rows (regression) or pairs ---
    obj = Objective(cfg)
    train_ds, val_sets = build_rm_datasets(cfg, tokenizer, seq_len, obj)
    gbs, mbs = m.global_batch_size // obj.rows_per_item, m.micro_batch_size // obj.rows_per_item
    rows_per_mb = m.micro_batch_size * (2 if m.reward_model_type == "binary_ranking" else 1)
    dp_rank, dp = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    sampler = GlobalBatchSampler(len(train_ds), gbs, mbs, dp_rank, dp, seed=m.seed,
                                 shuffle=rm.train_random_sampler)
    max_steps = total_steps(len(train_ds), gbs, rm.max_epochs, rm.max_steps)

    # --- model, optimizer, restore or resume ---
    model = build_reward_model(model_cfg, precision=cfg.trainer.precision)
    ddp, optimizer = prepare_for_training(model, m.optim, cfg.trainer.precision,
                                          clip_grad=rm.gradient_clip_val)
    params = em.checkpoint_callback_params
    ckpts = CheckpointManager(run_dir, save_top_k=params.save_top_k, monitor=params.monitor, mode=params.mode)
    state = ckpts.resume(model, optimizer) if em.resume_if_exists else None
    if state is None and restore:
        load_reward_weights(restore, model, load_head=m.regression.load_rm_head_weights)
        optimizer.reload_model_params()  # fp32 master weights from the restored weights
    state = state or {"step": 0, "consumed_samples": 0, "nonfinite_steps": 0}
    step, consumed = int(state["step"]), int(state["consumed_samples"])  # consumed: rows / pairs, as NeMo

    metrics = MetricsWriter(run_dir, enabled=rank0, total_steps=max_steps, start_step=step, desc="rm",
                            tensorboard=em.create_tensorboard_logger, wandb=em.create_wandb_logger,
                            wandb_kwargs=dict(em.wandb_logger_kwargs), config={"max_steps": max_steps})
    vcfg = SimpleNamespace(global_batch_size=gbs, micro_batch_size=mbs)
    val_batches = {}
    for name, ds in val_sets.items():
        ds = _Shuffled(ds, m.seed) if rm.val_random_sampler else ds
        val_batches[name] = validation_microbatches(ds, rm.limit_val_batches, vcfg, dp_rank, dp,
                                                    tokenizer.pad_id, pad_len, collate_rm)
    fwd = partial(rm_forward_step, obj.loss)

    def validate(row: dict) -> None:
        for name, batches in val_batches.items():
            prefix = "val_" if name == "validation" else f"{name}_"
            loss, sums = evaluate(ddp, batches, seq_len, rows_per_mb, forward_step_func=fwd)
            row[f"{prefix}loss"] = loss
            row.update(obj.metrics(obj.reduce(sums), prefix))

    summary: dict = {"run_dir": str(run_dir), "resumed_from_step": step, "losses": {}, "val": {}}
    consecutive_bad = int(state.get("consecutive_nonfinite", 0))
    train_time, tokens_seen, rows_seen = 0.0, 0.0, 0  # throughput counts training steps only
    try:
        while step < max_steps:
            t0 = time.perf_counter()
            lr = lr_at(step, m.optim, max_steps)
            apply_lr(optimizer, lr)
            microbatches = [collate_rm([train_ds[i] for i in ix], tokenizer.pad_id, pad_len)
                            for ix in sampler.microbatches(consumed // obj.rows_per_item)]
            res = train_step(ddp, optimizer, microbatches, seq_len, rows_per_mb, forward_step_func=fwd)
            vec = obj.reduce(res.sums)
            step += 1
            consumed += m.global_batch_size
            tokens = torch.tensor([float(sum(int(b["lengths"].sum()) for b in microbatches))],
                                  device=compute_device())
            torch.distributed.all_reduce(tokens, group=ps.get_data_parallel_group())
            tokens_seen += float(tokens)
            rows_seen += rows_per_mb * len(microbatches) * dp
            train_time += time.perf_counter() - t0
            empty = res.num_tokens == 0  # every label cell of the global batch missing: nothing to learn
            bad = res.skipped and not empty
            consecutive_bad = consecutive_bad + 1 if bad else 0
            state["nonfinite_steps"] = int(state.get("nonfinite_steps", 0)) + int(bad)
            if consecutive_bad >= rm.max_consecutive_nonfinite:
                raise NonFiniteError(
                    f"{consecutive_bad} steps in a row had NaN/Inf loss or gradients (last at step {step}): "
                    "lower model.optim.lr, check the data, or raise trainer.rm.max_consecutive_nonfinite")
            loss = 0.0 if empty else res.loss
            row = {"loss": loss, "lr": lr, "grad_norm": res.grad_norm, "skipped": int(bad),
                   "empty_batch": int(empty), "consumed_samples": consumed,
                   "tokens_per_s": tokens_seen / train_time, "samples_per_s": rows_seen / train_time,
                   **obj.metrics(vec)}
            summary["losses"][step] = loss
            if val_batches and (step % rm.val_check_interval == 0 or step == max_steps):
                validate(row)
                summary["val"][step] = {k: v for k, v in row.items() if k.startswith("val")}
            metrics.log(step, row)
            metrics.progress(step, loss=loss, lr=lr, tok_s=row["tokens_per_s"])
            if step % rm.save_interval == 0 or step == max_steps:
                train_state = {"step": step, "consumed_samples": consumed,
                               "epoch": consumed // (len(train_ds) * obj.rows_per_item),
                               "nonfinite_steps": state["nonfinite_steps"],
                               "consecutive_nonfinite": consecutive_bad}
                path = ckpts.save(step, model, model_cfg, tokenizer_dir, optimizer, train_state,
                                  {"val_loss": row.get("val_loss"), "loss": loss})
                summary["last_checkpoint"] = str(path)
                kill_hook(step)
    finally:
        metrics.close()
    if rank0 and summary.get("last_checkpoint") and params.save_nemo_on_train_end:
        _link_final(ckpts.dir, Path(summary["last_checkpoint"]), em.name or cfg.name)
    summary["steps"] = step
    summary["data_report"] = train_ds.report(logger)
    return summary
