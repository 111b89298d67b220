"""The schema of ``megatron-align demo steerlm2`` (``demo/steerlm2/pipeline.py``) and its sizes.

It starts from a finished SteerLM demo run (``steerlm_run_dir``: its base model is P(y|x), its reward model
gives P(a|x,y), its final model is Q'), running that demo first (at ``steerlm_size``) when the directory has
no finished run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_align.config import ConfigError, RunConfig
from megatron_align.config.stages.steerlm import STEERLM_ATTRIBUTES
from megatron_align.demo.steerlm.config import DemoTrainerConfig, EvaluationSection, resolve_precision

SIZES: dict[str, tuple[str, ...]] = {
    "full": (),
    "tiny": ("steerlm_size=tiny", "num_prompts=16", "num_responses=3", "max_steps=8", "global_batch_size=4",
             "tokens_to_generate=48", "evaluation.num_prompts=2",
             "evaluation.attributes=[verbosity,helpfulness,toxicity]"),
}
"""``size`` presets: overrides applied before the command line's (``size=tiny``: the CI run)."""


@dataclass
class SteerLM2DemoConfig(RunConfig):
    """Top-level schema of ``megatron-align demo steerlm2``."""

    name: str = "steerlm2_demo"
    size: str = "full"
    """``full`` or ``tiny`` (CI): a preset of overrides applied before the command line."""
    trainer: DemoTrainerConfig = field(default_factory=DemoTrainerConfig)
    steerlm_run_dir: str = "runs/steerlm_demo"
    """A finished ``megatron-align demo`` run (run here first when absent)."""
    steerlm_size: str = "full"
    """``size`` of that SteerLM demo when it has to be run."""
    rounds: int = 1
    """SteerLM 2.0 rounds."""
    num_prompts: int = 96
    """Held-out questions per round, each with random requested values for all nine attributes."""
    num_responses: int = 4
    """Responses sampled per question (n)."""
    temperature: float = 1.0
    """Sampling temperature of the builder."""
    tokens_to_generate: int = 96
    """Longest sampled response."""
    likelihood_sigma: float = 1.0
    """sigma of log P(a|x,y)."""
    max_steps: int = 24
    """Training steps per round."""
    lr: float = 2e-4
    """Learning rate of the rounds' training (constant)."""
    global_batch_size: int = 16
    """Prompts per training step."""
    seed: int = 1234
    """Seed of the questions, targets and sampling."""
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    """The steering sweep of the SteerLM demo, on the start model and after each round."""

    def resolve(self) -> SteerLM2DemoConfig:
        return resolve_precision(self)

    def validate(self, world_size: int) -> None:
        if world_size != 1:
            raise ConfigError("demo steerlm2 runs in one process; start it without torchrun", key="trainer")
        if self.size not in SIZES:
            raise ConfigError(f"size={self.size!r} is not one of {'|'.join(SIZES)}", key="size")
        for key in ("rounds", "num_prompts", "num_responses", "max_steps", "global_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be at least 1", key=key)
        unknown = [a for a in self.evaluation.attributes if a not in STEERLM_ATTRIBUTES]
        if unknown or not self.evaluation.attributes:
            raise ConfigError(f"evaluation.attributes={self.evaluation.attributes}: give attributes among "
                              f"{', '.join(STEERLM_ATTRIBUTES)}", key="evaluation.attributes")


def with_size_preset(argv) -> list[str]:
    """The command line with the ``size`` preset's overrides in front."""
    from megatron_align.demo.steerlm.config import with_size_preset as preset

    return preset(argv, SIZES)
