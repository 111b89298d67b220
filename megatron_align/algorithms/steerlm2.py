"""SteerLM 2.0 training (seed 000; schema ``config/stages/steerlm2.py``; formulas ``losses/steerlm2.py``;
records ``data/steerlm2.py``).

Q_theta starts from ``model.restore_from_path`` (the SteerLM model Q') and is trained toward
P(y|a,x) ~ P(a|x,y) P(y|x) with the estimator -sum_i (w'_i - b'_i) grad log Q_theta(y_i|a,x) over each
prompt's responses. Each step, on this rank's ``global_batch_size / DP`` prompts (all their responses,
groups of any size):

1. a no-grad pass of the current policy over the rows in micro-batches of ``model.steerlm2.
   forward_micro_batch_size`` gives log Q_theta per response, so b' = softmax(log Q_theta - log Q'), and with
   the records' w' the coefficients (w' - b') / N_g (``row_coefficients``);
2. one guarded optimizer step over micro-batches of ``model.steerlm2.micro_batch_size`` rows: each row adds
   ``-coefficient * log Q_theta(y)``, each group counts once in the divisor, so the loss is the mean over the
   global batch's prompts of L_g whatever the split (a group may span micro-batches).

With pipeline parallelism every micro-batch has the same rows (the last padded with rows of weight 0) and rows
are padded to ``max_seq_length``. Metrics (before the step's update): ``loss``, ``distance`` = KL(w' || b')
(NeMo-Aligner's name; exact here, NeMo's adds 1e-8 inside the logs), ``entropy_w`` and ``ess_w`` (entropy
and effective sample size 1 / sum w'^2 of w', mean over prompts; an ESS near 1 means one response takes all
the weight), ``logq_drift`` (mean log Q_theta - log Q' per response: ~0 at step 0 when the data were sampled
from this checkpoint at temperature 1), ``responses_per_prompt``; ``val_`` prefixed for validation.
"""

from __future__ import annotations

import dataclasses
import logging
from functools import partial
from types import SimpleNamespace

import numpy as np
import torch

from megatron_align.config import ModelConfig
from megatron_align.config.stages.steerlm2 import SteerLM2Config

logger = logging.getLogger(__name__)

METRICS = ("groups", "distance", "entropy_w", "ess_w", "logq_drift", "rows")
"""The per-step sums, in this order."""


def _restored_config(m, path: str) -> ModelConfig:
    from megatron_align.config.restore import check_context
    from megatron_align.training.run import restored_gpt_config

    model_cfg = restored_gpt_config(m, path, "model.restore_from_path",
                                    "SteerLM 2.0 starts from the SteerLM (attribute-conditioned SFT) model")
    check_context(m.data, model_cfg, path)
    return model_cfg


def build_datasets(cfg: SteerLM2Config, tokenizer):
    """``(train, validation or None)`` over ``model.data.{train_ds,validation_ds}.file_path``."""
    from megatron_align.config.data import file_paths
    from megatron_align.data.reward import RMDataset
    from megatron_align.data.steerlm2 import SteerLM2File, SteerLM2Rules

    m = cfg.model

    def build(ds):
        rules = SteerLM2Rules(max_seq_length=ds.max_seq_length, chat_prompt_tokens=m.data.chat_prompt_tokens,
                              overlong=m.steerlm2.overlong, on_bad_record=ds.on_bad_record)
        files = [SteerLM2File(p, tokenizer, rules, index_dir=ds.index_mapping_dir)
                 for p in file_paths(ds.file_path)]
        return RMDataset(files, ds.concat_sampling_probabilities, seed=m.seed)

    val = build(m.data.validation_ds) if m.data.validation_ds.file_path else None
    return build(m.data.train_ds), val


def _chunks(rows: list, size: int, pad: bool) -> list:
    """``rows`` in consecutive chunks of ``size``; with ``pad`` the last is filled with ``None`` (padding)."""
    out = [rows[i:i + size] for i in range(0, len(rows), size)]
    if pad and out and len(out[-1]) < size:
        out[-1] = out[-1] + [None] * (size - len(out[-1]))
    return out


class SteerLM2Step:
    """Turns a rank's prompts into the step's micro-batches (coefficients attached) and metric sums."""

    def __init__(self, cfg: SteerLM2Config, pad_id: int, pipeline: bool):
        s, ds = cfg.model.steerlm2, cfg.model.data.train_ds
        self.mbs, self.fmbs = s.micro_batch_size, s.forward_micro_batch_size
        self.normalization = s.length_normalization
        self.pad_id, self.pipeline = pad_id, pipeline
        self.seq_len = ds.max_seq_length if pipeline else None  # rows padded to it (fixed PP shapes)
        self.max_len = ds.max_seq_length
        self.multiple = ds.pad_seq_length_to_mult

    def _collate(self, rows: list, extra: dict | None = None) -> dict:
        from megatron_align.data.preference_dataset import collate_rows

        real = [r for r in rows if r is not None]
        seqs = [r[0] if r is not None else real[0][0] for r in rows]
        targets = [r[1] if r is not None else np.zeros_like(real[0][1]) for r in rows]  # padding: no target
        batch = collate_rows(seqs, targets, self.pad_id, self.seq_len, self.multiple)
        batch.update(extra or {})
        return batch

    def prepare(self, ddp, items: list) -> tuple[list, torch.Tensor]:
        """(micro-batches with ``row_coef`` and ``group_start``, metric sums ``float64 [6]``)."""
        from megatron.core import parallel_state as ps

        from megatron_align.kernels.group_softmax import group_sizes_to_offsets
        from megatron_align.losses.steerlm2 import row_coefficients, steerlm2_weights, weight_stats
        from megatron_align.training.sequence_logps import score_rows

        rows = [(s, t) for it in items for s, t in zip(it.sequences, it.targets)]
        offsets = group_sizes_to_offsets(torch.tensor([len(it.sequences) for it in items]))  # [G+1]
        log_p_a = torch.from_numpy(np.concatenate([it.log_p_a for it in items]))  # [M] float64
        log_p_y = torch.from_numpy(np.concatenate([it.log_p_y for it in items]))
        log_q_prime = torch.from_numpy(np.concatenate([it.log_q_prime for it in items]))
        lengths = torch.tensor([float(t[1:].sum()) for _, t in rows], dtype=torch.float64)  # trained tokens
        m = len(rows)

        fwd = [self._collate(c) for c in _chunks(rows, self.fmbs, self.pipeline)]
        scored = score_rows(ddp, fwd, self.max_len, self.fmbs)
        log_q_theta = torch.cat(scored)[:m].double()  # [M] (zeros off the last pipeline stage)
        w = steerlm2_weights(log_p_a, log_p_y, log_q_prime, log_q_theta, offsets)
        coef = row_coefficients(w.weights.double(), offsets, lengths, self.normalization)  # [M]
        entropy, ess = weight_stats(w.log_w_prime.double(), offsets)
        sums = torch.tensor([len(items), float(w.kl.sum()), float(entropy.sum()), float(ess.sum()),
                             float((log_q_theta - log_q_prime).sum()), m], dtype=torch.float64)
        if not ps.is_pipeline_last_stage(ignore_virtual=True):
            sums.zero_()
        starts = torch.zeros(m)
        starts[offsets[:-1]] = 1.0
        batches, at = [], 0
        for chunk in _chunks(rows, self.mbs, self.pipeline):
            n = sum(r is not None for r in chunk)
            pad = len(chunk) - n
            batches.append(self._collate(chunk, {
                "row_coef": torch.cat([coef[at:at + n].float(), torch.zeros(pad)]),
                "group_start": torch.cat([starts[at:at + n], torch.zeros(pad)])}))
            at += n
        return batches, sums

    @staticmethod
    def loss_func(batch: dict, logits: torch.Tensor):
        from megatron_align.losses.reduce import megatron_loss
        from megatron_align.training.sequence_logps import sequence_logps

        logq = sequence_logps(logits, batch)  # [r] with gradient
        loss_sum = -(batch["row_coef"].to(logq.dtype) * logq).sum()
        return megatron_loss(loss_sum, batch["group_start"].sum())

    def forward_step(self, data_iterator, model):
        from megatron_align.training.sequence_logps import on_device

        batch = on_device(next(data_iterator))
        logits = model(batch["tokens"], batch["position_ids"], None)  # [r, S, V/tp] on the last stage
        return logits, partial(self.loss_func, batch)


def reduce_metrics(sums: torch.Tensor, prefix: str = "") -> dict:
    """Means over prompts (responses for the drift) from this rank's sums, summed over data-parallel ranks."""
    from megatron.core import parallel_state as ps

    from megatron_align.distributed.launch import compute_device

    vec = sums.to(compute_device())
    torch.distributed.all_reduce(vec)
    v = dict(zip(METRICS, (vec.cpu() / ps.get_tensor_model_parallel_world_size()).tolist()))
    g = v["groups"]
    if g <= 0:
        return {}
    out = {"distance": v["distance"] / g, "entropy_w": v["entropy_w"] / g, "ess_w": v["ess_w"] / g,
           "logq_drift": v["logq_drift"] / max(v["rows"], 1), "responses_per_prompt": v["rows"] / g}
    return {f"{prefix}{k}": x for k, x in out.items()}


def run_steerlm2(cfg: SteerLM2Config) -> dict:
    """Train; returns a summary (losses and validation metrics per step, checkpoint paths)."""
    from megatron.core import parallel_state as ps

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
    from megatron_align.training.step import evaluate, train_step

    m, loop = cfg.model, cfg.trainer.sft
    tds, vds = m.data.train_ds, m.data.validation_ds
    run = start_run(cfg, m.restore_from_path, "model.restore_from_path", partial(_restored_config, m),
                    lambda tok: dataclasses.replace(m, vocab_size=m.vocab_size or tok.vocab_size))
    pp = m.pipeline_model_parallel_size > 1
    train_ds, val_ds = build_datasets(cfg, run.tokenizer)
    gbs = tds.global_batch_size
    dp_rank, dp = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    sampler = GlobalBatchSampler(len(train_ds), gbs, gbs // dp, dp_rank, dp, seed=m.seed,
                                 shuffle=tds.shuffle)
    max_steps = total_steps(len(train_ds), gbs, loop.max_epochs, loop.max_steps)

    model = build_gpt_model(run.model_cfg, precision=cfg.trainer.precision)
    trainee = build_trainee(cfg, run, model, loop, partial(load_checkpoint, m.restore_from_path))
    step = SteerLM2Step(cfg, run.tokenizer.pad_id, pp)
    seq_len = tds.max_seq_length

    val_items = []  # per validation global batch, this rank's prompts (the b' pass needs them whole)
    if val_ds is not None and len(val_ds):
        vcfg = SimpleNamespace(global_batch_size=vds.global_batch_size,
                               micro_batch_size=vds.global_batch_size // dp)
        val_items = validation_microbatches(val_ds, loop.limit_val_batches, vcfg, dp_rank, dp, None, None,
                                            lambda items, pad_id, seq_length: list(items))

    def step_fn(consumed: int) -> StepOutcome:
        items = [train_ds[i] for ix in sampler.microbatches(consumed) for i in ix]
        batches, sums = step.prepare(trainee.ddp, items)
        res = train_step(trainee.ddp, trainee.optimizer, batches, seq_len, step.mbs,
                         forward_step_func=step.forward_step)
        tokens = float(sum(int(b["lengths"].sum()) for b in batches))
        return StepOutcome(res, tokens=tokens, samples=gbs, row=reduce_metrics(sums))

    def validate() -> dict:
        losses, total = [], torch.zeros(len(METRICS), dtype=torch.float64)
        for items in val_items:
            batches, sums = step.prepare(trainee.ddp, items)
            loss, _ = evaluate(trainee.ddp, batches, seq_len, step.mbs, forward_step_func=step.forward_step)
            losses.append(loss)
            total += sums
        return {"val_loss": float(np.mean(losses)), **reduce_metrics(total, "val_")}

    summary = train_loop(cfg, run, trainee, stage="sft", loop=loop, max_steps=max_steps,
                         global_batch_size=gbs, step_fn=step_fn, validate=validate if val_items else None,
                         epoch_of=lambda c: c // len(train_ds))
    summary["data_report"] = train_ds.report(logger)
    return summary
