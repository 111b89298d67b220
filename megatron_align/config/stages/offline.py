"""Offline alignment (seed 003: Rejection Sampling, ReST, Decision Transformer): the schemas of
``examples/nlp/gpt/offline/launch_random_sampler.py`` and ``launch_reward_labeler.py``, with the seed's key
names (NeMo-Aligner's ``megatron_random_sampler.yaml`` / ``megatron_reward_labeler.yaml``).

Both read JSONL files ``data.file_names`` blended by ``data.concat_sampling_probabilities`` (``blend_counts``:
of T = the files' total record count, file d gives ``apportion(p, T)[d]`` records, its first ones in file
order, repeating the file from its start when its share is larger than the file; files in the order given; no
randomness, so no seed). Each loads one model; the loops are ``algorithms/offline/``.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any, Optional

from megatron_align.config.errors import ConfigError
from megatron_align.config.sampling import SamplingParams
from megatron_align.config.schema import TrainerConfig
from megatron_align.config.stages.reward_model import RewardStandardization

PROCESSORS = ("rs", "rest", "dt", "null")
"""Values of the labeler's ``processor`` (``scoring/filters.py``)."""
DEFAULT_REWARD_TEMPLATE = "{input} <rm_score>: {reward} "
"""Decision Transformer's prompt rewrite (the seed's default ``reward_template``)."""


@dataclass
class OfflineData:
    """``data.*`` shared by the sampler and the labeler."""

    file_names: list = field(default_factory=list)
    """JSONL files to read (the sampler: ``{input}`` prompts; the labeler: ``{input, output}`` samples)."""
    concat_sampling_probabilities: Optional[list] = None
    """One weight per file, summing to 1 (None: [1] for one file); how many records of each file are used:
    the module docstring."""
    micro_batch_size: int = 1
    """Prompts (sampler) or samples (labeler) per batch on one model replica."""
    max_seq_length: int = 2048
    """Longest input in tokens (sampler: the prompt; labeler: input + output); a longer one is an error, or
    skipped and counted with ``data.on_bad_record=skip``."""
    hf_dataset: bool = True
    """Accepted for the seed's command lines (files are always read as JSONL)."""
    input_key: str = "input"
    """Key of the prompt in each record."""
    output_key: str = "output"
    """Key of the response in each record."""
    on_bad_record: str = "error"
    """``error``: a malformed or over-long record stops the job with ``file:line: field: problem``;
    ``skip``: it is left out and counted."""

    def validate(self, prefix: str = "data") -> None:
        if not self.file_names or not isinstance(self.file_names, list):
            raise ConfigError(f"{prefix}.file_names is not set: give [file.jsonl, ...]",
                              key=f"{prefix}.file_names")
        p = self.concat_sampling_probabilities
        if p is None:
            if len(self.file_names) != 1:
                raise ConfigError(f"{prefix}.concat_sampling_probabilities is not set: one weight per file "
                                  f"({len(self.file_names)} files)",
                                  key=f"{prefix}.concat_sampling_probabilities")
        else:
            key = f"{prefix}.concat_sampling_probabilities"
            if not isinstance(p, list) or len(p) != len(self.file_names):
                raise ConfigError(f"{key}={p!r}: one weight per file of {prefix}.file_names "
                                  f"({len(self.file_names)})", key=key)
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in p):
                raise ConfigError(f"{key}={p!r}: weights are numbers >= 0", key=key)
            if abs(sum(p) - 1.0) > 1e-6:
                raise ConfigError(f"{key}={p!r} sums to {sum(p):g}, not 1", key=key)
        for name in ("micro_batch_size", "max_seq_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{prefix}.{name}={getattr(self, name)} must be >= 1",
                                  key=f"{prefix}.{name}")
        if self.on_bad_record not in ("error", "skip"):
            raise ConfigError(f"{prefix}.on_bad_record={self.on_bad_record!r} is not one of error|skip",
                              key=f"{prefix}.on_bad_record")


@dataclass
class SamplerData(OfflineData):
    """``data.*`` of the random sampler."""

    n: int = 1
    """Samples generated per prompt."""
    sample_split_size: int = -1
    """Prompts per iteration slice (-1: all); with ``sample_split_iter`` the prompts
    [iter * size, (iter + 1) * size) of the blended list are sampled (the last slice may be shorter)."""
    sample_split_iter: int = 0
    """Which slice (the online loop's iteration)."""


@dataclass
class SamplerInference(SamplingParams):
    """``inference.*``: sampling settings (``config/sampling.py``); ``random_seed`` seeds batch b of the run
    with ``random_seed + b`` (a resumed or data-parallel run draws what one uninterrupted process draws)."""


def _sampler_inference() -> SamplerInference:
    # NeMo-Aligner's megatron_random_sampler.yaml defaults (the seed's commands rely on them: top_p 0.9 and
    # repetition_penalty 1.2 are on unless set), seeded
    return SamplerInference(temperature=1.0, top_k=0, top_p=0.9, repetition_penalty=1.2,
                            tokens_to_generate=30, min_tokens_to_generate=1, random_seed=1234)


@dataclass
class _OfflineStage:
    """Keys both stages take: model file, machines, layout, output and its checkpointing."""

    gpt_model_file: Optional[str] = None
    """The model checkpoint (a megatron_align directory or a ``.nemo``)."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Processes (``num_nodes * devices`` = TP x PP x replicas) and precision."""
    megatron_amp_O2: bool = False
    """Accepted for the seed's command lines; weights run in ``trainer.precision``."""
    tensor_model_parallel_size: int = 1
    """TP of each model replica (the checkpoint is resharded to it)."""
    pipeline_model_parallel_size: int = 1
    """PP of each model replica; world / (TP x PP) replicas share the batches."""
    output_file: Optional[str] = None
    """The JSONL written at the end, whole (temporary file, then rename)."""
    checkpoint_interval: int = 1
    """Batches between two saves of the finished work to ``<output_file>_temp/``; a restarted run resumes
    there, and the folder is removed once the output is written."""
    export_reward: bool = False
    """Write each sample's ``reward`` (labeler); the sampler accepts the key and writes no reward."""

    def _validate_common(self, world_size: int) -> None:
        for key in ("gpt_model_file", "output_file"):
            if not getattr(self, key):
                raise ConfigError(f"{key} is not set", key=key)
        for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "checkpoint_interval"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1", key=key)
        per_replica = self.tensor_model_parallel_size * self.pipeline_model_parallel_size
        if world_size % per_replica:
            raise ConfigError(f"{world_size} ranks do not split into replicas of tensor_model_parallel_size "
                              f"x pipeline_model_parallel_size = {per_replica}",
                              key="tensor_model_parallel_size")


@dataclass
class RandomSamplerConfig(_OfflineStage):
    """``launch_random_sampler.py``: ``data.n`` samples of every prompt, ``{input, output}`` lines."""

    inference: SamplerInference = field(default_factory=_sampler_inference)
    """Sampling settings."""
    data: SamplerData = field(default_factory=SamplerData)
    """Prompt files and batching."""

    def validate(self, world_size: int) -> None:
        self._validate_common(world_size)
        self.data.validate()
        if self.data.n < 1:
            raise ConfigError(f"data.n={self.data.n} must be >= 1 (samples per prompt)", key="data.n")
        if self.data.sample_split_size == 0 or self.data.sample_split_size < -1:
            raise ConfigError(f"data.sample_split_size={self.data.sample_split_size} must be >= 1 (-1: all)",
                              key="data.sample_split_size")
        if self.data.sample_split_iter < 0:
            raise ConfigError(f"data.sample_split_iter={self.data.sample_split_iter} must be >= 0",
                              key="data.sample_split_iter")
        try:
            self.inference.validate()
        except ValueError as e:
            raise ConfigError(f"inference.{e}", key="inference") from None
        if self.inference.random_seed is None:
            raise ConfigError("inference.random_seed is not set: a resumed run equals an uninterrupted one "
                              "only when seeded", key="inference.random_seed")


@dataclass
class RewardLabelerConfig(_OfflineStage):
    """``launch_reward_labeler.py``: each ``{input, output}`` sample scored by the reward model
    ``gpt_model_file``, then ``processor``: ``rs`` / ``rest`` / ``dt`` / ``null`` (``scoring/filters.py``)."""

    data: OfflineData = field(default_factory=lambda: OfflineData(max_seq_length=4096))
    """Sample files (blended) and batching."""
    processor: Optional[str] = None
    """``rs``: the best-rewarded sample of each input (ties: the first); ``rest``: samples with reward >
    ``threshold``; ``dt``: every sample, its input rewritten with ``reward_template``; ``null`` (also written
    ``"null"``): every sample with its reward."""
    threshold: float = 0.0
    """ReST's filter: a sample is kept when its (standardized) reward is strictly above this."""
    reward_template: str = DEFAULT_REWARD_TEMPLATE
    """Decision Transformer's input: ``{input}`` and ``{reward}`` (one decimal) filled in."""
    reward_standardization: RewardStandardization = field(default_factory=RewardStandardization)
    """``(reward - mean) / std`` before the processor; ``mean`` / ``std`` null: computed over all samples
    (sample std, N - 1) and logged."""
    reward_attribute: Any = None
    """Multi-attribute reward models: the attribute that is the reward (its index, or a SteerLM attribute
    name)."""
    reward_weights: Optional[list] = None
    """Multi-attribute reward models: reward = sum of weights x attributes (instead of one attribute)."""

    def processor_name(self) -> str:
        """``processor``, null written ``null``."""
        return "null" if self.processor is None else self.processor

    def validate(self, world_size: int) -> None:
        self._validate_common(world_size)
        self.data.validate()
        if self.processor_name() not in PROCESSORS:
            raise ConfigError(f"processor={self.processor!r} is not one of {'|'.join(PROCESSORS)}",
                              key="processor")
        if self.processor_name() == "dt":
            check_reward_template(self.reward_template)
        if self.reward_attribute is not None and self.reward_weights is not None:
            raise ConfigError("reward_attribute and reward_weights are both set: give one",
                              key="reward_weights")
        if self.reward_weights is not None and (not isinstance(self.reward_weights, list) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) for w in self.reward_weights)):
            raise ConfigError(f"reward_weights={self.reward_weights!r}: a list of numbers, one per attribute",
                              key="reward_weights")
        s = self.reward_standardization
        for name in ("mean", "std"):
            v = getattr(s, name)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                raise ConfigError(f"reward_standardization.{name}={v!r}: one number (the reward is a scalar) "
                                  "or null to compute it over the samples",
                                  key=f"reward_standardization.{name}")
        if s.std is not None and s.std <= 0:
            raise ConfigError(f"reward_standardization.std={s.std} must be > 0",
                              key="reward_standardization.std")


def check_reward_template(template: str) -> None:
    """One line unless ``template`` is a format string with ``{reward}`` and nothing but ``{input}`` and
    ``{reward}`` fields."""
    key = "reward_template"
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ConfigError(f"{key}={template!r}: {e} (write a literal brace as {{{{ or }}}})",
                          key=key) from None
    if "reward" not in fields:
        raise ConfigError(f"{key}={template!r} has no {{reward}}: Decision Transformer conditions on it",
                          key=key)
    unknown = sorted(set(fields) - {"input", "reward"})
    if unknown:
        raise ConfigError(f"{key}={template!r}: unknown field(s) {unknown}; use {{input}} and {{reward}}",
                          key=key)


SFT_PREFIX = "sft."
"""Command-line keys of the offline loop that go to each iteration's SFT run (without the prefix)."""


def _loop_labeler() -> RewardLabelerConfig:
    return RewardLabelerConfig(processor="rs")


@dataclass
class OfflineLoopConfig:
    """``megatron-align offline-loop``: the seed's Online Rejection Sampling / ReST loop as one resumable
    command: ``iterations`` x (sample the next ``rollout_batch_size`` prompts with the current policy ->
    label and filter -> SFT from the current policy)."""

    output_dir: Optional[str] = None
    """Iteration i goes to ``output_dir/iter_<i>/``: ``generated.jsonl``, ``filtered.jsonl``, ``sft/``."""
    iterations: int = 2
    """Iterations (the seed's ``TRAINING_ITERS``)."""
    rollout_batch_size: int = 2048
    """Prompts per iteration (the seed's ``ROLLOUT_BATCH_SIZE``): iteration i samples slice i."""
    sampler: RandomSamplerConfig = field(default_factory=RandomSamplerConfig)
    """The sampler's keys; ``sampler.gpt_model_file`` is iteration 0's policy (later ones: the previous
    iteration's SFT model), ``output_file`` and the split are set per iteration, and iteration i samples with
    ``inference.random_seed + 1000 * i``."""
    labeler: RewardLabelerConfig = field(default_factory=_loop_labeler)
    """The labeler's keys (``labeler.gpt_model_file``: the reward model; ``processor`` rs or rest)."""

    def validate(self, world_size: int) -> None:
        if not self.output_dir:
            raise ConfigError("output_dir is not set", key="output_dir")
        for key in ("iterations", "rollout_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1", key=key)
        if world_size != 1:
            raise ConfigError("the offline loop runs in one process; run the three stages under torchrun on "
                              "their own (examples/nlp/gpt/offline/online_rs.sh) for a parallel loop",
                              key="trainer.devices")
        import dataclasses

        dataclasses.replace(self.sampler, output_file="-").validate(world_size)
        data = dataclasses.replace(self.labeler.data, file_names=["-"], concat_sampling_probabilities=None)
        dataclasses.replace(self.labeler, output_file="-", data=data).validate(world_size)
        if self.labeler.processor_name() not in ("rs", "rest"):
            raise ConfigError(f"labeler.processor={self.labeler.processor!r}: the loop filters (rs | rest)",
                              key="labeler.processor")
