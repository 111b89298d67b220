"""Builds the policy: a megatron-core ``GPTModel`` from the ``model.*`` config section.

Two families are covered by one builder:
- Llama family (Llama 2/3, Mistral, Qwen2): RMSNorm, SwiGLU, RoPE (theta = ``rotary_base``), GQA, optional
  QKV biases (Qwen2), tied or untied embeddings.
- GPT-2 family: LayerNorm, GELU (tanh approximation), learned absolute positions, biases everywhere, tied.

Megatron's ``TransformerConfig`` is derived here once and never mutated afterwards (DESIGN.md, Config).
The layer spec is Transformer Engine's when TE imports on a CUDA machine, megatron's local spec otherwise
(with torch SDPA as its core attention, ``models/attention.py``).
"""

from __future__ import annotations

import functools
import logging
from typing import Optional

import torch
import torch.nn.functional as F

from megatron_align.config.model import ModelConfig

logger = logging.getLogger(__name__)

_PRECISION_DTYPES = {"32": torch.float32, "bf16": torch.bfloat16, "16": torch.float16}


def precision_dtype(precision) -> torch.dtype:
    """``trainer.precision`` (32, 16, bf16, bf16-mixed, 16-mixed) -> parameter dtype for compute."""
    key = str(precision).replace("-mixed", "").replace("-true", "")
    if key not in _PRECISION_DTYPES:
        raise ValueError(f"trainer.precision={precision!r}: use 32, bf16 or 16")
    return _PRECISION_DTYPES[key]


def _activation(cfg: ModelConfig):
    """(activation_func, gated_linear_unit) for megatron's MLP."""
    name = cfg.activation
    if name in ("fast-swiglu", "swiglu"):
        return F.silu, True
    if name == "gelu":
        return F.gelu, False
    if name == "gelu-tanh":
        return functools.partial(F.gelu, approximate="tanh"), False
    if name == "relu":
        return F.relu, False
    if name == "squared-relu":
        return lambda x: torch.pow(F.relu(x), 2), False
    raise ValueError(f"model.activation={name!r} is not supported")


def transformer_config_from(cfg: ModelConfig, precision="32"):
    """Derive megatron's ``TransformerConfig`` from our model section (the only place this happens)."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    act, glu = _activation(cfg)
    dtype = precision_dtype(precision)
    full_recompute = cfg.activations_checkpoint_granularity == "full" and torch.cuda.is_available()
    return TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=cfg.ffn_hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        kv_channels=cfg.kv_channels,
        normalization="RMSNorm" if cfg.normalization == "rmsnorm" else "LayerNorm",
        layernorm_epsilon=cfg.layernorm_epsilon,
        activation_func=act,
        gated_linear_unit=glu,
        add_bias_linear=cfg.bias,
        add_qkv_bias=cfg.bias or cfg.qkv_bias,
        hidden_dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout,
        init_method_std=cfg.init_method_std,
        apply_query_key_layer_scaling=cfg.apply_query_key_layer_scaling,
        tensor_model_parallel_size=cfg.tensor_model_parallel_size,
        pipeline_model_parallel_size=cfg.pipeline_model_parallel_size,
        sequence_parallel=cfg.sequence_parallel,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        pipeline_dtype=dtype,
        # CPU init builds each full weight from one seeded generator and slices it, so the same seed gives
        # the same model at every TP size; on GPUs it is megatron's default per-rank init.
        use_cpu_initialization=not torch.cuda.is_available(),
        perform_initialization=True,
        bias_dropout_fusion=False,
        bias_activation_fusion=False,
        masked_softmax_fusion=torch.cuda.is_available(),
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        rotary_interleaved=False,
        attention_softmax_in_fp32=True,
        # Losses are summed per token and divided by the global token count after the DP all-reduce
        # (DESIGN.md habit 3): megatron's schedules and finalize_model_grads do exactly that with this flag.
        calculate_per_token_loss=True,
        # megatron's recompute reads CUDA RNG states, which the CPU layer does not emulate: off on CPU.
        recompute_granularity=(cfg.activations_checkpoint_granularity
                               if torch.cuda.is_available() else None),
        recompute_method=cfg.activations_checkpoint_method if full_recompute else None,
        recompute_num_layers=(cfg.activations_checkpoint_num_layers or 1) if full_recompute else None,
    )


def _te_usable() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "no TE"
        return False
    return True


def layer_spec(cfg: ModelConfig):
    """Transformer Engine layer spec on CUDA with TE installed, megatron's local spec otherwise.

    In the local spec, core attention is ``models.attention.SDPADotProductAttention`` (megatron's
    ``DotProductAttention`` whose causal / unmasked case runs as one torch SDPA call: same math, one blocked
    kernel instead of baddbmm + masked_fill + softmax + bmm; see docs/benchmarks.md).
    """
    from megatron.core.models.gpt import gpt_layer_specs as specs
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    from megatron_align.models.attention import SDPADotProductAttention
    from megatron_align.models.norms import SequenceParallelTorchNorm

    if _te_usable():
        return specs.get_gpt_layer_with_transformer_engine_spec()
    norm = "RMSNorm" if cfg.normalization == "rmsnorm" else "LayerNorm"
    spec = specs.get_gpt_layer_local_spec(normalization=norm)
    spec.submodules.self_attention.submodules.core_attention = SDPADotProductAttention
    layer = spec.submodules
    for name in ("input_layernorm", "pre_mlp_layernorm"):
        if getattr(layer, name) is WrappedTorchNorm:  # (apex's FusedLayerNorm, when present, is kept)
            setattr(layer, name, SequenceParallelTorchNorm)
    return spec


def block_spec(cfg: ModelConfig, config):
    """The decoder block for this rank's pipeline stage: ``layer_spec(cfg)`` repeated, and a final norm that
    works under sequence parallelism (megatron would pick ``WrappedTorchNorm`` for it, which refuses it).
    ``config``: the megatron ``TransformerConfig``."""
    from megatron.core.transformer.torch_norm import WrappedTorchNorm
    from megatron.core.transformer.transformer_block import (
        LayerNormImpl,
        TransformerBlockSubmodules,
        get_num_layers_to_build,
    )

    from megatron_align.models.norms import SequenceParallelTorchNorm

    spec = layer_spec(cfg)
    if _te_usable() or LayerNormImpl is not WrappedTorchNorm:
        return spec
    return TransformerBlockSubmodules(layer_specs=[spec] * get_num_layers_to_build(config),
                                      layer_norm=SequenceParallelTorchNorm)


def gpt_model_kwargs(
    cfg: ModelConfig,
    vocab_size: Optional[int] = None,
    precision="32",
    pre_process: Optional[bool] = None,
    post_process: Optional[bool] = None,
) -> dict:
    """Constructor arguments of megatron's ``GPTModel`` (and subclasses) for this rank's pipeline stage."""
    from megatron.core import parallel_state as ps

    if pre_process is None:
        pre_process = ps.is_pipeline_first_stage(ignore_virtual=True)
    if post_process is None:
        post_process = ps.is_pipeline_last_stage(ignore_virtual=True)
    config = transformer_config_from(cfg, precision)
    return dict(
        config=config,
        transformer_layer_spec=block_spec(cfg, config),
        vocab_size=cfg.padded_vocab_size(vocab_size),
        max_sequence_length=cfg.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        position_embedding_type=cfg.position_embedding_type,
        rotary_percent=cfg.rotary_percent,
        rotary_base=cfg.rotary_base,
    )


def build_gpt_model(
    cfg: ModelConfig,
    vocab_size: Optional[int] = None,
    precision="32",
    pre_process: Optional[bool] = None,
    post_process: Optional[bool] = None,
    parallel_output: bool = True,
):
    """Build this rank's ``GPTModel`` stage. Parallel state must be initialised (``distributed.start``).

    ``vocab_size`` is the tokenizer's; the embedding holds ``cfg.padded_vocab_size(vocab_size)`` rows.
    ``parallel_output=True`` keeps the logits vocab-parallel ``[B, S, V/tp]``; False gathers ``[B, S, V]``.
    """
    from megatron.core.models.gpt import GPTModel

    model = GPTModel(
        **gpt_model_kwargs(cfg, vocab_size, precision, pre_process, post_process),
        parallel_output=parallel_output,
        share_embeddings_and_output_weights=cfg.share_embeddings_and_output_weights,
    )
    return cast_to_precision(model, precision)


def cast_to_precision(model, precision):
    """Every parameter in the compute dtype. megatron's linear layers honour ``params_dtype`` already; the
    local spec's torch norms do not (TE's do), and a model with mixed parameter dtypes breaks megatron's
    fp16/bf16 optimizer checkpointing. fp32 master weights live in the optimizer, as usual."""
    dtype = precision_dtype(precision)
    if dtype != torch.float32:
        model.to(dtype)
    return model
