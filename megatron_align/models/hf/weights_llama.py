"""Llama-family weights (llama, mistral, qwen2): HF state dict <-> full (TP=1) megatron state dict.

Pure functions over tensors; megatron names are the local layer spec's (``spec_names.match_names`` renames
them for a Transformer Engine model). Per layer ``i`` (HF ``model.layers.i``, megatron ``decoder.layers.i``):

    input_layernorm.weight                    <-> input_layernorm.weight
    self_attn.{q,k,v}_proj.{weight,bias}      <-> self_attention.linear_qkv.{weight,bias}  (interleave)
    self_attn.o_proj.{weight,bias}            <-> self_attention.linear_proj.{weight,bias}
    post_attention_layernorm.weight           <-> pre_mlp_layernorm.weight
    mlp.{gate,up}_proj.{weight,bias}          <-> mlp.linear_fc1.{weight,bias}             ([gate; up])
    mlp.down_proj.{weight,bias}               <-> mlp.linear_fc2.{weight,bias}
and model.embed_tokens <-> embedding.word_embeddings, model.norm <-> decoder.final_layernorm,
lm_head <-> output_layer (absent when tied). The vocabulary rows are zero-padded to
``cfg.padded_vocab_size()`` on import and cut back to ``cfg.vocab_size`` on export.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from megatron_align.config.model import ModelConfig
from megatron_align.models.hf import layout
from megatron_align.models.hf.errors import HFConversionError

# Keys that HF checkpoints may carry and that hold no weights (old rotary caches).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _normalise_prefix(hf: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept a bare ``LlamaModel`` state dict (``embed_tokens.weight``, ...): add the ``model.`` prefix."""
    if "model.embed_tokens.weight" in hf or "embed_tokens.weight" not in hf:
        return dict(hf)
    return {(k if k.startswith("lm_head.") else f"model.{k}"): v for k, v in hf.items()}


def hf_to_megatron(hf: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF Llama/Mistral/Qwen2 state dict -> megatron GPTModel state dict (TP=1, local-spec names)."""
    src = layout.KeyTaker(_normalise_prefix(hf), "HF checkpoint")
    heads, groups, hd = cfg.num_attention_heads, cfg.query_groups(), cfg.head_dim()
    padded = cfg.padded_vocab_size()
    qkv_bias = cfg.bias or cfg.qkv_bias
    out: dict[str, torch.Tensor] = {}
    out["embedding.word_embeddings.weight"] = layout.pad_vocab(src.take("model.embed_tokens.weight"), padded)
    for i in range(cfg.num_layers):
        h, m = f"model.layers.{i}", f"decoder.layers.{i}"
        out[f"{m}.input_layernorm.weight"] = src.take(f"{h}.input_layernorm.weight")
        out[f"{m}.self_attention.linear_qkv.weight"] = layout.interleave_qkv(
            src.take(f"{h}.self_attn.q_proj.weight"),  # [np*hn, H]
            src.take(f"{h}.self_attn.k_proj.weight"),  # [ng*hn, H]
            src.take(f"{h}.self_attn.v_proj.weight"),  # [ng*hn, H]
            heads, groups, hd,
        )  # [ng*(np/ng+2)*hn, H]
        if qkv_bias:
            out[f"{m}.self_attention.linear_qkv.bias"] = layout.interleave_qkv(
                src.take(f"{h}.self_attn.q_proj.bias"),
                src.take(f"{h}.self_attn.k_proj.bias"),
                src.take(f"{h}.self_attn.v_proj.bias"),
                heads, groups, hd,
            )
        out[f"{m}.self_attention.linear_proj.weight"] = src.take(f"{h}.self_attn.o_proj.weight")  # [H, np*hn]
        out[f"{m}.pre_mlp_layernorm.weight"] = src.take(f"{h}.post_attention_layernorm.weight")
        out[f"{m}.mlp.linear_fc1.weight"] = layout.concat_gate_up(
            src.take(f"{h}.mlp.gate_proj.weight"), src.take(f"{h}.mlp.up_proj.weight")
        )  # [2F, H]
        out[f"{m}.mlp.linear_fc2.weight"] = src.take(f"{h}.mlp.down_proj.weight")  # [H, F]
        if cfg.bias:
            out[f"{m}.self_attention.linear_proj.bias"] = src.take(f"{h}.self_attn.o_proj.bias")
            out[f"{m}.mlp.linear_fc1.bias"] = layout.concat_gate_up(
                src.take(f"{h}.mlp.gate_proj.bias"), src.take(f"{h}.mlp.up_proj.bias")
            )
            out[f"{m}.mlp.linear_fc2.bias"] = src.take(f"{h}.mlp.down_proj.bias")
    out["decoder.final_layernorm.weight"] = src.take("model.norm.weight")
    if cfg.share_embeddings_and_output_weights:
        src.drop("lm_head.weight")  # some tied checkpoints store the shared matrix twice
    else:
        if "lm_head.weight" not in src.state:
            raise HFConversionError(
                "HF checkpoint: lm_head.weight is missing but tie_word_embeddings is false in config.json"
            )
        out["output_layer.weight"] = layout.pad_vocab(src.take("lm_head.weight"), padded)  # [Vp, H]
    src.finish(_IGNORED_SUFFIXES)
    return out


def megatron_to_hf(mc: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Megatron GPTModel state dict (TP=1, local-spec names) -> HF Llama/Mistral/Qwen2 state dict."""
    weights = {k: v for k, v in mc.items() if not k.endswith("_extra_state")}
    src = layout.KeyTaker(weights, "megatron checkpoint")
    heads, groups, hd = cfg.num_attention_heads, cfg.query_groups(), cfg.head_dim()
    vocab = cfg.vocab_size
    qkv_bias = cfg.bias or cfg.qkv_bias
    out: dict[str, torch.Tensor] = {}
    out["model.embed_tokens.weight"] = layout.unpad_vocab(src.take("embedding.word_embeddings.weight"), vocab)
    for i in range(cfg.num_layers):
        h, m = f"model.layers.{i}", f"decoder.layers.{i}"
        out[f"{h}.input_layernorm.weight"] = src.take(f"{m}.input_layernorm.weight")
        q, k, v = layout.split_qkv(src.take(f"{m}.self_attention.linear_qkv.weight"), heads, groups, hd)
        out[f"{h}.self_attn.q_proj.weight"] = q  # [np*hn, H]
        out[f"{h}.self_attn.k_proj.weight"] = k  # [ng*hn, H]
        out[f"{h}.self_attn.v_proj.weight"] = v  # [ng*hn, H]
        if qkv_bias:
            q, k, v = layout.split_qkv(src.take(f"{m}.self_attention.linear_qkv.bias"), heads, groups, hd)
            out[f"{h}.self_attn.q_proj.bias"] = q
            out[f"{h}.self_attn.k_proj.bias"] = k
            out[f"{h}.self_attn.v_proj.bias"] = v
        out[f"{h}.self_attn.o_proj.weight"] = src.take(f"{m}.self_attention.linear_proj.weight")
        out[f"{h}.post_attention_layernorm.weight"] = src.take(f"{m}.pre_mlp_layernorm.weight")
        gate, up = layout.split_gate_up(src.take(f"{m}.mlp.linear_fc1.weight"))  # [F, H] each
        out[f"{h}.mlp.gate_proj.weight"] = gate
        out[f"{h}.mlp.up_proj.weight"] = up
        out[f"{h}.mlp.down_proj.weight"] = src.take(f"{m}.mlp.linear_fc2.weight")
        if cfg.bias:
            out[f"{h}.self_attn.o_proj.bias"] = src.take(f"{m}.self_attention.linear_proj.bias")
            gate, up = layout.split_gate_up(src.take(f"{m}.mlp.linear_fc1.bias"))
            out[f"{h}.mlp.gate_proj.bias"] = gate
            out[f"{h}.mlp.up_proj.bias"] = up
            out[f"{h}.mlp.down_proj.bias"] = src.take(f"{m}.mlp.linear_fc2.bias")
    out["model.norm.weight"] = src.take("decoder.final_layernorm.weight")
    if not cfg.share_embeddings_and_output_weights:
        out["lm_head.weight"] = layout.unpad_vocab(src.take("output_layer.weight"), vocab)  # [V, H]
    src.finish()
    return out
