"""Config schemas of the two servers, with the key names of the NeMo / NeMo-Aligner commands in the seeds.

``GPTEvalConfig`` is ``examples/nlp/language_modeling/megatron_gpt_eval.py`` (NeMo's
``megatron_gpt_inference.yaml``: top-level ``gpt_model_file``, ``tensor_model_parallel_size``, ``server``,
``port``, ``prompts``, ``inference.*``), plus the serving limits (``host``, ``max_batch_size``, ...).
``RMServeConfig`` is ``examples/nlp/gpt/serve_reward_model.py`` (NeMo-Aligner's ``inference_rm.yaml``:
``rm_model_file``, ``inference.port``, ``inference.micro_batch_size``, ``model.reward_standardization.*``).
Unknown keys are one-line config errors, as everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from megatron_align.config import ConfigError, TrainerConfig
from megatron_align.config.sampling import SamplingParams
from megatron_align.config.stages.reward_model import RewardStandardization


@dataclass
class ServeTrainerConfig(TrainerConfig):
    """``trainer.*`` of a server: its processes (``num_nodes * devices`` = TP * PP * replicas)."""

    logger: bool = False
    """Accepted for NeMo command lines; servers write no metric logs."""
    use_distributed_sampler: bool = False
    """Accepted for NeMo command lines; unused."""


@dataclass
class InferenceParams(SamplingParams):
    """``inference.*`` of ``megatron_gpt_eval.py``: sampling settings of the offline ``prompts`` mode (the
    server takes them from each request instead). Keys and defaults: ``config/sampling.py``."""


@dataclass
class GPTEvalConfig:
    """Top-level schema of ``examples/nlp/language_modeling/megatron_gpt_eval.py``
    (``conf/megatron_gpt_inference.yaml``)."""

    inference: InferenceParams = field(default_factory=InferenceParams)
    """Sampling settings of the offline prompts mode."""
    trainer: ServeTrainerConfig = field(default_factory=ServeTrainerConfig)
    """Processes and precision."""
    gpt_model_file: Optional[str] = None
    """A megatron_align checkpoint directory (``megatron-align convert`` or a training run writes one)."""
    tensor_model_parallel_size: int = -1
    """Tensor-parallel ranks per model replica; -1: as saved in the checkpoint's model_config.yaml."""
    pipeline_model_parallel_size: int = -1
    """Pipeline stages per model replica; -1: as saved in the checkpoint's model_config.yaml."""
    pipeline_model_parallel_split_rank: int = -1
    """Accepted for NeMo command lines (encoder-decoder models only); must be -1 or 0 for GPT models."""
    megatron_amp_O2: bool = False
    """Accepted for NeMo command lines; weights are served in ``trainer.precision``."""
    micro_batch_size: int = -1
    """Accepted for NeMo command lines; the batch size is ``max_batch_size``."""
    prompts: list = field(default_factory=lambda: ["Q: How are you?", "Q: How big is the universe?"])
    """Prompts of the offline mode (``server=False``): generated once, printed as JSON, then the job ends."""
    server: bool = False
    """Serve ``PUT /generate`` over HTTP instead of running ``prompts`` once."""
    port: int = 5555
    """HTTP port of the server."""
    host: str = "127.0.0.1"
    """Address the server listens on; the loopback default keeps it private to this machine (``0.0.0.0``
    opens it to the network, with no authentication)."""
    web_server: bool = False
    """NeMo's Gradio web page: not provided here (must be False)."""
    max_batch_size: int = 32
    """Sentences per generation call on one model replica; concurrent compatible requests are merged up to
    this (times the number of data-parallel replicas)."""
    max_sentences_per_request: int = 128
    """Sentences one request may hold (NeMo's limit is 128)."""
    max_request_bytes: int = 10_000_000
    """Largest request body accepted, in bytes (413 above)."""
    max_generated_tokens_per_request: int = 131_072
    """Most tokens one request may ask for: ``tokens_to_generate`` x number of sentences (422 above)."""
    max_all_probs_values: int = 2_000_000
    """Most vocabulary-wide log-probs one ``all_probs=true`` request may return: sum over sentences of
    (prompt + generated tokens - 1) x vocabulary size (422 above; ~20 bytes of JSON each)."""
    header_timeout_s: float = 10.0
    """A connection whose request headers are not complete this many seconds after it opened (or after its
    previous response) is closed."""
    keep_alive_timeout_s: float = 5.0
    """An idle keep-alive connection is closed after this many seconds."""
    batch_wait_ms: float = 5.0
    """After a request arrives, wait this long for more to merge into the same batch."""

    def validate(self) -> None:
        """One-line errors for values no run can use (checked before any process group exists)."""
        if not self.gpt_model_file:
            raise ConfigError("gpt_model_file is not set: give a megatron_align checkpoint directory",
                              key="gpt_model_file")
        if self.web_server:
            raise ConfigError("web_server=True: the Gradio web page is not provided; use server=True and "
                              "PUT /generate", key="web_server")
        if self.pipeline_model_parallel_split_rank not in (-1, 0):
            raise ConfigError("pipeline_model_parallel_split_rank is for encoder-decoder models: set it to 0 "
                              "or leave it out", key="pipeline_model_parallel_split_rank")
        for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
            if getattr(self, key) == 0 or getattr(self, key) < -1:
                raise ConfigError(f"{key}={getattr(self, key)}: must be >= 1 (or -1: as saved)", key=key)
        _check_serving_limits(self, "")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port={self.port} is not a TCP port (1..65535)", key="port")


@dataclass
class RMServeModelConfig:
    """``model.*`` of the reward-model server: the layout to load the checkpoint at, and standardization
    (the architecture comes from the checkpoint)."""

    tensor_model_parallel_size: int = -1
    """Tensor-parallel ranks per replica; -1: as saved in the checkpoint."""
    pipeline_model_parallel_size: int = -1
    """Pipeline stages per replica; -1: as saved in the checkpoint."""
    sequence_parallel: bool = False
    """Accepted for NeMo-Aligner command lines; inference runs without sequence parallelism."""
    activations_checkpoint_granularity: Optional[str] = None
    """Accepted for NeMo-Aligner command lines; no activations are kept at inference."""
    activations_checkpoint_method: Optional[str] = None
    """Accepted for NeMo-Aligner command lines; unused."""
    megatron_amp_O2: bool = False
    """Accepted for NeMo-Aligner command lines; weights are served in ``trainer.precision``."""
    reward_standardization: RewardStandardization = field(default_factory=RewardStandardization)
    """Per-attribute mean/std applied to served rewards."""


@dataclass
class RMInferenceConfig:
    """``inference.*`` of the reward-model server."""

    micro_batch_size: int = 4
    """Sequences per forward pass on one model replica."""
    port: int = 5555
    """HTTP port of the server."""
    host: str = "127.0.0.1"
    """Address the server listens on (loopback by default; ``0.0.0.0`` opens it to the network)."""
    model_name: str = "reward_model"
    """Name reported by ``GET /health`` (NeMo-Aligner's PyTriton model name)."""
    max_batch_size: int = 64
    """Sequences per scoring round on one replica; concurrent requests are merged up to this."""
    max_sentences_per_request: int = 1024
    """Sequences one request may hold."""
    max_request_bytes: int = 50_000_000
    """Largest request body accepted, in bytes (413 above)."""
    header_timeout_s: float = 10.0
    """A connection whose request headers are not complete this many seconds after it opened (or after its
    previous response) is closed."""
    keep_alive_timeout_s: float = 5.0
    """An idle keep-alive connection is closed after this many seconds."""
    batch_wait_ms: float = 5.0
    """After a request arrives, wait this long for more to merge into the same batch."""


@dataclass
class RMServeConfig:
    """Top-level schema of ``examples/nlp/gpt/serve_reward_model.py`` (``conf/inference_rm.yaml``)."""

    trainer: ServeTrainerConfig = field(default_factory=ServeTrainerConfig)
    """Processes and precision."""
    inference: RMInferenceConfig = field(default_factory=RMInferenceConfig)
    """Port, batch sizes and request limits."""
    rm_model_file: Optional[str] = None
    """A megatron_align reward-model checkpoint directory."""
    model: RMServeModelConfig = field(default_factory=RMServeModelConfig)
    """Layout and reward standardization."""

    def validate(self) -> None:
        """One-line errors for values no run can use."""
        if not self.rm_model_file:
            raise ConfigError("rm_model_file is not set: give a megatron_align reward-model checkpoint "
                              "directory", key="rm_model_file")
        for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
            value = getattr(self.model, key)
            if value == 0 or value < -1:
                raise ConfigError(f"model.{key}={value}: must be >= 1 (or -1: as saved)", key=f"model.{key}")
        if self.inference.micro_batch_size < 1:
            raise ConfigError("inference.micro_batch_size must be at least 1",
                              key="inference.micro_batch_size")
        _check_serving_limits(self.inference, "inference.")
        if not 0 < self.inference.port < 65536:
            raise ConfigError(f"inference.port={self.inference.port} is not a TCP port (1..65535)",
                              key="inference.port")


def _check_serving_limits(section, prefix: str) -> None:
    for key in ("max_batch_size", "max_sentences_per_request", "max_request_bytes",
                "max_generated_tokens_per_request", "max_all_probs_values"):
        if getattr(section, key, 1) < 1:
            raise ConfigError(f"{prefix}{key}={getattr(section, key)} must be at least 1", key=prefix + key)
    for key in ("header_timeout_s", "keep_alive_timeout_s"):
        if not getattr(section, key) > 0:
            raise ConfigError(f"{prefix}{key}={getattr(section, key)} must be > 0 seconds", key=prefix + key)
    if section.batch_wait_ms < 0:
        raise ConfigError(f"{prefix}batch_wait_ms must be >= 0", key=prefix + "batch_wait_ms")
