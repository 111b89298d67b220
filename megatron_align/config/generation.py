"""Which engine generates (``megatron`` or ``trtllm``) and the TensorRT-LLM options, with one-line errors.

A stage embeds ``GenerationConfig`` in its trainer section, so NeMo-Aligner command lines keep working:
``trainer.self_rewarding.trt_llm.enable=true trainer.self_rewarding.trt_llm.model_type=llama`` (the seed's
keys; ``max_input_len``, ``max_output_len``, ``unload_engine_train`` and ``reshard`` are NeMo-Aligner's
other ``trt_llm.*`` names). ``backend`` is the explicit switch; left unset it follows ``trt_llm.enable``.
``validate(prefix, ...)`` names every key with the stage's prefix, e.g. ``trainer.self_rewarding``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from megatron_align.config.errors import ConfigError
from megatron_align.config.model import ModelConfig

BACKENDS = ("megatron", "trtllm")
TRTLLM_MODEL_TYPES = ("llama",)
"""``trt_llm.model_type`` values with a refit path (HF Llama / Mistral / Qwen2 layouts)."""


@dataclass
class TRTLLMConfig:
    """``trt_llm.*``: the TensorRT-LLM generation engine (PyTorch backend, refit through CUDA IPC)."""

    enable: bool = False
    """Generate with TensorRT-LLM instead of megatron's engine."""
    model_type: str = "llama"
    """``llama`` for the Llama family (llama, mistral, qwen2). NeMo's ``gptnext`` (Nemotron) has no refit path
    here and is refused."""
    max_input_len: int = 1024
    """Longest prompt, in tokens."""
    max_output_len: int = 1024
    """Most tokens generated per prompt; the engine's ``max_seq_len`` is
    ``max_input_len + max_output_len``."""
    unload_engine_train: bool = False
    """Release the engine's GPU memory (weights and KV cache) while training; needs the engine's sleep
    support (``enable_sleep``)."""
    reshard: bool = False
    """Run the engine with TP = trainer TP x PP and no pipeline (megatron's pipeline stages become tensor
    shards for generation); off: the engine uses the trainer's TP and PP."""
    refit_bucket_mb: int = 512
    """Largest weight bucket handed to the engine per ``update_weights`` call, in MiB."""
    kv_cache_free_gpu_memory_fraction: float = 0.4
    """Share of the free GPU memory the engine takes for its KV cache (the trainer shares the GPU)."""

    def engine_parallel_sizes(self, tp: int, pp: int) -> tuple[int, int]:
        """(tensor, pipeline) parallel sizes of the engine for a trainer at ``tp`` x ``pp``."""
        return (tp * pp, 1) if self.reshard else (tp, pp)


@dataclass
class GenerationConfig:
    """Generation backend switch (``backend``) and the TensorRT-LLM options (``trt_llm.*``)."""

    backend: Optional[str] = None
    """``megatron`` or ``trtllm``; ``null`` means ``trtllm`` when ``trt_llm.enable`` is true, else
    ``megatron``."""
    trt_llm: TRTLLMConfig = field(default_factory=TRTLLMConfig)
    """TensorRT-LLM options."""

    def resolved_backend(self) -> str:
        """The backend in use, after ``trt_llm.enable``."""
        if self.backend is None:
            return "trtllm" if self.trt_llm.enable else "megatron"
        return self.backend

    def validate(
        self,
        prefix: str,
        model: Optional[ModelConfig] = None,
        tp: int = 1,
        pp: int = 1,
        find_spec: Callable[[str], Any] = importlib.util.find_spec,
    ) -> None:
        """Raise ``ConfigError`` (one line naming the key) for an unusable setting.

        ``model`` / ``tp`` / ``pp``: the trained model and its layout, to check that the engine can split it.
        ``find_spec`` locates ``tensorrt_llm`` (replaceable in tests).
        """
        key = f"{prefix}.backend"
        if self.backend is not None and self.backend not in BACKENDS:
            raise ConfigError(f"{key}={self.backend!r} is not one of {'|'.join(BACKENDS)}", key=key)
        if self.backend == "megatron" and self.trt_llm.enable:
            raise ConfigError(
                f"{key}=megatron contradicts {prefix}.trt_llm.enable=true: set only one of them", key=key
            )
        if self.resolved_backend() != "trtllm":
            return
        switch = key + "=trtllm" if self.backend == "trtllm" else f"{prefix}.trt_llm.enable=true"
        t, tk = self.trt_llm, f"{prefix}.trt_llm"
        if t.model_type not in TRTLLM_MODEL_TYPES:
            raise ConfigError(
                f"{tk}.model_type={t.model_type!r}: the TensorRT-LLM refit supports "
                f"{'|'.join(TRTLLM_MODEL_TYPES)} (Llama-family) models; use {prefix}.backend=megatron",
                key=f"{tk}.model_type",
            )
        for name in ("max_input_len", "max_output_len", "refit_bucket_mb"):
            if getattr(t, name) < 1:
                raise ConfigError(f"{tk}.{name}={getattr(t, name)} must be at least 1", key=f"{tk}.{name}")
        if not 0.0 < t.kv_cache_free_gpu_memory_fraction < 1.0:
            raise ConfigError(
                f"{tk}.kv_cache_free_gpu_memory_fraction={t.kv_cache_free_gpu_memory_fraction} must be "
                "between 0 and 1", key=f"{tk}.kv_cache_free_gpu_memory_fraction",
            )
        if model is not None:
            _check_model(model, t, tk, tp, pp)
        if find_spec("tensorrt_llm") is None:
            raise ConfigError(
                f"{switch}: tensorrt_llm is not installed; use the GPU image (docs/gpu.md, TensorRT-LLM "
                f"1.2.1) or set {prefix}.backend=megatron",
                key=switch.split("=")[0],
            )


GATED_ACTIVATIONS = ("swiglu", "fast-swiglu")
"""Activations of the Llama-family MLP (gate and up projections) that the HF tensor names can express."""


def llama_family_problem(cfg: ModelConfig) -> Optional[str]:
    """Why the HF Llama-family names (TensorRT-LLM refit) cannot express ``cfg``: one line naming the field,
    or None."""
    if cfg.normalization != "rmsnorm":
        return (f"model.normalization={cfg.normalization}: TensorRT-LLM refit handles Llama-family models "
                "(rmsnorm)")
    if cfg.activation not in GATED_ACTIVATIONS:
        return f"model.activation={cfg.activation}: TensorRT-LLM refit handles Llama-family models (swiglu)"
    if cfg.position_embedding_type != "rope":
        return (f"model.position_embedding_type={cfg.position_embedding_type}: TensorRT-LLM refit handles "
                "rope models")
    if cfg.vocab_size is None:
        return "model.vocab_size is unset; the HF tensors need the real vocabulary size"
    return None


def engine_tp_problem(cfg: ModelConfig, tp: int) -> Optional[str]:
    """Why a TP=``tp`` engine cannot split ``cfg``: one line, or None."""
    heads, groups = cfg.num_attention_heads, cfg.query_groups()
    if tp < 1:
        return f"engine tensor_parallel_size={tp}: must be >= 1"
    if heads % tp:
        return f"engine tensor_parallel_size={tp} must divide num_attention_heads={heads}"
    if groups % tp and tp % groups:
        return f"engine tensor_parallel_size={tp} and num_query_groups={groups}: one must divide the other"
    if cfg.ffn_hidden_size % tp:
        return f"engine tensor_parallel_size={tp} must divide ffn_hidden_size={cfg.ffn_hidden_size}"
    return None


def _check_model(model: ModelConfig, t: TRTLLMConfig, tk: str, tp: int, pp: int) -> None:
    engine_tp, _ = t.engine_parallel_sizes(tp, pp)
    problem = llama_family_problem(model) or engine_tp_problem(model, engine_tp)
    if problem:
        raise ConfigError(f"{tk}.enable=true: {problem}", key=f"{tk}.enable")
