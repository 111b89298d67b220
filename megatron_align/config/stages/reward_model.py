"""Reward-model training (``examples/nlp/gpt/train_reward_model.py``): SteerLM's multi-attribute regression
reward model, HelpSteer2-Preference's Bradley-Terry stage on top of it (seed 001), and the binary
Bradley-Terry reward model of seed 004 - NeMo-Aligner's ``train_reward_model.py`` keys and meanings.

* ``model.reward_model_type=regression``: rows ``{text, label}``; ``model.regression.loss_func`` is
  ``regression`` (masked MSE) or a pair loss ``regular_bt`` / ``margin_bt`` / ``scaled_bt`` on consecutive
  rows (``losses/reward.py``). A pair loss needs ``trainer.rm.train_random_sampler=False`` in NeMo-Aligner,
  whose sampler would split pairs; here pairs are the unit the sampler moves, so they stay whole either way.
* ``model.reward_model_type=binary_ranking``: chosen/rejected pairs, ``-log sigmoid(r_c - r_r)``.
* ``pretrained_checkpoint.restore_from_path`` decides the architecture and the starting weights; the head
  is re-initialised unless ``model.regression.load_rm_head_weights=True``.

Batch sizes count what NeMo-Aligner counts: rows for ``regression`` (a pair loss takes the rows ``2i, 2i+1``
of each micro-batch as pair ``i``, so ``micro_batch_size`` must be even), pairs for ``binary_ranking`` (a
micro-batch of ``m`` pairs runs ``2m`` sequences). The loss is one mean over the global batch - per valid
label cell (regression) or per pair - however it is split into micro-batches and data-parallel ranks
(NeMo-Aligner averages per-micro-batch means instead; equal when every micro-batch has as many cells).
This file is the schema (``conf/training_rm.yaml``); the loop is ``algorithms/reward_model.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from megatron_align.config.data import ON_BAD_RECORD
from megatron_align.config.errors import ConfigError
from megatron_align.config.model import ModelConfig, OptimConfig, OptimSchedConfig
from megatron_align.config.restore import merge_architecture as merge_trunk
from megatron_align.config.restore import restored_model_config
from megatron_align.config.schema import LoopSection, RunConfig, TrainerConfig

LOSS_FUNCS = ("regression", "regular_bt", "margin_bt", "scaled_bt")
"""Values of ``model.regression.loss_func`` (formulas: ``losses/reward.py``)."""
BT_LOSS_FUNCS = LOSS_FUNCS[1:]
"""The pair losses."""
REWARD_MODEL_TYPES = ("binary_ranking", "regression")
"""Values of ``model.reward_model_type``."""


@dataclass
class RewardStandardization:
    """``reward_standardization.*`` (the reward server's ``model.reward_standardization``, the offline
    labeler's top-level one): ``(reward - mean) / std`` per attribute (``scoring/standardize.py``)."""

    enable: bool = False
    """Standardize the rewards."""
    mean: Any = None
    """One number for every attribute, or a list with one number per attribute."""
    std: Any = None
    """One positive number for every attribute, or a list with one per attribute."""


@dataclass
class RMSection(LoopSection):
    """``trainer.rm.*``"""

    train_random_sampler: bool = True
    """Visit the training items in a seeded random order (a new one per epoch); False: file order. With a
    pair loss the unit is the pair, so its two rows stay adjacent either way."""
    val_random_sampler: bool = False
    """Validate on a seeded random selection of validation items instead of the first ones."""


@dataclass
class RMTrainerConfig(TrainerConfig):
    """``trainer.*`` for reward-model training."""

    rm: RMSection = field(default_factory=RMSection)
    """Step, validation and checkpoint cadence."""


@dataclass
class RegressionSection:
    """``model.regression.*``: the reward head and the loss."""

    num_attributes: int = 1
    """Outputs of the reward head: 9 for SteerLM / HelpSteer2 (quality ... verbosity), 1 for a scalar RM."""
    merge_attributes: bool = False
    """Serving only (NeMo-Aligner merges the attributes into one scalar for PPO); must be False to train."""
    attribute_weights: Optional[list] = None
    """Serving only: weights of ``merge_attributes``; ignored in training."""
    loss_mask_val: float = -100.0
    """A label cell with this value is missing: it contributes nothing to the regression loss."""
    loss_func: str = "regression"
    """``regression`` (masked MSE), or on consecutive row pairs ``regular_bt`` (-log s(d)), ``margin_bt``
    (-log s(d - m)) or ``scaled_bt`` (-m log s(d)), with the pair's preference in label column 0."""
    load_rm_head_weights: bool = False
    """True: start the head from the restored checkpoint's head (a reward-model checkpoint with as many
    attributes); False: the restored trunk with a freshly initialised head."""
    score_attribute: int = 4
    """Pair losses: the head output that scores a response. NeMo-Aligner hard-codes 4 (helpfulness, the
    attribute stage 1 of HelpSteer2-Preference trains); not a NeMo key."""


@dataclass
class RMDataConfig:
    """``model.data.*`` of reward-model training (NeMo-Aligner's ``training_rm.yaml`` keys)."""

    data_impl: str = "jsonl"
    """``jsonl`` (``json`` is accepted as the same thing); files are read lazily through a line index."""
    data_prefix: Optional[dict] = None
    """``{train: [file], validation: [file], test: [file]}``; a split may also be ``[w1, file1, w2, file2]``
    (blend weights). Extra ``validation*`` keys are further validation sets; ``test`` is not used."""
    splits_string: Optional[str] = None
    """NeMo's train/valid/test split of one file: not supported, give the splits in ``data_prefix``."""
    seq_length: Optional[int] = None
    """Longest row in tokens; longer ones are replaced by the next record. None:
    ``model.encoder_seq_length``."""
    skip_warmup: bool = True
    """Accepted for NeMo command lines (mmap datasets only)."""
    num_workers: int = 0
    """Accepted for NeMo command lines; data is read in the training process."""
    reset_position_ids: bool = False
    """NeMo's per-document position reset: not supported, must stay False."""
    reset_attention_mask: bool = False
    """NeMo's per-document attention reset: not supported, must stay False."""
    eod_mask_loss: bool = False
    """NeMo's end-of-document loss masking: not used by reward losses, must stay False."""
    index_mapping_dir: Optional[str] = None
    """Where the line-offset index of each JSONL file is cached; None: next to the file."""
    append_eod: bool = False
    """Append the eos token to every text (NeMo-Aligner's ``model.data.append_eod``)."""
    validation_drop_last: bool = True
    """Accepted for NeMo command lines; validation uses whole global batches."""
    on_bad_record: str = "error"
    """A malformed line: ``error`` stops with ``file:line: field: what is wrong``; ``skip`` counts it and uses
    the next record."""


@dataclass
class PretrainedCheckpoint:
    """``pretrained_checkpoint.*``"""

    restore_from_path: Optional[str] = None
    """The megatron_align checkpoint to start from (an SFT / converted model, or a reward model); it decides
    the architecture and the tokenizer."""


def pretrained_path(cfg) -> Optional[str]:
    """``pretrained_checkpoint.restore_from_path`` of a stage config (``model.restore_from_path`` is accepted
    too; both set and different is a ``ConfigError``)."""
    a, b = cfg.pretrained_checkpoint.restore_from_path, cfg.model.restore_from_path
    if a and b and a != b:
        raise ConfigError(f"pretrained_checkpoint.restore_from_path={a} and model.restore_from_path={b} "
                          "disagree: set only pretrained_checkpoint.restore_from_path",
                          key="pretrained_checkpoint.restore_from_path")
    return a or b


def _rm_optim() -> OptimConfig:
    # NeMo-Aligner's training_rm.yaml defaults.
    return OptimConfig(lr=9e-6, weight_decay=0.1, sched=OptimSchedConfig(warmup_steps=10, constant_steps=1000,
                                                                         min_lr=9e-7))


@dataclass
class RMModelConfig(ModelConfig):
    """``model.*`` for reward-model training (``model.num_attributes`` follows
    ``model.regression.num_attributes``)."""

    reward_model_type: str = "binary_ranking"
    """``binary_ranking`` (chosen/rejected pairs) or ``regression`` (``{text, label}`` rows)."""
    regression: RegressionSection = field(default_factory=RegressionSection)
    """Reward head and loss."""
    micro_batch_size: int = 2
    """Rows (regression) or pairs (binary_ranking) per forward pass on one data-parallel rank."""
    global_batch_size: int = 64
    """Rows (regression) or pairs (binary_ranking) per optimizer step over all data-parallel ranks."""
    optim: OptimConfig = field(default_factory=_rm_optim)
    """Optimizer and schedule."""
    data: RMDataConfig = field(default_factory=RMDataConfig)
    """Files and record rules."""


@dataclass
class RMConfig(RunConfig):
    """Top-level schema of ``examples/nlp/gpt/train_reward_model.py`` (``conf/training_rm.yaml``)."""

    name: str = "megatron_gpt"
    trainer: RMTrainerConfig = field(default_factory=RMTrainerConfig)
    model: RMModelConfig = field(default_factory=RMModelConfig)
    pretrained_checkpoint: PretrainedCheckpoint = field(default_factory=PretrainedCheckpoint)
    """The starting model."""

    def restore_path(self) -> Optional[str]:
        """``pretrained_checkpoint.restore_from_path`` (``model.restore_from_path`` is accepted too)."""
        return pretrained_path(self)

    def resolve(self) -> RMConfig:
        """The architecture from the restored checkpoint, ``num_attributes`` from ``model.regression``."""
        m = self.model
        if m.num_attributes not in (1, m.regression.num_attributes):
            raise ConfigError(f"model.num_attributes={m.num_attributes}: the head size is "
                              "model.regression.num_attributes (NeMo-Aligner's key); set that instead",
                              key="model.num_attributes")
        path = self.restore_path()
        if path:
            m = merge_architecture(m, restored_model_config(path, "pretrained_checkpoint.restore_from_path"))
        m = dataclasses.replace(m, num_attributes=m.regression.num_attributes)
        return dataclasses.replace(self, model=m)

    def validate(self, world_size: int) -> None:
        from megatron_align.config import check_batch_sizes

        m, reg, data = self.model, self.model.regression, self.model.data
        _one_of("model.reward_model_type", m.reward_model_type, REWARD_MODEL_TYPES)
        _one_of("model.regression.loss_func", reg.loss_func, LOSS_FUNCS)
        if reg.num_attributes < 1:
            raise ConfigError(f"model.regression.num_attributes={reg.num_attributes} must be at least 1",
                              key="model.regression.num_attributes")
        if reg.merge_attributes:
            raise ConfigError("model.regression.merge_attributes=True only applies when serving a reward "
                              "model; train with False", key="model.regression.merge_attributes")
        if m.reward_model_type == "binary_ranking":
            if reg.loss_func not in ("regression", "regular_bt"):
                raise ConfigError(f"model.regression.loss_func={reg.loss_func} needs preference strengths, "
                                  "which binary_ranking pairs do not have: use model.reward_model_type="
                                  "regression with -pref rows", key="model.regression.loss_func")
            if reg.num_attributes != 1:
                raise ConfigError(f"model.reward_model_type=binary_ranking scores with one output, but "
                                  f"model.regression.num_attributes={reg.num_attributes}: set it to 1",
                                  key="model.regression.num_attributes")
        elif reg.loss_func in BT_LOSS_FUNCS:
            if not 0 <= reg.score_attribute < reg.num_attributes:
                raise ConfigError(f"model.regression.loss_func={reg.loss_func} scores pairs with head output "
                                  f"model.regression.score_attribute={reg.score_attribute} (NeMo-Aligner: 4, "
                                  f"helpfulness), but the head has {reg.num_attributes}",
                                  key="model.regression.score_attribute")
            if m.micro_batch_size % 2:
                raise ConfigError(f"model.micro_batch_size={m.micro_batch_size} is odd, but "
                                  f"model.regression.loss_func={reg.loss_func} reads rows (2i, 2i+1) of a "
                                  "micro-batch as one pair: use an even micro batch size (NeMo-Aligner: 2)",
                                  key="model.micro_batch_size")
        tp, pp = m.tensor_model_parallel_size, m.pipeline_model_parallel_size
        check_batch_sizes(m.global_batch_size, m.micro_batch_size, world_size // (tp * pp), prefix="model")
        _one_of("model.data.data_impl", data.data_impl, ("jsonl", "json"))
        _one_of("model.data.on_bad_record", data.on_bad_record, ON_BAD_RECORD)
        for key in ("reset_position_ids", "reset_attention_mask", "eod_mask_loss"):
            if getattr(data, key):
                raise ConfigError(f"model.data.{key}=True is not supported for reward models",
                                  key=f"model.data.{key}")
        if data.splits_string is not None:
            raise ConfigError("model.data.splits_string is not supported: give the splits as "
                              "model.data.data_prefix={train: [...], validation: [...], test: [...]}",
                              key="model.data.splits_string")
        split_files(data.data_prefix)
        seq = data.seq_length or m.encoder_seq_length
        if seq < 1:
            raise ConfigError(f"model.data.seq_length={seq} must be at least 1", key="model.data.seq_length")
        if m.position_embedding_type == "learned_absolute" and seq > m.max_position_embeddings:
            raise ConfigError(f"model.data.seq_length={seq} is longer than model.max_position_embeddings="
                              f"{m.max_position_embeddings}", key="model.data.seq_length")


def _one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {'|'.join(allowed)}", key=key)


def merge_architecture(requested: RMModelConfig, restored: ModelConfig) -> RMModelConfig:
    """The restored checkpoint decides the architecture (SFT's rule); the head keeps the requested size."""
    return dataclasses.replace(merge_trunk(requested, restored),
                               num_attributes=requested.regression.num_attributes)


def _split_entry(value: Any, key: str) -> tuple[list[str], Optional[list[float]]]:
    if isinstance(value, str):
        return [value], None
    if isinstance(value, (list, tuple)) and value:
        if all(isinstance(v, str) for v in value):
            if len(value) == 1:
                return [value[0]], None
            raise ConfigError(f"{key} lists {len(value)} files without weights: write "
                              f"[w1, file1, w2, file2, ...] (NeMo's blend syntax)", key=key)
        weights, paths = list(value[0::2]), list(value[1::2])
        if (len(value) % 2 == 0 and all(isinstance(p, str) for p in paths)
                and all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights)
                and sum(weights) > 0):
            return paths, [float(w) for w in weights]
    raise ConfigError(f"{key}={value!r} must be a file, [file], or [w1, file1, w2, file2, ...]", key=key)


def split_files(data_prefix: Optional[dict]) -> dict[str, tuple[list[str], Optional[list[float]]]]:
    """``model.data.data_prefix`` -> ``{split: (files, weights)}`` for ``train`` and every ``validation*``."""
    key = "model.data.data_prefix"
    if not isinstance(data_prefix, dict) or not data_prefix.get("train"):
        raise ConfigError(f"{key} must give the training file: {key}={{train: [train.jsonl], validation: "
                          "[val.jsonl], test: [val.jsonl]}", key=key)
    out = {}
    for split, value in data_prefix.items():
        if split == "test":
            continue
        if split != "train" and not str(split).startswith("validation"):
            raise ConfigError(f"{key}.{split}: unknown split; use train, validation (and validation*), test",
                              key=key)
        if value is not None:
            out[str(split)] = _split_entry(value, f"{key}.{split}")
    return out
