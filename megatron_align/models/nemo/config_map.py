"""NeMo 1.x ``model_config.yaml`` <-> our ``model.*`` section (``ModelConfig``), and which variants we refuse.

Sources for each key's meaning and default (NeMo v1.23 ``megatron_gpt_model.py`` / ``megatron_base_model.py``,
NeMo-Aligner's reward models): docs/nemo_format_research.md, section 3. Our key names are NeMo's, so most keys
copy across; the differences:
- ``normalization: layernorm1p`` (zero-centred gamma, stored as gamma - 1) is read as ``layernorm`` and the
  weights get +1 (``weights.py``); export writes plain ``layernorm``;
- ``activation``: ``swiglu`` / ``fast-swiglu`` -> ``fast-swiglu``; ``gelu`` with ``openai_gelu: true`` ->
  ``gelu-tanh``; the other gated units (geglu, reglu) are refused;
- ``rotary_percentage`` -> ``rotary_percent``;
- the embedding's stored row count decides the padded vocabulary (NeMo pads to ``make_vocab_size_divisible_by
  x tensor_model_parallel_size`` at save time), see ``vocab_fields``.
Refused, one line each: NeMo 2.0 checkpoints (the archive check), ``mcore_gpt`` false (the legacy GPT), MoE
(``num_moe_experts``), non-GPT ``target`` classes, ``position_embedding_type`` other than rope /
learned_absolute, fp8-trained models' scaling state (warned, not refused: it is dropped).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from megatron_align.config.model import ModelConfig
from megatron_align.models.nemo.errors import NemoFormatError

logger = logging.getLogger(__name__)

GPT_TARGET = "nemo.collections.nlp.models.language_modeling.megatron_gpt_model.MegatronGPTModel"
RM_TARGETS = {
    "binary_ranking": "nemo_aligner.models.nlp.gpt.megatron_gpt_reward_model.MegatronGPTRewardModel",
    "regression": "nemo_aligner.models.nlp.gpt.megatron_gpt_regression_reward_model."
                  "MegatronGPTRegressionRewardModel",
}
_ACTIVATIONS = {"gelu": "gelu", "fast-swiglu": "fast-swiglu", "swiglu": "fast-swiglu",
                "squared-relu": "squared-relu", "relu": "relu"}


def parse_model_yaml(text: str, source: str) -> dict:
    """The model section of a ``model_config.yaml`` (a top-level ``model:`` wrapper is unwrapped), with its
    ``${...}`` interpolations resolved; safe YAML only (no Python tags)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise NemoFormatError(f"{source}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise NemoFormatError(f"{source}: expected a mapping of model keys")
    if isinstance(raw.get("model"), dict) and "num_layers" not in raw:
        raw = raw["model"]
    try:
        return OmegaConf.to_container(OmegaConf.create(raw), resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise NemoFormatError(f"{source}: cannot resolve an interpolation ({type(e).__name__}: "
                              f"{str(e).splitlines()[0]})") from None


def model_kind(cfg: dict) -> str:
    """``gpt`` or ``reward`` (a NeMo-Aligner reward model: ``reward_model_type`` or a reward ``target``)."""
    target = str(cfg.get("target") or "")
    return "reward" if ("reward_model_type" in cfg or "RewardModel" in target) else "gpt"


def check_supported(cfg: dict, source: str) -> None:
    """One line for each variant we cannot load, naming the key and what to do."""
    target = str(cfg.get("target") or "")
    if target and "gpt" not in target.lower():
        raise NemoFormatError(f"{source}: target={target}: not a GPT model (only NeMo GPT and "
                              "NeMo-Aligner GPT reward models are supported)")
    if not cfg.get("mcore_gpt", False):
        raise NemoFormatError(f"{source}: mcore_gpt is not true: a legacy (non-megatron-core) NeMo GPT "
                              "model; convert it to mcore with NeMo's convert_nemo_gpt_to_mcore.py first")
    if cfg.get("num_moe_experts"):
        raise NemoFormatError(f"{source}: num_moe_experts={cfg['num_moe_experts']}: mixture-of-experts "
                              "models are not supported")
    if cfg.get("fp8"):
        logger.warning("%s: an fp8-trained model: its fp8 scaling state is dropped, the weights are kept",
                       source)


def _need(cfg: dict, key: str, source: str) -> Any:
    if cfg.get(key) is None:
        raise NemoFormatError(f"{source}: key {key!r} is missing")
    return cfg[key]


def _activation(cfg: dict, source: str) -> str:
    act = str(cfg.get("activation", "gelu")).lower()
    if act == "gelu" and cfg.get("openai_gelu"):
        return "gelu-tanh"
    if act not in _ACTIVATIONS:
        raise NemoFormatError(f"{source}: activation={act}: not supported (supported: "
                              f"{', '.join(sorted(_ACTIVATIONS))})")
    return _ACTIVATIONS[act]


def _normalization(cfg: dict, source: str) -> str:
    norm = str(cfg.get("normalization", "layernorm")).lower()
    if norm in ("layernorm", "layernorm1p"):
        return "layernorm"
    if norm == "rmsnorm":
        return "rmsnorm"
    raise NemoFormatError(f"{source}: normalization={norm}: not supported (layernorm, layernorm1p, rmsnorm)")


def zero_centered_gamma(cfg: dict) -> bool:
    """True when the stored norm weights are gamma - 1 (``layernorm1p``)."""
    return str(cfg.get("normalization", "layernorm")).lower() == "layernorm1p" or bool(
        cfg.get("layernorm_zero_centered_gamma"))


def model_config_from_nemo(cfg: dict, source: str) -> ModelConfig:
    """Our architecture for a NeMo model section (vocabulary fields: ``vocab_fields``)."""
    check_supported(cfg, source)
    pos = str(cfg.get("position_embedding_type", "learned_absolute"))
    if pos not in ("rope", "learned_absolute"):
        raise NemoFormatError(f"{source}: position_embedding_type={pos}: not supported "
                              "(rope, learned_absolute)")
    if cfg.get("seq_len_interpolation_factor") not in (None, 1, 1.0):
        raise NemoFormatError(f"{source}: seq_len_interpolation_factor="
                              f"{cfg['seq_len_interpolation_factor']}: RoPE position interpolation is not "
                              "supported")
    seq = int(cfg.get("encoder_seq_length") or 512)
    heads = int(_need(cfg, "num_attention_heads", source))
    num_attributes = 1
    if model_kind(cfg) == "reward" and cfg.get("reward_model_type", "binary_ranking") == "regression":
        num_attributes = int((cfg.get("regression") or {}).get("num_attributes", 1))
    return ModelConfig(
        num_layers=int(_need(cfg, "num_layers", source)),
        hidden_size=int(_need(cfg, "hidden_size", source)),
        ffn_hidden_size=int(_need(cfg, "ffn_hidden_size", source)),
        num_attention_heads=heads,
        num_query_groups=(None if cfg.get("num_query_groups") in (None, heads)
                          else int(cfg["num_query_groups"])),
        kv_channels=None if cfg.get("kv_channels") is None else int(cfg["kv_channels"]),
        encoder_seq_length=seq,
        # mcore's learned position table has encoder_seq_length rows; RoPE has no table
        max_position_embeddings=seq if pos == "learned_absolute" else int(cfg.get("max_position_embeddings")
                                                                          or seq),
        normalization=_normalization(cfg, source),
        layernorm_epsilon=float(cfg.get("layernorm_epsilon", 1e-5)),
        activation=_activation(cfg, source),
        position_embedding_type=pos,
        rotary_base=float(cfg.get("rotary_base", 10000)),
        rotary_percent=float(cfg.get("rotary_percentage", 1.0)),
        bias=bool(cfg.get("bias", True)),
        qkv_bias=bool(cfg.get("qkv_bias", False)),
        share_embeddings_and_output_weights=(model_kind(cfg) == "gpt"
                                             and bool(cfg.get("share_embeddings_and_output_weights", True))),
        make_vocab_size_divisible_by=int(cfg.get("make_vocab_size_divisible_by", 128)),
        num_attributes=num_attributes,
    )


def vocab_fields(cfg: dict, stored_rows: int, tokenizer_vocab: int) -> dict:
    """``vocab_size`` / ``make_vocab_size_divisible_by`` that reproduce the stored embedding rows: NeMo
    padded the tokenizer's vocabulary to ``divisible x TP`` of the saving run; when that does not explain the
    rows (``override_vocab_size``, a resized embedding) the rows are the vocabulary."""
    multiple = (int(cfg.get("make_vocab_size_divisible_by", 128))
                * int(cfg.get("tensor_model_parallel_size") or 1))
    if tokenizer_vocab <= stored_rows and -(-tokenizer_vocab // multiple) * multiple == stored_rows:
        return {"vocab_size": tokenizer_vocab, "make_vocab_size_divisible_by": multiple}
    return {"vocab_size": stored_rows, "make_vocab_size_divisible_by": 1}


def nemo_config_from_model(m: ModelConfig, kind: str, tokenizer: dict, base: Optional[dict] = None) -> dict:
    """A NeMo 1.x model section for ``m``: every architecture key written explicitly, the tokenizer block
    given (``nemo:`` references), layout TP = PP = 1; ``base`` (an imported model's own section) keeps its
    other keys (optimizer, data, NeMo-Aligner's reward settings)."""
    out = dict(base or {})
    act = {"fast-swiglu": "fast-swiglu", "gelu": "gelu", "gelu-tanh": "gelu", "squared-relu": "squared-relu",
           "relu": "relu"}[m.activation]
    out.update({
        "mcore_gpt": True,
        "transformer_engine": True,
        "num_layers": m.num_layers,
        "hidden_size": m.hidden_size,
        "ffn_hidden_size": m.ffn_hidden_size,
        "num_attention_heads": m.num_attention_heads,
        "num_query_groups": m.query_groups(),
        "kv_channels": m.head_dim(),
        "encoder_seq_length": m.encoder_seq_length,
        "max_position_embeddings": m.max_position_embeddings,
        "normalization": m.normalization,
        "layernorm_epsilon": m.layernorm_epsilon,
        "activation": act,
        "openai_gelu": m.activation == "gelu-tanh",
        "bias": m.bias,
        "qkv_bias": m.qkv_bias,
        "position_embedding_type": m.position_embedding_type,
        "rotary_base": m.rotary_base,
        "rotary_percentage": m.rotary_percent,
        "share_embeddings_and_output_weights": kind == "gpt" and m.share_embeddings_and_output_weights,
        "make_vocab_size_divisible_by": m.make_vocab_size_divisible_by,
        "tensor_model_parallel_size": 1,
        "pipeline_model_parallel_size": 1,
        "precision": out.get("precision", "bf16"),
        "micro_batch_size": out.get("micro_batch_size", m.micro_batch_size),
        "global_batch_size": out.get("global_batch_size", m.global_batch_size),
        "tokenizer": tokenizer,
    })
    out.pop("layernorm_zero_centered_gamma", None)
    out.setdefault("optim", {"name": "distributed_fused_adam", "lr": 1e-5})
    if kind == "reward":
        rm_type = out.get("reward_model_type") or ("regression" if m.num_attributes > 1 else "binary_ranking")
        out["reward_model_type"] = rm_type
        out.setdefault("regression", {})["num_attributes"] = m.num_attributes
        out["target"] = RM_TARGETS.get(rm_type, RM_TARGETS["binary_ranking"])
    else:
        out["target"] = GPT_TARGET
    return out
