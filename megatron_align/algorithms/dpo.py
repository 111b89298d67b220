"""Preference training: the DPO family and EXO (schema: ``config/stages/dpo.py``; losses:
``losses/preference.py``; forward: ``algorithms/dpo_objective.py``).

1. The policy starts from ``pretrained_checkpoint.restore_from_path`` (a GPT checkpoint at any TP/PP); its
   weights at that moment are the reference, kept in host memory (``models/reference.HostReferencePolicy``:
   no second model on the accelerator). A resumed run restores the policy from its own checkpoint and the
   reference from the pretrained one again.
2. Each step takes the global batch at ``consumed_samples`` (pairs; EXO: prompts) from the resumable sampler;
   a micro-batch holds all sequences of its ``model.micro_batch_size`` items in one ``[R, S]`` batch.
3. Reference log-probs: by default on the fly, the reference swapped in and run over the very micro-batches
   the policy then trains on (bit-identical scoring at step 0); with ``model.dpo.precompute_ref_logprobs``
   once for the whole dataset, stored in the run (``dpo_reference.py``). Validation batches are scored once.
4. One guarded optimizer step on the mean over the global batch's pairs (groups) of
   ``preference_loss_weight * L_pref + sft_loss_weight * L_sft``; validation every
   ``trainer.dpo.val_check_interval`` steps, checkpoints every ``save_interval`` steps and at the end.

Metrics (``metrics.jsonl``; ``val_`` prefixed for validation): ``loss``, ``preference_loss``, ``sft_loss``,
``rewards_chosen_mean`` / ``rewards_rejected_mean`` (beta * r, r the summed - or averaged with
``preference_average_log_probs`` - log-ratio pi / pi_ref of the chosen / rejected response; EXO: of the
best / worst rewarded completion, scaled by beta_pi), ``margin`` (their difference), ``accuracy``
(r_chosen > r_rejected, strict: 0 at step 0), ``kl_chosen`` (sum_t log pi - log pi_ref over the chosen
response: a sequence-level KL(pi || pi_ref) estimate on the data's chosen responses), ``ignored_pairs``
(over-length, kept untrained), and for EXO ``entropy_pf`` (entropy of p_f) and ``kl_pf_pr`` (KL(p_f || p_R)).
"""

from __future__ import annotations

import dataclasses
import logging
from functools import partial
from types import SimpleNamespace

import torch

from megatron_align.algorithms.dpo_objective import PreferenceObjective, reference_logps
from megatron_align.algorithms.dpo_reference import PrecomputedReference, cache_key
from megatron_align.config import ConfigError, ModelConfig
from megatron_align.config.stages.dpo import EXO_LOSSES, DPOConfig
from megatron_align.config.stages.reward_model import split_files

logger = logging.getLogger(__name__)


def _restored_config(m, path: str) -> ModelConfig:
    from megatron_align.training.run import restored_gpt_config

    return restored_gpt_config(m, path, "pretrained_checkpoint.restore_from_path",
                               "preference training starts from a language model (SFT) checkpoint")


def build_preference_datasets(cfg: DPOConfig, tokenizer, seq_length: int):
    """``(train, {validation name: dataset}, train files)`` from ``model.data.data_prefix``."""
    from megatron_align.data.preference_dataset import PreferenceFile, PreferenceRules
    from megatron_align.data.reward import RMDataset

    m, data, d = cfg.model, cfg.model.data, cfg.model.dpo
    rules = PreferenceRules(
        seq_length=seq_length, overlong=data.overlong, append_eod=data.append_eod,
        on_bad_record=data.on_bad_record, default_chosen_reward=data.default_chosen_reward,
        default_rejected_reward=data.default_rejected_reward, chat_prompt_tokens=data.chat_prompt_tokens,
        num_contrastive=d.num_contrastive if d.preference_loss in EXO_LOSSES else 0, loss=d.preference_loss)

    def build(files, weights):
        opened = [PreferenceFile(p, tokenizer, rules, index_dir=data.index_mapping_dir) for p in files]
        return RMDataset(opened, weights, seed=m.seed)

    splits = split_files(data.data_prefix)
    train_files, weights = splits.pop("train")
    return (build(train_files, weights), {name: build(*spec) for name, spec in sorted(splits.items())},
            list(train_files), rules)


def steps_per_epoch(num_items: int, gbs: int, limit) -> int:
    """Global batches per epoch under ``trainer.dpo.limit_train_batches`` (an int, or a fraction)."""
    full = max(1, num_items // gbs)
    if isinstance(limit, bool) or not isinstance(limit, (int, float)):
        return full
    if isinstance(limit, int):
        return max(1, min(full, limit))
    return max(1, min(full, int(full * float(limit))))


def run_dpo(cfg: DPOConfig) -> dict:
    """Train; returns a summary (losses and validation metrics per step, checkpoint paths)."""

    from megatron_align.data.preference_dataset import collate_preference
    from megatron_align.models.checkpoint import load_checkpoint
    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.models.reference import HostReferencePolicy
    from megatron_align.training.run import StepOutcome, build_trainee, start_run, train_loop
    from megatron_align.training.step import train_step

    m, loop, d = cfg.model, cfg.trainer.dpo, cfg.model.dpo
    restore = cfg.restore_path()
    run = start_run(cfg, restore, "pretrained_checkpoint.restore_from_path", partial(_restored_config, m),
                    lambda tok: dataclasses.replace(m, vocab_size=m.vocab_size or tok.vocab_size))
    seq_len = m.data.seq_length or run.model_cfg.encoder_seq_length
    pp = m.pipeline_model_parallel_size > 1
    pad_len = seq_len if pp else None  # pipeline stages exchange fixed [S, R, H] shapes
    multiple = m.data.pad_length_to_multiple_of or 16
    collate = partial(collate_preference, pad_to_multiple_of=multiple)
    pad_id = run.tokenizer.pad_id

    train_ds, val_sets, train_files, rules = build_preference_datasets(cfg, run.tokenizer, seq_len)
    gbs, mbs = m.global_batch_size, m.micro_batch_size
    sampler, per_epoch, max_steps = _sampler(cfg, len(train_ds))

    model = build_gpt_model(run.model_cfg, precision=cfg.trainer.precision)
    load_checkpoint(restore, model)
    reference = HostReferencePolicy(model)  # the pretrained weights, whatever a resume loads next
    trainee = build_trainee(cfg, run, model, loop, None)
    obj = PreferenceObjective(cfg)

    rows = partial(_rows, pp=pp)

    def score_reference(batches: list) -> None:
        with reference.swapped_in(model):
            for b, ref in zip(batches, reference_logps(obj, trainee.ddp, batches, seq_len, rows(batches))):
                b["ref_logps"] = ref

    def make(ix) -> dict:
        return collate([train_ds[i] for i in ix], pad_id, pad_len)

    precomputed = None
    if d.precompute_ref_logprobs:
        key = cache_key(train_files, restore, {**dataclasses.asdict(rules), "temp": obj.temperature,
                                               "pad": multiple, "pad_len": pad_len})
        precomputed = PrecomputedReference.load_or_compute(
            run.run_dir / "ref_logprobs" / f"{key}.npz", train_ds,
            partial(_scored_reference, make, score_reference), d.log_prob_forward_micro_batch_size or mbs)

    val_batches = _validation_batches(cfg, val_sets, pad_id, pad_len, collate, score_reference)

    def step_fn(consumed: int) -> StepOutcome:
        chunks = sampler.microbatches(consumed)
        batches = [make(ix) for ix in chunks]
        if precomputed is not None:
            for b, ix in zip(batches, chunks):
                b["ref_logps"] = precomputed.of(ix)
        else:
            score_reference(batches)
        res = train_step(trainee.ddp, trainee.optimizer, batches, seq_len, rows(batches),
                         forward_step_func=obj.forward_step)
        return StepOutcome(res, tokens=_global_tokens(batches), samples=gbs,
                           row=obj.metrics(obj.reduce(res.sums)))

    validate = partial(_validate, obj, trainee, val_batches, seq_len, rows)
    summary = train_loop(cfg, run, trainee, stage="dpo", loop=loop, max_steps=max_steps,
                         global_batch_size=gbs, step_fn=step_fn,
                         validate=validate if any(val_batches.values()) else None,
                         epoch_of=lambda c: c // (per_epoch * gbs))
    summary["data_report"] = train_ds.report(logger)
    return summary


def _sampler(cfg: DPOConfig, num_items: int):
    """``(sampler, steps per epoch, max steps)``: the resumable global-batch sampler of this rank."""
    from megatron.core import parallel_state as ps

    from megatron_align.training.sampler import GlobalBatchSampler, total_steps

    m, loop = cfg.model, cfg.trainer.dpo
    gbs = m.global_batch_size
    per_epoch = steps_per_epoch(num_items, gbs, loop.limit_train_batches)
    sampler = GlobalBatchSampler(num_items, gbs, m.micro_batch_size, ps.get_data_parallel_rank(),
                                 ps.get_data_parallel_world_size(), seed=m.seed, shuffle=True,
                                 epoch_length=per_epoch * gbs)
    return sampler, per_epoch, total_steps(per_epoch * gbs, gbs, loop.max_epochs, loop.max_steps)


def _validation_batches(cfg: DPOConfig, val_sets: dict, pad_id: int, pad_len, collate,
                        score_reference) -> dict:
    """Each validation set's micro-batches of this rank (``trainer.dpo.limit_val_batches``), reference-scored
    once."""
    from megatron.core import parallel_state as ps

    from megatron_align.training.run import validation_microbatches

    m = cfg.model
    vcfg = SimpleNamespace(global_batch_size=m.global_batch_size, micro_batch_size=m.micro_batch_size)
    dp_rank, dp = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    out = {name: validation_microbatches(ds, cfg.trainer.dpo.limit_val_batches, vcfg, dp_rank, dp, pad_id,
                                         pad_len, collate) for name, ds in val_sets.items()}
    for batches in out.values():
        if batches:
            score_reference(batches)
    return out


def _rows(batches: list, pp: bool) -> int:
    """Sequences per micro-batch of ``batches`` (the largest; with PP every micro-batch must have as many)."""
    counts = {int(b["tokens"].shape[0]) for b in batches}
    if pp and len(counts) > 1:
        raise ConfigError(f"micro-batches of {sorted(counts)} sequences: with pipeline parallelism every "
                          "micro-batch needs the same number (give every prompt the same completions)",
                          key="model.pipeline_model_parallel_size")
    return max(counts)


def _scored_reference(make, score_reference, chunks: list) -> list:
    """The reference's log-probs of the micro-batches ``make`` builds from ``chunks`` of item indices."""
    batches = [make(c) for c in chunks]
    score_reference(batches)
    return [b["ref_logps"] for b in batches]


def _validate(obj, trainee, val_batches: dict, seq_len: int, rows) -> dict:
    """Loss and metrics of every validation set (``val_`` for ``validation``, else ``<name>_``)."""
    from megatron_align.training.step import evaluate

    row = {}
    for name, batches in val_batches.items():
        if not batches:
            continue
        prefix = "val_" if name == "validation" else f"{name}_"
        loss, sums = evaluate(trainee.ddp, batches, seq_len, rows(batches),
                              forward_step_func=obj.forward_step)
        row[f"{prefix}loss"] = loss
        row.update(obj.metrics(obj.reduce(sums), prefix))
    return row


def _global_tokens(batches: list) -> float:
    """Tokens of this step's global batch (this rank's rows, summed over data-parallel ranks)."""
    from megatron.core import parallel_state as ps

    from megatron_align.distributed.launch import compute_device

    tokens = torch.tensor([float(sum(int(b["lengths"].sum()) for b in batches))], device=compute_device())
    torch.distributed.all_reduce(tokens, group=ps.get_data_parallel_group())
    return float(tokens)

