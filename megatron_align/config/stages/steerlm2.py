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
from typing import Optional

from megatron_align.config.data import DataConfig
from megatron_align.config.errors import ConfigError
from megatron_align.config.sampling import SamplingParams
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


def _build_sampling() -> SamplingParams:
    return SamplingParams(temperature=1.0, top_k=0, top_p=0.0, tokens_to_generate=256,
                          end_strings=["<extra_id_1>"], random_seed=1234)


@dataclass
class BuildSteerLM2Config:
    """``examples/nlp/gpt/build_steerlm2_dataset.py``: SteerLM 2.0's training records from labelled chats."""

    input: Optional[str] = None
    """NeMo chat JSONL whose last Assistant turn carries a SteerLM label: x = the system and the turns before
    it, a = its label (``label`` overrides it for every record)."""
    output: Optional[str] = None
    """The records (seed 000's JSON lines, plus ``provenance``); work files go to ``<output>.work/``."""
    policy_checkpoint: Optional[str] = None
    """Q'(y|a,x): the SteerLM model the responses are sampled from (and scored by, for log Q')."""
    sft_checkpoint: Optional[str] = None
    """P(y|x): the SFT model, scoring each response after the prompt without the label line."""
    rm_checkpoint: Optional[str] = None
    """The 9-attribute regression reward model behind log P(a|x,y)."""
    label: Optional[str] = None
    """A label for every record instead of the last Assistant turn's (``quality:4,...``)."""
    num_responses: int = 4
    """Responses sampled per prompt (n)."""
    sample: SamplingParams = field(default_factory=_build_sampling)
    """Sampling (``SamplingParams``); chunk c of prompts is drawn with seed ``random_seed + c``."""
    likelihood_sigma: float = 1.0
    """sigma of log P(a|x,y)'s discretized Gaussian (``scoring/attribute_likelihood.py``)."""
    chunk_size: int = 16
    """Prompts per durable chunk: a killed run resumes at the first unfinished chunk."""
    max_batch_size: int = 32
    """Rows per generation batch."""
    micro_batch_size: int = 8
    """Sequences per scoring forward."""
    precision: str = "32"
    """Precision of the three models (32 | bf16)."""
    on_bad_record: str = "error"
    """error | skip (counted) for a malformed input record."""
    tensor_model_parallel_size: int = 1
    """TP of each model replica (NeMo's inference key); the checkpoints are resharded to it."""
    pipeline_model_parallel_size: int = 1
    """PP of each model replica; world size / (TP x PP) replicas share the chunks."""

    def validate(self, world_size: int) -> None:
        for key in ("input", "output", "policy_checkpoint", "sft_checkpoint", "rm_checkpoint"):
            if not getattr(self, key):
                raise ConfigError(f"{key} is not set", key=key)
        s = self.sample
        if s.greedy:
            raise ConfigError("sample.greedy=true: greedy decoding has no sampling density, so log Q'(y|a,x) "
                              "(the importance weights' proposal) is undefined; sample (temperature, top_k, "
                              "top_p, repetition_penalty are all taken into account)", key="sample.greedy")
        try:
            s.validate()
        except ValueError as e:
            raise ConfigError(f"sample.{e}", key="sample") from None
        if s.random_seed is None:
            raise ConfigError("sample.random_seed is not set: the build is reproducible only when seeded",
                              key="sample.random_seed")
        for key in ("num_responses", "chunk_size", "max_batch_size", "micro_batch_size",
                    "tensor_model_parallel_size", "pipeline_model_parallel_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1", key=key)
        if not self.likelihood_sigma > 0:
            raise ConfigError(f"likelihood_sigma={self.likelihood_sigma} must be > 0", key="likelihood_sigma")
        per_replica = self.tensor_model_parallel_size * self.pipeline_model_parallel_size
        if world_size % per_replica:
            raise ConfigError(f"{world_size} ranks do not split into replicas of tensor_model_parallel_size "
                              f"x pipeline_model_parallel_size = {per_replica}",
                              key="tensor_model_parallel_size")


TRAIN_PREFIX = "train."
"""Command-line keys of the rounds script that go to each round's training config (without the prefix)."""


@dataclass
class RoundsSteerLM2Config:
    """``examples/nlp/gpt/steerlm2_rounds.py``: ``rounds`` x (build with the current policy, train it)."""

    output_dir: Optional[str] = None
    """Round r goes to ``output_dir/round_<r>/``: ``data.jsonl`` (+ ``.work/``) and ``train/``."""
    rounds: int = 2
    """Rounds (the seed's "e.g. n=2"); round r samples from and trains round r-1's checkpoint."""
    build: BuildSteerLM2Config = field(default_factory=BuildSteerLM2Config)
    """The builder's keys; ``build.policy_checkpoint`` is round 1's policy (later rounds: the previous
    round's checkpoint), ``build.output`` is set per round; round r samples with ``build.sample.random_seed
    + 1000 * (r - 1)`` (+ the chunk)."""

    def validate(self, world_size: int) -> None:
        if not self.output_dir:
            raise ConfigError("output_dir is not set", key="output_dir")
        if self.rounds < 1:
            raise ConfigError(f"rounds={self.rounds} must be >= 1", key="rounds")
        if world_size != 1:
            raise ConfigError("the rounds script runs in one process; run build_steerlm2_dataset.py and "
                              "train_steerlm2.py under torchrun on their own for a parallel round",
                              key="trainer.devices")
        import dataclasses

        dataclasses.replace(self.build, output="-").validate(world_size)
