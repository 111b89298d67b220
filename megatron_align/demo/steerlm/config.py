"""The schema of ``megatron-align demo`` (the SteerLM end-to-end demo, ``demo/steerlm/pipeline.py``) and its
sizes.

Sections: ``trainer`` / ``model`` (layout, precision, the tiny architecture and batch sizes every stage
uses), ``data`` (the built-in data set and tokenizer), one section per SteerLM stage (``base_model``,
``reward_model``, ``annotation``, ``ac_sft``, ``bootstrap``), ``evaluation`` (the steering sweep) and
``exp_manager`` (the run directory). Each training stage is run by its real entry point, with its own
config built from its ``conf/*.yaml`` plus overrides taken from these sections.

``size=tiny`` is a preset of overrides (``SIZES``) applied before the command line's own, for CI: the whole
pipeline in a minute or two, with a model that still learns the easy attributes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

from megatron_align.config import ConfigError, ModelConfig, RunConfig, TrainerConfig, check_batch_sizes
from megatron_align.config.model import OptimConfig, OptimSchedConfig
from megatron_align.config.overrides import parse_override
from megatron_align.config.stages.steerlm import STEERLM_ATTRIBUTES

SIZES: dict[str, tuple[str, ...]] = {
    "full": (),
    "tiny": ("model.num_layers=2", "model.hidden_size=128", "model.ffn_hidden_size=320",
             "data.num_train=600", "data.num_val=64", "data.num_ac_sft=600",
             "base_model.max_steps=40", "reward_model.max_steps=60", "reward_model.val_check_interval=30",
             "ac_sft.max_steps=60", "ac_sft.val_check_interval=30",
             "bootstrap.num_prompts=8", "bootstrap.samples_per_prompt=2", "bootstrap.replay=16",
             "bootstrap.max_steps=4",
             "evaluation.num_prompts=4", "evaluation.attributes=[verbosity,helpfulness,toxicity]"),
}
"""``size`` presets: overrides applied before the command line's (``size=tiny``: the CI run)."""



@dataclass
class DemoTrainerConfig(TrainerConfig):
    """``trainer.*``: machines and precision of every stage."""

    precision: int | str = "auto"
    """``auto`` (bf16 where bf16 matmuls are native: a GPU, a CPU with AVX-512 BF16 or AMX; else 32), ``32``,
    ``bf16`` or ``16`` (bf16: fp32 master weights)."""


def _demo_optim() -> OptimConfig:
    return OptimConfig(name="distributed_fused_adam", lr=3e-3, weight_decay=0.0, betas=[0.9, 0.98],
                       sched=OptimSchedConfig(name="CosineAnnealing", warmup_steps=10, min_lr=1e-4))


@dataclass
class DemoModelConfig(ModelConfig):
    """A tiny Llama-style model (RMSNorm, SwiGLU, RoPE) shared by every stage; ``optim`` is the common
    optimizer (each stage section sets its own steps and learning rates)."""

    num_layers: int = 4
    hidden_size: int = 192
    ffn_hidden_size: int = 512
    num_attention_heads: int = 4
    num_query_groups: Optional[int] = None
    encoder_seq_length: int = 192
    max_position_embeddings: int = 192
    make_vocab_size_divisible_by: int = 64
    micro_batch_size: int = 8
    global_batch_size: int = 16
    optim: OptimConfig = field(default_factory=_demo_optim)


@dataclass
class DemoDataSection:
    """``data.*``: the built-in rule-labelled chats (``demo/world``) and the tokenizer."""

    seed: int = 1234
    """Seed of every generated split (train, val, ac_sft, bootstrap and the steering questions)."""
    num_train: int = 2000
    """Chats of the base model (labels removed) and of the reward model (their labels)."""
    num_val: int = 200
    """Held-out chats: validation of every stage and the reward model's MAE."""
    num_ac_sft: int = 3000
    """Fresh chats the reward model re-annotates for attribute-conditioned SFT (step 2)."""
    tokenizer_vocab_size: int = 1000
    """Sentencepiece pieces trained on the chats."""


@dataclass
class StageSection:
    """One training stage: optimizer steps and learning-rate schedule (the rest of ``model.optim`` shared)."""

    max_steps: int = 100
    """Optimizer steps."""
    lr: float = 3e-3
    """Peak learning rate."""
    min_lr: float = 1e-4
    """Floor of the cosine schedule."""
    warmup_steps: int = 10
    """Linear warm-up steps."""
    val_check_interval: int = 50
    """Validate every this many steps (and at the end)."""


@dataclass
class BaseModelSection(StageSection):
    """``base_model.*``: the tiny language model trained on unlabelled chats (the starting point)."""

    max_steps: int = 120
    answer_only_loss: bool = False
    """False: next-token loss on the whole chat (a plain LM); True: assistant turns only."""


@dataclass
class RewardModelSection(StageSection):
    """``reward_model.*``: step 1, the 9-attribute regression reward model, from the base model."""

    max_steps: int = 300
    lr: float = 1e-3
    val_check_interval: int = 100


@dataclass
class AnnotationSection:
    """``annotation.*``: step 2, the reward model labels the ``data.num_ac_sft`` chats in this process."""

    batch_size: int = 64
    """Texts per scorer call."""
    micro_batch_size: int = 16
    """Sequences per reward-model forward."""


@dataclass
class AcSftSection(StageSection):
    """``ac_sft.*``: step 3, attribute-conditioned SFT on the annotated chats, from the base model."""

    max_steps: int = 600
    val_check_interval: int = 100


@dataclass
class BootstrapSection(StageSection):
    """``bootstrap.*``: step 4, one round: sample at quality 4 (the other attributes random), annotate with
    the reward model, fine-tune the attribute-conditioned model on the samples (mixed with replayed
    step-3 chats, so that a short fine-tuning on few samples does not narrow the model)."""

    num_prompts: int = 32
    """Held-out questions sampled."""
    samples_per_prompt: int = 4
    """Responses per question (``k``)."""
    temperature: float = 0.7
    """Sampling temperature."""
    top_k: int = 0
    """Sample among the k most likely tokens (0: off)."""
    tokens_to_generate: int = 96
    """Longest sampled response in tokens."""
    max_batch_size: int = 32
    """Rows per generation batch."""
    replay: int = 384
    """Annotated step-3 chats mixed into the fine-tuning set (0: the samples alone)."""
    max_steps: int = 32
    lr: float = 5e-4
    min_lr: float = 5e-5
    warmup_steps: int = 2
    val_check_interval: int = 16


@dataclass
class EvaluationSection:
    """``evaluation.*``: the steering sweep (``demo/steerlm/evaluate.py``) on the final model."""

    num_prompts: int = 8
    """Held-out questions per (attribute, value)."""
    attributes: list = field(default_factory=lambda: list(STEERLM_ATTRIBUTES))
    """Attributes swept (each over 0..4, the others at the seed's default values)."""
    tokens_to_generate: int = 96
    """Longest response in tokens (greedy)."""
    max_batch_size: int = 48
    """Rows per generation batch."""


@dataclass
class DemoConfig(RunConfig):
    """Top-level schema of ``megatron-align demo``."""

    name: str = "steerlm_demo"
    size: str = "full"
    """``full`` (the README's run) or ``tiny`` (CI): a preset of overrides applied before the command line."""
    trainer: DemoTrainerConfig = field(default_factory=DemoTrainerConfig)
    model: DemoModelConfig = field(default_factory=DemoModelConfig)
    data: DemoDataSection = field(default_factory=DemoDataSection)
    """The built-in data set and tokenizer."""
    base_model: BaseModelSection = field(default_factory=BaseModelSection)
    """The base language model."""
    reward_model: RewardModelSection = field(default_factory=RewardModelSection)
    """SteerLM step 1."""
    annotation: AnnotationSection = field(default_factory=AnnotationSection)
    """SteerLM step 2."""
    ac_sft: AcSftSection = field(default_factory=AcSftSection)
    """SteerLM step 3."""
    bootstrap: BootstrapSection = field(default_factory=BootstrapSection)
    """SteerLM step 4."""
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    """Steering evaluation."""

    def resolve(self) -> DemoConfig:
        """``trainer.precision=auto`` made concrete (``fast_precision``) before validation and the stages."""
        return resolve_precision(self)

    def validate(self, world_size: int) -> None:
        m = self.model
        tp, pp = m.tensor_model_parallel_size, m.pipeline_model_parallel_size
        check_batch_sizes(m.global_batch_size, m.micro_batch_size, world_size // (tp * pp))
        if self.size not in SIZES:
            raise ConfigError(f"size={self.size!r} is not one of {'|'.join(SIZES)}", key="size")
        for key, value in (("data.num_train", self.data.num_train), ("data.num_val", self.data.num_val),
                           ("data.num_ac_sft", self.data.num_ac_sft),
                           ("base_model.max_steps", self.base_model.max_steps),
                           ("reward_model.max_steps", self.reward_model.max_steps),
                           ("ac_sft.max_steps", self.ac_sft.max_steps),
                           ("bootstrap.num_prompts", self.bootstrap.num_prompts),
                           ("bootstrap.samples_per_prompt", self.bootstrap.samples_per_prompt),
                           ("bootstrap.max_steps", self.bootstrap.max_steps),
                           ("evaluation.num_prompts", self.evaluation.num_prompts)):
            if value < 1:
                raise ConfigError(f"{key}={value} must be at least 1", key=key)
        if self.data.num_val < m.global_batch_size:
            raise ConfigError(f"data.num_val={self.data.num_val} is smaller than model.global_batch_size="
                              f"{m.global_batch_size} (validation needs one global batch)",
                              key="data.num_val")
        unknown = [a for a in self.evaluation.attributes if a not in STEERLM_ATTRIBUTES]
        if unknown or not self.evaluation.attributes:
            raise ConfigError(f"evaluation.attributes={self.evaluation.attributes}: give attributes among "
                              f"{', '.join(STEERLM_ATTRIBUTES)}", key="evaluation.attributes")
        if self.bootstrap.temperature <= 0:
            raise ConfigError("bootstrap.temperature must be > 0", key="bootstrap.temperature")


def resolve_precision(cfg):
    """``cfg`` with ``trainer.precision=auto`` replaced by the fast precision of this machine."""
    if str(cfg.trainer.precision).strip().lower() != "auto":
        return cfg
    from megatron_align.distributed.hardware import fast_precision  # torch: only when it is needed

    return dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, precision=fast_precision()))


def with_size_preset(argv: Sequence[str], sizes: dict | None = None) -> list[str]:
    """The command line with the ``size`` preset's overrides in front (the last ``size=`` wins)."""
    size = "full"
    for text in argv:
        try:
            parsed = parse_override(text)
        except ConfigError:
            continue  # load_config reports it
        if parsed.key == "size" and parsed.has_value:
            size = str(parsed.value)
    return [*(SIZES if sizes is None else sizes).get(size, ()), *argv]
