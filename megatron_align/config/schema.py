"""The run-level config schemas: ``trainer.*``, ``exp_manager.*`` and ``RunConfig``, the base of every stage.

Key names follow NeMo / NeMo-Aligner (``trainer.num_nodes``, ``exp_manager.checkpoint_callback_params.*``) so
that users' command lines keep working. These dataclasses own the defaults; YAML files only restate them.

A stage declares its schema by composition, e.g.::

    @dataclass
    class SFTSection:
        max_steps: int = -1  # (each field gets its one-line docstring on the next line)

    @dataclass
    class SFTTrainerConfig(TrainerConfig):
        sft: SFTSection = field(default_factory=SFTSection)

    @dataclass
    class SFTRunConfig(RunConfig):
        trainer: SFTTrainerConfig = field(default_factory=SFTTrainerConfig)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from megatron_align.config.model import ModelConfig

PRECISIONS = ("32", "bf16", "16")
"""Values of ``trainer.precision`` after normalisation."""

_PRECISION_ALIASES = {
    "32": "32", "32-true": "32", "fp32": "32",
    "bf16": "bf16", "bf16-mixed": "bf16",
    "16": "16", "16-mixed": "16", "fp16": "16",
}


def normalize_precision(value: Any) -> str | None:
    """``32`` / ``"32"`` -> ``"32"``; ``"bf16"`` / ``"bf16-mixed"`` -> ``"bf16"``;
    ``16`` / ``"16-mixed"`` -> ``"16"``.

    Returns ``None`` for a value that is not a precision (``validate_layout`` reports it).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and float(value).is_integer():
        value = str(int(value))
    if not isinstance(value, str):
        return None
    return _PRECISION_ALIASES.get(value.strip().lower())


@dataclass
class LoopSection:
    """The step, validation and checkpoint cadence every training stage has (``trainer.<stage>.*``)."""

    max_epochs: int = 1
    """Passes over the training data; the run stops at whichever of max_epochs / max_steps comes first."""
    max_steps: int = -1
    """Optimizer steps; -1 means as many as ``max_epochs`` take."""
    val_check_interval: int = 100
    """Validate every this many steps (and at the end)."""
    save_interval: int = 100
    """Save a checkpoint every this many steps (and at the end)."""
    limit_val_batches: Union[int, float] = 1.0
    """Validation global batches per validation: an int counts batches, a float in (0, 1] is a fraction."""
    gradient_clip_val: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    max_consecutive_nonfinite: int = 10
    """Stop after this many steps in a row whose loss or gradients were NaN/Inf (each is skipped)."""


@dataclass
class TrainerConfig:
    """``trainer.*``: the machines a run uses and its numeric precision; stages add their loop section."""

    num_nodes: int = 1
    """Nodes (hosts) in the job."""
    devices: int = 1
    """Processes (GPUs, or CPU ranks) per node; world size is ``num_nodes * devices``."""
    precision: int | str = "bf16"
    """``32``, ``bf16`` (also ``bf16-mixed``) or ``16`` (also ``16-mixed``); stored normalised as a string."""
    accelerator: str = "auto"
    """``gpu``, ``cpu`` or ``auto`` (GPU when one is visible)."""
    log_every_n_steps: int = 10
    """Steps between two metric log lines."""

    def __post_init__(self) -> None:
        norm = normalize_precision(self.precision)
        if norm is not None:
            self.precision = norm


@dataclass
class CheckpointCallbackParams:
    """``exp_manager.checkpoint_callback_params.*``: which checkpoints are kept."""

    monitor: str = "val_loss"
    """Metric that ranks checkpoints."""
    save_top_k: int = 3
    """Best checkpoints kept by ``monitor`` (the latest one is always kept as well)."""
    mode: str = "min"
    """``min`` or ``max``: whether a lower or a higher ``monitor`` is better."""
    always_save_nemo: bool = False
    """Also write the consolidated (single-file) model every time a checkpoint is saved."""
    save_nemo_on_train_end: bool = True
    """Write the consolidated model once at the end of training."""
    filename: str = "megatron_align--{val_loss:.3f}-{step}-{consumed_samples}"
    """Checkpoint directory name pattern; ``{metric}`` fields are filled in when saving."""
    model_parallel_size: int | None = None
    """TP * PP of the saved shards; ``None`` means take it from the model section."""


@dataclass
class ExpManagerConfig:
    """``exp_manager.*``: where a run writes logs and checkpoints, and how it resumes."""

    explicit_log_dir: str | None = None
    """Write everything in exactly this directory (wins over ``exp_dir`` / ``name``)."""
    exp_dir: str | None = None
    """Parent of the run directory; ``None`` means ``./results``."""
    name: str | None = None
    """Run directory name under ``exp_dir``; ``None`` means the top-level ``name``."""
    create_wandb_logger: bool = False
    """Log metrics to Weights & Biases."""
    wandb_logger_kwargs: dict = field(default_factory=lambda: {"project": None, "name": None})
    """Free-form keyword arguments of the W&B run (``project``, ``name``, ``group``, ...)."""
    create_tensorboard_logger: bool = True
    """Write TensorBoard event files."""
    resume_if_exists: bool = True
    """Resume from the latest checkpoint in the run directory when there is one."""
    resume_ignore_no_checkpoint: bool = True
    """With ``resume_if_exists``, start from scratch (instead of failing) when there is no checkpoint."""
    create_checkpoint_callback: bool = True
    """Save checkpoints at all."""
    checkpoint_callback_params: CheckpointCallbackParams = field(default_factory=CheckpointCallbackParams)
    """Which checkpoints are kept."""


@dataclass
class RunConfig:
    """A whole run: the base that every stage schema extends (stages narrow ``trainer`` and ``model``)."""

    name: str = "megatron_align"
    """Run name; the default of ``exp_manager.name``."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Machines, precision and the stage's loop settings."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model architecture, layout, optimizer and data."""
    exp_manager: ExpManagerConfig = field(default_factory=ExpManagerConfig)
    """Logs, checkpoints and resumption."""


def run_dir_of(cfg: RunConfig, default_exp_dir: str = "results") -> Path:
    """``exp_manager.explicit_log_dir``, else ``exp_manager.exp_dir/<name>`` (NeMo's layout; ``exp_dir``
    unset: ``default_exp_dir``)."""
    em = cfg.exp_manager
    if em.explicit_log_dir:
        return Path(em.explicit_log_dir)
    return Path(em.exp_dir or default_exp_dir) / (em.name or cfg.name)
