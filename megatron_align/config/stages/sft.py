"""The SFT stage's schema (``examples/nlp/gpt/train_gpt_sft.py``, ``conf/gpt_sft.yaml``): SFT and SteerLM's
attribute-conditioned SFT (seed 001), the SFT step of the offline methods and EXO (seeds 003, 004)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from megatron_align.config.data import DataConfig, check_data_config
from megatron_align.config.errors import ConfigError
from megatron_align.config.model import ModelConfig
from megatron_align.config.restore import merge_architecture, restored_model_config
from megatron_align.config.schema import LoopSection, RunConfig, TrainerConfig
from megatron_align.config.validate import check_batch_sizes


@dataclass
class SFTSection(LoopSection):
    """``trainer.sft.*``"""

    skip_validation: bool = False
    """Never validate (NeMo-Aligner's key; the offline methods' SFT step sets it): the validation files may
    be left out."""


@dataclass
class SFTTrainerConfig(TrainerConfig):
    """``trainer.*`` for SFT."""

    sft: SFTSection = field(default_factory=SFTSection)
    """Step, validation and checkpoint cadence."""


@dataclass
class SFTModelConfig(ModelConfig):
    """``model.*`` for SFT."""

    answer_only_loss: bool = True
    """Train only on assistant turns (and the end of turn after them)."""
    data: DataConfig = field(default_factory=DataConfig)
    """``model.data.*``: files, chat template, batch sizes."""


@dataclass
class SFTConfig(RunConfig):
    """Top-level schema of ``examples/nlp/gpt/train_gpt_sft.py`` (``conf/gpt_sft.yaml``)."""

    name: str = "megatron_gpt_sft"
    trainer: SFTTrainerConfig = field(default_factory=SFTTrainerConfig)
    model: SFTModelConfig = field(default_factory=SFTModelConfig)

    def resolve(self) -> SFTConfig:
        """Take the architecture from ``model.restore_from_path``'s checkpoint (it decides the model)."""
        path = self.model.restore_from_path
        if not path:
            return self
        return dataclasses.replace(self, model=merge_architecture(self.model, restored_model_config(path)))

    def validate(self, world_size: int) -> None:
        tp, pp = self.model.tensor_model_parallel_size, self.model.pipeline_model_parallel_size
        ds = self.model.data.train_ds
        check_batch_sizes(ds.global_batch_size, ds.micro_batch_size, world_size // (tp * pp),
                          prefix="model.data.train_ds")
        if not ds.file_path:
            raise ConfigError("model.data.train_ds.file_path is not set: give the training JSONL file(s)",
                              key="model.data.train_ds.file_path")
        check_data_config(self.model.data)  # at load time, before any process starts
        if ds.packed_sequence and pp > 1:
            raise ConfigError("model.data.train_ds.packed_sequence=True with pipeline parallelism: packed "
                              "steps have a varying number of rows; use it with "
                              "model.pipeline_model_parallel_size=1",
                              key="model.data.train_ds.packed_sequence")
        if self.model.data.validation_ds.packed_sequence:
            raise ConfigError("model.data.validation_ds.packed_sequence=True: validation batches are padded, "
                              "set it to False", key="model.data.validation_ds.packed_sequence")
