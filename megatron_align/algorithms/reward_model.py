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
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

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
    from megatron_align.models.checkpoint import read_model_config
    from megatron_align.models.reward import build_reward_model
    from megatron_align.training.run import (
        StepOutcome,
        build_trainee,
        start_run,
        train_loop,
        validation_microbatches,
    )
    from megatron_align.training.sampler import GlobalBatchSampler, total_steps
    from megatron_align.training.step import evaluate, train_step

    m, rm = cfg.model, cfg.trainer.rm
    restore = cfg.restore_path()
    run = start_run(cfg, restore, "pretrained_checkpoint.restore_from_path",
                    lambda path: merge_architecture(m, read_model_config(path)),
                    lambda tok: dataclasses.replace(m, vocab_size=m.vocab_size or tok.vocab_size,
                                                    num_attributes=m.regression.num_attributes))
    seq_len = m.data.seq_length or run.model_cfg.encoder_seq_length
    pad_len = seq_len if m.pipeline_model_parallel_size > 1 else None  # pipeline: fixed [S, B, H] shapes
    pad_id = run.tokenizer.pad_id

    # --- data: items are rows (regression) or pairs; batch sizes count rows (regression) or pairs ---
    obj = Objective(cfg)
    train_ds, val_sets = build_rm_datasets(cfg, run.tokenizer, seq_len, obj)
    gbs, mbs = m.global_batch_size // obj.rows_per_item, m.micro_batch_size // obj.rows_per_item
    rows_per_mb = m.micro_batch_size * (2 if m.reward_model_type == "binary_ranking" else 1)
    dp_rank, dp = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    sampler = GlobalBatchSampler(len(train_ds), gbs, mbs, dp_rank, dp, seed=m.seed,
                                 shuffle=rm.train_random_sampler)
    max_steps = total_steps(len(train_ds), gbs, rm.max_epochs, rm.max_steps)

    model = build_reward_model(run.model_cfg, precision=cfg.trainer.precision)
    load_head = m.regression.load_rm_head_weights
    trainee = build_trainee(cfg, run, model, rm,
                            partial(_restore_weights, restore, load_head) if restore else None)
    vcfg = SimpleNamespace(global_batch_size=gbs, micro_batch_size=mbs)
    val_batches = {name: validation_microbatches(_Shuffled(ds, m.seed) if rm.val_random_sampler else ds,
                                                 rm.limit_val_batches, vcfg, dp_rank, dp, pad_id, pad_len,
                                                 collate_rm)
                   for name, ds in val_sets.items()}
    fwd = partial(rm_forward_step, obj.loss)

    def step_fn(consumed: int) -> StepOutcome:  # consumed: rows / pairs, as NeMo counts them
        microbatches = [collate_rm([train_ds[i] for i in ix], pad_id, pad_len)
                        for ix in sampler.microbatches(consumed // obj.rows_per_item)]
        res = train_step(trainee.ddp, trainee.optimizer, microbatches, seq_len, rows_per_mb,
                         forward_step_func=fwd)
        vec = obj.reduce(res.sums)
        empty = res.num_tokens == 0  # every label cell of the global batch missing: nothing to learn
        return StepOutcome(res, tokens=_global_tokens(microbatches),
                           samples=rows_per_mb * len(microbatches) * dp, empty=empty,
                           row={"empty_batch": int(empty), **obj.metrics(vec)})

    def validate() -> dict:
        row = {}
        for name, batches in val_batches.items():
            prefix = "val_" if name == "validation" else f"{name}_"
            loss, sums = evaluate(trainee.ddp, batches, seq_len, rows_per_mb, forward_step_func=fwd)
            row[f"{prefix}loss"] = loss
            row.update(obj.metrics(obj.reduce(sums), prefix))
        return row

    summary = train_loop(cfg, run, trainee, stage="rm", loop=rm, max_steps=max_steps,
                         global_batch_size=m.global_batch_size, step_fn=step_fn,
                         validate=validate if val_batches else None,
                         epoch_of=lambda c: c // (len(train_ds) * obj.rows_per_item))
    params = cfg.exp_manager.checkpoint_callback_params
    if run.rank0 and summary.get("last_checkpoint") and params.save_nemo_on_train_end:
        _link_final(trainee.ckpts.dir, Path(summary["last_checkpoint"]), cfg.exp_manager.name or cfg.name)
    summary["data_report"] = train_ds.report(logger)
    return summary


def _global_tokens(microbatches: list) -> float:
    """Tokens of this step's global batch (this rank's micro-batches, summed over data-parallel ranks)."""
    from megatron.core import parallel_state as ps

    tokens = torch.tensor([float(sum(int(b["lengths"].sum()) for b in microbatches))],
                          device=compute_device())
    torch.distributed.all_reduce(tokens, group=ps.get_data_parallel_group())
    return float(tokens)


def _restore_weights(path: str, load_head: bool, model) -> None:
    from megatron_align.models.reward import load_reward_weights

    load_reward_weights(path, model, load_head=load_head)
