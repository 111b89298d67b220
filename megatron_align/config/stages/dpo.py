"""Preference optimization (``examples/nlp/gpt/train_gpt_dpo.py``, ``conf/gpt_dpo.yaml``): NeMo-Aligner's DPO
keys and defaults (its ``gpt_dpo.yaml``; docs/preference_research.md C.1) and the EXO repository's knobs.

* ``model.dpo.preference_loss``: the DPO family per chosen/rejected pair (``dpo``, ``ipo``, ``rpo_sq``,
  ``rpo_bwd_kl``, ``rpo_fwd_kl``, ``scale``) or EXO over K completions per prompt (``exo-rw``, ``dpo-rw``,
  ``exo-pref``, ``dpo-pref``); formulas in ``losses/preference.py``.
* beta is ``model.dpo.ref_policy_kl_penalty`` (NeMo-Aligner's 0.2); EXO's beta_pi defaults to it, its
  beta_r and ``temp`` (the logits of policy and reference divided by it) are EXO's ``--beta_r`` / ``--temp``.
* Batch sizes count pairs (DPO family) or prompts (EXO: a prompt brings its ``num_contrastive`` completions).
* Reference log-probs: on the fly from the host-resident reference, or ``model.dpo.precompute_ref_logprobs``
  once per dataset pass, stored in the run directory.

This file is the schema; the loop is ``algorithms/dpo.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from megatron_align.config.data import ChatPromptTokens
from megatron_align.config.errors import ConfigError
from megatron_align.config.model import ModelConfig, OptimConfig, OptimSchedConfig
from megatron_align.config.schema import LoopSection, RunConfig, TrainerConfig
from megatron_align.config.stages.reward_model import (
    PretrainedCheckpoint,
    RMDataConfig,
    pretrained_path,
    split_files,
)

PAIR_LOSSES = ("dpo", "ipo", "rpo_sq", "rpo_bwd_kl", "rpo_fwd_kl", "scale")
"""``model.dpo.preference_loss`` values scored per chosen/rejected pair."""
EXO_LOSSES = ("exo-rw", "dpo-rw", "exo-pref", "dpo-pref")
"""``model.dpo.preference_loss`` values scored per group of ``num_contrastive`` completions."""
REWARD_LOSSES = ("rpo_sq", "rpo_bwd_kl", "rpo_fwd_kl", "scale")
"""Pair losses that read the pairs' rewards (``chosen_reward`` / ``rejected_reward``)."""
OVERLONG = ("ignore", "truncate", "drop")
"""``model.data.overlong`` values."""


@dataclass
class DPOSection(LoopSection):
    """``trainer.dpo.*``: steps, validation and checkpoint cadence."""

    limit_train_batches: Union[int, float] = 1.0
    """Training global batches per epoch: an int counts batches, a float in (0, 1] is a fraction."""


@dataclass
class DPOTrainerConfig(TrainerConfig):
    """``trainer.*`` of preference training."""

    dpo: DPOSection = field(default_factory=DPOSection)
    """The loop's cadence."""


@dataclass
class DPOLossSection:
    """``model.dpo.*``: the objective."""

    preference_loss: str = "dpo"
    """dpo | ipo | rpo_sq | rpo_bwd_kl | rpo_fwd_kl | scale (per pair), exo-rw | dpo-rw | exo-pref | dpo-pref
    (per group of num_contrastive completions)."""
    ref_policy_kl_penalty: float = 0.2
    """beta: the weight of the policy/reference log-ratio."""
    preference_average_log_probs: bool = False
    """Average the per-token log-ratio over the response's tokens instead of summing it."""
    sft_average_log_probs: Optional[bool] = None
    """The same for the SFT term (None: as preference_average_log_probs)."""
    gt_reward_scale: float = 1.0
    """Scale of the data's reward margin in the rpo_* losses."""
    preference_loss_weight: float = 1.0
    """Weight of the preference loss in the total."""
    sft_loss_weight: float = 0.0
    """Weight of the chosen responses' negative log-likelihood in the total."""
    log_prob_forward_micro_batch_size: Optional[int] = None
    """Pairs (or prompts) per reference forward micro-batch (None: model.micro_batch_size)."""
    precompute_ref_logprobs: bool = False
    """Compute the reference log-probs once per dataset pass and store them in the run directory."""
    num_contrastive: int = 2
    """EXO: completions per group (K); it must divide the completions each prompt has."""
    beta_r: float = 1.0
    """EXO: temperature of the reward distribution softmax(R / beta_r)."""
    beta_pi: Optional[float] = None
    """EXO: beta of the policy's distribution (None: ref_policy_kl_penalty)."""
    temp: float = 1.0
    """EXO: the logits of policy and reference are divided by this before their log-probs are taken."""


@dataclass
class DPODataConfig(RMDataConfig):
    """``model.data.*``: NeMo-Aligner's DPO JSONL or the EXO repository's formats, and their rules."""

    default_chosen_reward: float = 1.0
    """Reward of a chosen response whose record has no chosen_reward."""
    default_rejected_reward: float = 0.0
    """Reward of a rejected response whose record has no rejected_reward."""
    pad_length_to_multiple_of: Optional[int] = None
    """Pad each micro-batch's rows to a multiple of this (None: to the longest row)."""
    chat_prompt_tokens: ChatPromptTokens = field(default_factory=ChatPromptTokens)
    """Markers of NeMo's chat template, used when a record's prompt is a list of messages."""
    overlong: str = "ignore"
    """A pair or group longer than seq_length: ignore (NeMo-Aligner's rule: kept without trained tokens, no
    gradient), truncate (responses cut from the right, the prompt kept) or drop; every one is counted."""


def _dpo_optim() -> OptimConfig:
    # NeMo-Aligner's gpt_dpo.yaml defaults.
    return OptimConfig(lr=9e-6, weight_decay=0.1, betas=[0.9, 0.98],
                       sched=OptimSchedConfig(warmup_steps=10, constant_steps=1000, min_lr=9e-7))


@dataclass
class DPOModelConfig(ModelConfig):
    """``model.*`` for preference training."""

    dpo: DPOLossSection = field(default_factory=DPOLossSection)
    """The objective."""
    micro_batch_size: int = 1
    """Pairs (EXO: prompts) per forward pass on one data-parallel rank."""
    global_batch_size: int = 64
    """Pairs (EXO: prompts) per optimizer step over all data-parallel ranks."""
    optim: OptimConfig = field(default_factory=_dpo_optim)
    """Optimizer and schedule."""
    data: DPODataConfig = field(default_factory=DPODataConfig)
    """Files and record rules."""


@dataclass
class DPOConfig(RunConfig):
    """Top-level schema of ``examples/nlp/gpt/train_gpt_dpo.py`` (``conf/gpt_dpo.yaml``)."""

    name: str = "megatron_gpt_dpo"
    trainer: DPOTrainerConfig = field(default_factory=DPOTrainerConfig)
    model: DPOModelConfig = field(default_factory=DPOModelConfig)
    pretrained_checkpoint: PretrainedCheckpoint = field(default_factory=PretrainedCheckpoint)
    """The policy to start from; the reference is a frozen copy of it."""

    def restore_path(self) -> Optional[str]:
        """``pretrained_checkpoint.restore_from_path`` (``model.restore_from_path`` is accepted too)."""
        return pretrained_path(self)

    def validate(self, world_size: int) -> None:
        from megatron_align.config import check_batch_sizes

        m, d = self.model, self.model.dpo
        loss = d.preference_loss
        if loss not in PAIR_LOSSES + EXO_LOSSES:
            raise ConfigError(f"model.dpo.preference_loss={loss!r} is not one of "
                              f"{'|'.join(PAIR_LOSSES + EXO_LOSSES)}", key="model.dpo.preference_loss")
        for key in ("ref_policy_kl_penalty", "beta_r", "temp"):
            if not getattr(d, key) > 0:
                raise ConfigError(f"model.dpo.{key}={getattr(d, key)} must be > 0", key=f"model.dpo.{key}")
        if d.beta_pi is not None and not d.beta_pi > 0:
            raise ConfigError(f"model.dpo.beta_pi={d.beta_pi} must be > 0", key="model.dpo.beta_pi")
        if d.preference_loss_weight == 0 and d.sft_loss_weight == 0:
            raise ConfigError("model.dpo.preference_loss_weight and model.dpo.sft_loss_weight are both 0: "
                              "nothing to train", key="model.dpo.preference_loss_weight")
        if loss in EXO_LOSSES and d.num_contrastive < 2:
            raise ConfigError(f"model.dpo.num_contrastive={d.num_contrastive}: EXO compares at least 2 "
                              "completions", key="model.dpo.num_contrastive")
        if loss in ("exo-pref", "dpo-pref") and d.num_contrastive != 2:
            raise ConfigError(f"model.dpo.preference_loss={loss} compares pairs: set "
                              "model.dpo.num_contrastive=2", key="model.dpo.num_contrastive")
        if m.data.overlong not in OVERLONG:
            raise ConfigError(f"model.data.overlong={m.data.overlong!r} is not one of {'|'.join(OVERLONG)}",
                              key="model.data.overlong")
        if not self.pretrained_checkpoint.restore_from_path and not m.restore_from_path:
            raise ConfigError("pretrained_checkpoint.restore_from_path is not set: preference training "
                              "starts from a trained (SFT) policy",
                              key="pretrained_checkpoint.restore_from_path")
        tp, pp = m.tensor_model_parallel_size, m.pipeline_model_parallel_size
        check_batch_sizes(m.global_batch_size, m.micro_batch_size, world_size // (tp * pp), prefix="model")
        split_files(m.data.data_prefix)
