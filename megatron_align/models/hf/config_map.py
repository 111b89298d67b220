"""HF ``config.json`` <-> our ``model.*`` section (``ModelConfig``) for llama, mistral, qwen2 and gpt2.

Owns which HF architectures and features we accept. Anything our megatron model would compute differently is
refused with one line naming the field (RoPE scaling types other than ``default``, partial-bias layouts,
GPT-2's per-layer attention scaling, cross attention, ...). Both config generations are read: transformers 4.x
(``rope_theta`` + ``rope_scaling``) and 5.x (``rope_parameters``); export writes both spellings so either
generation loads the result.

Sliding-window attention (Mistral v0.1, Qwen2 with ``use_sliding_window``) equals full attention for
sequences no longer than the window, so such a model is imported with ``max_position_embeddings`` capped to
the window (logged as a warning) instead of being refused.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from megatron_align.config.model import ModelConfig
from megatron_align.models.hf.errors import HFConversionError

logger = logging.getLogger(__name__)

LLAMA_FAMILY = ("llama", "mistral", "qwen2")
"""HF model types with the Llama layout: RMSNorm, SwiGLU, RoPE, q/k/v/o + gate/up/down projections."""
GPT2_FAMILY = ("gpt2",)
"""HF model types with the GPT-2 layout: LayerNorm, GELU, learned positions, fused Conv1D ``c_attn``."""
SUPPORTED_MODEL_TYPES = LLAMA_FAMILY + GPT2_FAMILY

_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}
# HF GELU spellings -> ours (gelu_new / gelu_pytorch_tanh / gelu_fast are the same tanh formula)
_GPT2_ACT = {"gelu_new": "gelu-tanh", "gelu_pytorch_tanh": "gelu-tanh", "gelu_fast": "gelu-tanh",
             "gelu": "gelu", "relu": "relu"}
_GPT2_ACT_BACK = {"gelu-tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
_DEFAULT_TIED = {"llama": False, "mistral": False, "qwen2": False, "gpt2": True}
_MAX_DEFAULT_SEQ = 4096


def family(model_type: str) -> str:
    """``"llama"`` or ``"gpt2"``: which weight map serves ``model_type``."""
    if model_type in LLAMA_FAMILY:
        return "llama"
    if model_type in GPT2_FAMILY:
        return "gpt2"
    raise HFConversionError(
        f"model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


def _need(hf: dict, key: str, source: str) -> Any:
    if hf.get(key) is None:
        raise HFConversionError(f"{source}: field {key!r} is missing")
    return hf[key]


def _rope(hf: dict, source: str) -> float:
    """RoPE theta from either config generation; refuses scaled and partial RoPE."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    if params and not isinstance(params, dict) or scaling and not isinstance(scaling, dict):
        raise HFConversionError(f"{source}: rope_parameters/rope_scaling must be a JSON object")
    if params and all(isinstance(v, dict) for v in params.values()):
        raise HFConversionError(f"{source}: per-layer-type rope_parameters are not supported")
    for where, block in (("rope_parameters", params), ("rope_scaling", scaling)):
        kind = block.get("rope_type", block.get("type", "default"))
        if kind not in (None, "default"):
            raise HFConversionError(
                f"{source}: {where} type {kind!r} is not implemented (only unscaled RoPE, type 'default')"
            )
    percent = float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)))
    if percent != 1.0:
        raise HFConversionError(
            f"{source}: partial_rotary_factor={percent} is not supported (RoPE on full heads only)"
        )
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def _sliding_window(hf: dict, model_type: str) -> Optional[int]:
    """The attention window that applies to at least one layer, or None."""
    window = hf.get("sliding_window")
    if not window:
        return None
    if model_type == "qwen2":
        layer_types = hf.get("layer_types")
        if layer_types is not None:
            return int(window) if "sliding_attention" in layer_types else None
        return int(window) if hf.get("use_sliding_window") else None
    return int(window)


def _llama_config(hf: dict, model_type: str, source: str) -> ModelConfig:
    hidden = int(_need(hf, "hidden_size", source))
    heads = int(_need(hf, "num_attention_heads", source))
    kv_heads = int(hf.get("num_key_value_heads") or heads)
    head_dim = int(hf.get("head_dim") or hidden // heads)
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise HFConversionError(
            f"{source}: hidden_act {act!r} is not supported for {model_type} (expected 'silu')"
        )
    attn_bias = bool(hf.get("attention_bias", False))
    mlp_bias = bool(hf.get("mlp_bias", False))
    if attn_bias != mlp_bias:
        raise HFConversionError(
            f"{source}: attention_bias={attn_bias} with mlp_bias={mlp_bias} is not supported "
            "(needs both or neither)"
        )
    theta = _rope(hf, source)
    max_pos = int(hf.get("max_position_embeddings") or 4096)
    window = _sliding_window(hf, model_type)
    if window is not None and window < max_pos:
        logger.warning(
            "%s: sliding_window=%d < max_position_embeddings=%d; importing with max_position_embeddings=%d, "
            "where full attention equals windowed attention", source, window, max_pos, window,
        )
        max_pos = window
    return ModelConfig(
        num_layers=int(_need(hf, "num_hidden_layers", source)),
        hidden_size=hidden,
        ffn_hidden_size=int(_need(hf, "intermediate_size", source)),
        num_attention_heads=heads,
        num_query_groups=None if kv_heads == heads else kv_heads,
        kv_channels=None if head_dim * heads == hidden else head_dim,
        encoder_seq_length=min(max_pos, _MAX_DEFAULT_SEQ),
        max_position_embeddings=max_pos,
        normalization="rmsnorm",
        layernorm_epsilon=float(hf.get("rms_norm_eps", 1e-6)),
        activation="fast-swiglu",
        position_embedding_type="rope",
        rotary_base=theta,
        bias=attn_bias and mlp_bias,
        qkv_bias=model_type == "qwen2" or attn_bias,
        share_embeddings_and_output_weights=bool(hf.get("tie_word_embeddings", _DEFAULT_TIED[model_type])),
        vocab_size=int(_need(hf, "vocab_size", source)),
        init_method_std=float(hf.get("initializer_range", 0.02)),
    )


def _gpt2_config(hf: dict, source: str) -> ModelConfig:
    hidden = int(_need(hf, "n_embd", source))
    act = hf.get("activation_function", "gelu_new")
    if act not in _GPT2_ACT:
        raise HFConversionError(f"{source}: activation_function {act!r} is not supported; use one of "
                                f"{', '.join(_GPT2_ACT)}")
    for key, bad in (("add_cross_attention", True), ("scale_attn_by_inverse_layer_idx", True),
                     ("scale_attn_weights", False)):
        if hf.get(key, not bad) == bad:
            raise HFConversionError(f"{source}: {key}={bad} is not supported")
    max_pos = int(_need(hf, "n_positions", source))
    return ModelConfig(
        num_layers=int(_need(hf, "n_layer", source)),
        hidden_size=hidden,
        ffn_hidden_size=int(hf.get("n_inner") or 4 * hidden),
        num_attention_heads=int(_need(hf, "n_head", source)),
        num_query_groups=None,
        kv_channels=None,
        encoder_seq_length=min(max_pos, _MAX_DEFAULT_SEQ),
        max_position_embeddings=max_pos,
        normalization="layernorm",
        layernorm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
        activation=_GPT2_ACT[act],
        position_embedding_type="learned_absolute",
        bias=True,
        qkv_bias=False,
        share_embeddings_and_output_weights=bool(hf.get("tie_word_embeddings", True)),
        vocab_size=int(_need(hf, "vocab_size", source)),
        init_method_std=float(hf.get("initializer_range", 0.02)),
    )


def model_config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    """HF ``config.json`` (as a dict) -> ``ModelConfig`` at TP=1/PP=1. ``source`` names the file in errors."""
    model_type = hf.get("model_type")
    if not model_type:
        raise HFConversionError(f"{source}: field 'model_type' is missing")
    fam = family(model_type)
    return _gpt2_config(hf, source) if fam == "gpt2" else _llama_config(hf, model_type, source)


def default_model_type(cfg: ModelConfig) -> str:
    """The HF model type an exported ``cfg`` is written as when the caller names none."""
    if cfg.position_embedding_type == "learned_absolute" and cfg.normalization == "layernorm":
        return "gpt2"
    return "qwen2" if cfg.qkv_bias and not cfg.bias else "llama"


def check_exportable(cfg: ModelConfig, model_type: str) -> None:
    """Refuse (one line) a ``cfg`` that ``model_type`` cannot express."""
    fam = family(model_type)
    want_gpt2 = fam == "gpt2"
    is_gpt2 = cfg.position_embedding_type == "learned_absolute"
    if want_gpt2 != is_gpt2:
        raise HFConversionError(
            f"model uses position_embedding_type={cfg.position_embedding_type!r}; "
            f"cannot export as {model_type!r}"
        )
    if want_gpt2:
        if cfg.normalization != "layernorm" or not cfg.bias or cfg.activation not in _GPT2_ACT_BACK:
            raise HFConversionError("not a GPT-2 shaped model (needs layernorm, bias=True, GELU)")
        mha = cfg.query_groups() == cfg.num_attention_heads
        if not mha or cfg.head_dim() * cfg.num_attention_heads != cfg.hidden_size:
            raise HFConversionError("GPT-2 export needs multi-head attention with head_dim*heads == hidden")
        return
    if cfg.rotary_percent != 1.0:
        raise HFConversionError(
            f"rotary_percent={cfg.rotary_percent} cannot be exported (HF rotates whole heads)"
        )
    if cfg.normalization != "rmsnorm" or cfg.activation not in ("fast-swiglu", "swiglu"):
        raise HFConversionError(f"{model_type} export needs normalization=rmsnorm and a SwiGLU activation")
    if model_type == "qwen2" and (cfg.bias or not cfg.qkv_bias):
        raise HFConversionError("qwen2 export needs qkv_bias=True and bias=False")
    if model_type != "qwen2" and cfg.qkv_bias and not cfg.bias:
        raise HFConversionError("qkv_bias without bias is a qwen2 layout; export with model_type 'qwen2'")


def hf_config_from_model(
    cfg: ModelConfig,
    model_type: Optional[str] = None,
    dtype: str = "float32",
    token_ids: Optional[dict] = None,
) -> dict:
    """``ModelConfig`` -> HF ``config.json`` dict that ``AutoModelForCausalLM.from_pretrained`` loads.

    ``token_ids`` may hold ``bos_token_id`` / ``eos_token_id`` / ``pad_token_id`` (from the tokenizer).
    """
    model_type = model_type or default_model_type(cfg)
    check_exportable(cfg, model_type)
    if cfg.vocab_size is None:
        raise HFConversionError("model.vocab_size is unset in the checkpoint's model_config.yaml")
    out: dict[str, Any] = {"architectures": [_ARCHITECTURES[model_type]], "model_type": model_type}
    if family(model_type) == "gpt2":
        out.update(
            vocab_size=cfg.vocab_size,
            n_embd=cfg.hidden_size,
            n_layer=cfg.num_layers,
            n_head=cfg.num_attention_heads,
            n_inner=cfg.ffn_hidden_size,
            n_positions=cfg.max_position_embeddings,
            n_ctx=cfg.max_position_embeddings,
            activation_function=_GPT2_ACT_BACK[cfg.activation],
            layer_norm_epsilon=cfg.layernorm_epsilon,
            resid_pdrop=cfg.hidden_dropout,
            embd_pdrop=cfg.hidden_dropout,
            attn_pdrop=cfg.attention_dropout,
            scale_attn_weights=True,
            scale_attn_by_inverse_layer_idx=False,
            reorder_and_upcast_attn=False,
            tie_word_embeddings=cfg.share_embeddings_and_output_weights,
            initializer_range=cfg.init_method_std,
        )
    else:
        rope = {"rope_type": "default", "rope_theta": float(cfg.rotary_base)}
        out.update(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.ffn_hidden_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.query_groups(),
            head_dim=cfg.head_dim(),
            hidden_act="silu",
            max_position_embeddings=cfg.max_position_embeddings,
            rms_norm_eps=cfg.layernorm_epsilon,
            # transformers 4.x reads rope_theta, 5.x reads rope_parameters
            rope_theta=float(cfg.rotary_base),
            rope_parameters=rope,
            attention_dropout=cfg.attention_dropout,
            tie_word_embeddings=cfg.share_embeddings_and_output_weights,
            initializer_range=cfg.init_method_std,
        )
        if model_type == "qwen2":
            out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers)
        elif model_type == "mistral":
            out.update(sliding_window=None)
        else:
            out.update(attention_bias=cfg.bias, mlp_bias=cfg.bias)
    out.update({k: v for k, v in (token_ids or {}).items() if v is not None})
    out.update(use_cache=True, torch_dtype=dtype, dtype=dtype)
    return out
