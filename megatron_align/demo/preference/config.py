"""The schema of ``megatron-align demo dpo`` / ``demo exo`` (``demo/preference/pipeline.py``) and its sizes.

Sections: ``trainer`` / ``model`` / ``data`` / ``base_model`` as in the SteerLM demo (the same built-in world,
tokenizer and tiny SFT language model), ``preference`` (sampling, the rule reward, the beta sweep, training
and evaluation) and ``exp_manager``. ``methods`` picks the losses trained: ``demo dpo`` sets ``[dpo]``, ``demo
exo`` ``[exo-rw]``; ``preference.methods=[dpo,exo-rw]`` runs both into one plot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_align.config import ConfigError, RunConfig, check_batch_sizes
from megatron_align.config.stages.dpo import EXO_LOSSES, PAIR_LOSSES
from megatron_align.config.stages.steerlm import STEERLM_ATTRIBUTES
from megatron_align.demo.steerlm.config import (
    BaseModelSection,
    DemoDataSection,
    DemoModelConfig,
    DemoTrainerConfig,
    StageSection,
    resolve_precision,
)

SIZES: dict[str, tuple[str, ...]] = {
    "full": (),
    "tiny": ("model.num_layers=2", "model.hidden_size=128", "model.ffn_hidden_size=320", "data.num_train=600",
             "data.num_val=64", "base_model.max_steps=60", "preference.num_prompts=48",
             "preference.max_steps=12", "preference.eval_prompts=16", "preference.betas=[0.1,1.0]",
             "preference.tokens_to_generate=48"),
}
"""``size`` presets: overrides applied before the command line's (``size=tiny``: the CI run)."""


@dataclass
class PreferenceSection(StageSection):
    """``preference.*``: pairs / groups sampled from the SFT model and scored by the rules, the beta sweep,
    and the held-out evaluation of reward against KL(pi || pi_ref)."""

    methods: list = field(default_factory=lambda: ["dpo"])
    """``model.dpo.preference_loss`` values trained, one run per beta each."""
    betas: list = field(default_factory=lambda: [0.05, 0.2, 1.0])
    """beta of each run (``ref_policy_kl_penalty``; EXO's beta_pi)."""
    beta_r: float = 1.0
    """EXO: temperature of the reward distribution softmax(R / beta_r)."""
    reward_attributes: list = field(default_factory=lambda: ["helpfulness", "quality", "correctness"])
    """The rule reward: the sum of these rule-measured attributes (0..4 each) of a response."""
    num_prompts: int = 256
    """Training questions; each gets ``samples_per_prompt`` answers from the SFT model."""
    samples_per_prompt: int = 4
    """K: answers per question (EXO's group; DPO pairs the best with the worst)."""
    temperature: float = 1.0
    """Sampling temperature (training data and evaluation)."""
    tokens_to_generate: int = 64
    """Longest answer in tokens."""
    max_batch_size: int = 64
    """Rows per generation batch."""
    max_steps: int = 40
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 2
    val_check_interval: int = 20
    global_batch_size: int = 16
    """Pairs (EXO: questions) per optimizer step."""
    micro_batch_size: int = 8
    """Pairs (EXO: questions) per forward."""
    eval_prompts: int = 64
    """Held-out questions of the evaluation."""
    eval_samples: int = 2
    """Answers per held-out question per policy."""


@dataclass
class PreferenceDemoConfig(RunConfig):
    """Top-level schema of ``megatron-align demo dpo`` / ``demo exo``."""

    name: str = "preference_demo"
    size: str = "full"
    """``full`` (the README's run) or ``tiny`` (CI): a preset of overrides applied before the command line."""
    trainer: DemoTrainerConfig = field(default_factory=DemoTrainerConfig)
    model: DemoModelConfig = field(default_factory=DemoModelConfig)
    data: DemoDataSection = field(default_factory=DemoDataSection)
    """The built-in data set and tokenizer (the SteerLM demo's)."""
    base_model: BaseModelSection = field(default_factory=lambda: BaseModelSection(max_steps=200,
                                                                                  answer_only_loss=False))
    """The SFT model: the starting policy and the reference."""
    preference: PreferenceSection = field(default_factory=PreferenceSection)
    """Sampling, reward, beta sweep, training and evaluation."""

    def resolve(self) -> PreferenceDemoConfig:
        """``trainer.precision=auto`` made concrete (``fast_precision``), as the SteerLM demo does."""
        return resolve_precision(self)

    def validate(self, world_size: int) -> None:
        m, p = self.model, self.preference
        tp, pp = m.tensor_model_parallel_size, m.pipeline_model_parallel_size
        dp = world_size // (tp * pp)
        check_batch_sizes(m.global_batch_size, m.micro_batch_size, dp)
        check_batch_sizes(p.global_batch_size, p.micro_batch_size, dp, prefix="preference")
        if self.size not in SIZES:
            raise ConfigError(f"size={self.size!r} is not one of {'|'.join(SIZES)}", key="size")
        bad = [x for x in p.methods if x not in PAIR_LOSSES + EXO_LOSSES]
        if bad or not p.methods:
            raise ConfigError(f"preference.methods={p.methods}: give losses among "
                              f"{', '.join(PAIR_LOSSES + EXO_LOSSES)}", key="preference.methods")
        if not p.betas or any(not b > 0 for b in p.betas):
            raise ConfigError(f"preference.betas={p.betas}: give positive values", key="preference.betas")
        unknown = [a for a in p.reward_attributes if a not in STEERLM_ATTRIBUTES]
        if unknown or not p.reward_attributes:
            raise ConfigError(f"preference.reward_attributes={p.reward_attributes}: give attributes among "
                              f"{', '.join(STEERLM_ATTRIBUTES)}", key="preference.reward_attributes")
        for key in ("num_prompts", "samples_per_prompt", "max_steps", "eval_prompts", "eval_samples"):
            if getattr(p, key) < 1 or (key == "samples_per_prompt" and p.samples_per_prompt < 2):
                raise ConfigError(f"preference.{key}={getattr(p, key)} is too small", key=f"preference.{key}")
        if p.num_prompts < 2 * p.global_batch_size:
            raise ConfigError(f"preference.num_prompts={p.num_prompts}: needs at least twice "
                              f"preference.global_batch_size={p.global_batch_size} (training and validation)",
                              key="preference.num_prompts")
        if p.temperature <= 0:
            raise ConfigError("preference.temperature must be > 0", key="preference.temperature")


def with_size_preset(argv, methods: list[str]) -> list[str]:
    """The command line with the ``size`` preset and the subcommand's ``preference.methods`` in front."""
    from megatron_align.demo.steerlm.config import with_size_preset as preset

    return preset([f"preference.methods=[{','.join(methods)}]", *argv], SIZES)
