"""SteerLM 2.0 training (``examples/nlp/gpt/train_steerlm2.py``, ``conf/train_steerlm2.yaml``): the SFT
stage's keys (the seed's command sets ``trainer.sft.*``, ``model.data.train_ds.*``, ``model.optim.*``, ...)
plus ``model.steerlm2``.

* ``model.data.train_ds.global_batch_size`` counts prompts; a prompt brings all its responses (one group);
* ``model.steerlm2.micro_batch_size`` / ``forward_micro_batch_size`` count response rows, as in
  NeMo-Aligner: rows per gradient micro-batch and per no-grad pass of the current policy (the baseline b');
  a group may span micro-batches;
* ``model.steerlm2.length_normalization``: ``group_mean`` divides each prompt's term by the mean length of its
  responses (NeMo-Aligner's loss, so the seed's learning rate carries over), ``none`` leaves the estimator as
  the paper writes it; the loss is then averaged over the prompts of the global batch.

This file is the schema; the loop is ``algorithms/steerlm2.py``; the formulas ``losses/steerlm2.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_align.config.data import DataConfig
from megatron_align.config.errors import ConfigError
from megatron_align.config.stages.sft import SFTConfig, SFTModelConfig

LENGTH_NORMALIZATIONS = ("group_mean", "none")
"""``model.steerlm2.length_normalization`` values (the loss's: ``losses/steerlm2.py``)."""
STEERLM2_OVERLONG = ("drop", "error")
"""``model.steerlm2.overlong`` values."""


@dataclass
class SteerLM2Section:
    """``model.steerlm2.*``"""

    micro_batch_size: int = 1
    """Response rows per forward/backward micro-batch."""
    forward_micro_batch_size: int = 1
    """Response rows per micro-batch of the no-grad pass that gives the baseline b'."""
    length_normalization: str = "group_mean"
    """group_mean (NeMo-Aligner's: each prompt's term / its responses' mean length) | none."""
    overlong: str = "drop"
    """A record with a response longer than max_seq_length: drop (counted, replaced by the next record) |
    error. Responses are never cut (their stored log Q' covers the whole response)."""


@dataclass
class SteerLM2ModelConfig(SFTModelConfig):
    """``model.*`` for SteerLM 2.0."""

    steerlm2: SteerLM2Section = field(default_factory=SteerLM2Section)
    """Micro-batch sizes (in response rows) and the loss normalization."""
    data: DataConfig = field(default_factory=lambda: DataConfig(chat=True))
    """``model.data.*``: the records' files and the chat template (``chat`` True: records are chats)."""


@dataclass
class SteerLM2Config(SFTConfig):
    """Top-level schema of ``examples/nlp/gpt/train_steerlm2.py``."""

    name: str = "megatron_gpt_steerlm2"
    model: SteerLM2ModelConfig = field(default_factory=SteerLM2ModelConfig)

    def validate(self, world_size: int) -> None:
        super().validate(world_size)
        m, s = self.model, self.model.steerlm2
        for key in ("micro_batch_size", "forward_micro_batch_size"):
            if getattr(s, key) < 1:
                raise ConfigError(f"model.steerlm2.{key}={getattr(s, key)} must be >= 1",
                                  key=f"model.steerlm2.{key}")
        if s.length_normalization not in LENGTH_NORMALIZATIONS:
            raise ConfigError(f"model.steerlm2.length_normalization={s.length_normalization!r} is not one of "
                              f"{'|'.join(LENGTH_NORMALIZATIONS)}", key="model.steerlm2.length_normalization")
        if s.overlong not in STEERLM2_OVERLONG:
            raise ConfigError(f"model.steerlm2.overlong={s.overlong!r} is not one of "
                              f"{'|'.join(STEERLM2_OVERLONG)}", key="model.steerlm2.overlong")
        if not m.answer_only_loss:
            raise ConfigError("model.answer_only_loss=False: SteerLM 2.0's estimator scores the responses "
                              "only; set it to True", key="model.answer_only_loss")
        if not m.data.chat:
            raise ConfigError("model.data.chat=False: SteerLM 2.0 records are chats (system, prompt_turns, "
                              "label, responses); set model.data.chat=True", key="model.data.chat")
        if m.data.train_ds.packed_sequence:
            raise ConfigError("model.data.train_ds.packed_sequence=True: SteerLM 2.0 rows are responses of "
                              "one prompt, not packed", key="model.data.train_ds.packed_sequence")
        if not m.restore_from_path:
            raise ConfigError("model.restore_from_path is not set: SteerLM 2.0 starts from the SteerLM "
                              "(attribute-conditioned SFT) model", key="model.restore_from_path")
