"""GPT-2 weights: HF ``GPT2LMHeadModel`` state dict <-> full (TP=1) megatron state dict.

Pure functions over tensors, megatron local-spec names. HF GPT-2 uses ``Conv1D`` layers whose weights are
stored ``[in, out]`` (transposed against ``nn.Linear``), and a fused ``c_attn`` producing ``[Q; K; V]`` over
all heads; megatron's ``linear_qkv`` interleaves per head (every head is its own query group). Per layer ``i``
(HF ``transformer.h.i``, megatron ``decoder.layers.i``):

    ln_1.{weight,bias}              <-> input_layernorm.{weight,bias}
    attn.c_attn.{weight,bias}       <-> self_attention.linear_qkv.{weight,bias}   (transpose, interleave)
    attn.c_proj.{weight,bias}       <-> self_attention.linear_proj.{weight,bias}  (transpose)
    ln_2.{weight,bias}              <-> pre_mlp_layernorm.{weight,bias}
    mlp.c_fc.{weight,bias}          <-> mlp.linear_fc1.{weight,bias}              (transpose)
    mlp.c_proj.{weight,bias}        <-> mlp.linear_fc2.{weight,bias}              (transpose)
and wte <-> embedding.word_embeddings (vocab padded), wpe <-> embedding.position_embeddings,
ln_f <-> decoder.final_layernorm, lm_head <-> output_layer (only when untied; GPT-2 is normally tied).
Checkpoints with or without the ``transformer.`` prefix are accepted; the causal-mask buffers
(``attn.bias``, ``attn.masked_bias``) that old checkpoints carry are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from megatron_align.config.model import ModelConfig
from megatron_align.models.hf import layout
from megatron_align.models.hf.errors import HFConversionError

_MASK_BUFFER = re.compile(r"^transformer\.h\.\d+\.attn\.(bias|masked_bias)$")


def _normalise_prefix(hf: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the ``transformer.`` prefix that bare ``GPT2Model`` checkpoints (e.g. the original gpt2) lack."""
    out = {}
    for k, v in hf.items():
        out[k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}"] = v
    return out


def _split_c_attn(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Conv1D ``c_attn`` weight ``[H, 3H]`` / bias ``[3H]`` -> q, k, v as ``nn.Linear`` ``[H, H]``/``[H]``."""
    w = w.t() if w.dim() == 2 else w  # [3H, H] / [3H]
    return torch.chunk(w, 3, dim=0)


def hf_to_megatron(hf: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF GPT-2 state dict -> megatron GPTModel state dict (TP=1, local-spec names)."""
    state = {k: v for k, v in _normalise_prefix(hf).items() if not _MASK_BUFFER.match(k)}
    src = layout.KeyTaker(state, "HF checkpoint")
    heads = cfg.num_attention_heads
    hd = cfg.head_dim()
    padded = cfg.padded_vocab_size()
    out: dict[str, torch.Tensor] = {}
    out["embedding.word_embeddings.weight"] = layout.pad_vocab(src.take("transformer.wte.weight"), padded)
    out["embedding.position_embeddings.weight"] = src.take("transformer.wpe.weight")  # [P, H]
    for i in range(cfg.num_layers):
        h, m = f"transformer.h.{i}", f"decoder.layers.{i}"
        for part in ("weight", "bias"):
            out[f"{m}.input_layernorm.{part}"] = src.take(f"{h}.ln_1.{part}")
            q, k, v = _split_c_attn(src.take(f"{h}.attn.c_attn.{part}"))
            out[f"{m}.self_attention.linear_qkv.{part}"] = layout.interleave_qkv(q, k, v, heads, heads, hd)
            out[f"{m}.pre_mlp_layernorm.{part}"] = src.take(f"{h}.ln_2.{part}")
        out[f"{m}.self_attention.linear_proj.weight"] = src.take(f"{h}.attn.c_proj.weight").t()  # [H, H]
        out[f"{m}.self_attention.linear_proj.bias"] = src.take(f"{h}.attn.c_proj.bias")
        out[f"{m}.mlp.linear_fc1.weight"] = src.take(f"{h}.mlp.c_fc.weight").t()  # [F, H]
        out[f"{m}.mlp.linear_fc1.bias"] = src.take(f"{h}.mlp.c_fc.bias")
        out[f"{m}.mlp.linear_fc2.weight"] = src.take(f"{h}.mlp.c_proj.weight").t()  # [H, F]
        out[f"{m}.mlp.linear_fc2.bias"] = src.take(f"{h}.mlp.c_proj.bias")
    out["decoder.final_layernorm.weight"] = src.take("transformer.ln_f.weight")
    out["decoder.final_layernorm.bias"] = src.take("transformer.ln_f.bias")
    if cfg.share_embeddings_and_output_weights:
        src.drop("lm_head.weight")
    else:
        if "lm_head.weight" not in src.state:
            raise HFConversionError(
                "HF checkpoint: lm_head.weight is missing but tie_word_embeddings is false in config.json"
            )
        out["output_layer.weight"] = layout.pad_vocab(src.take("lm_head.weight"), padded)
    src.finish()
    return {k: v.contiguous() for k, v in out.items()}


def megatron_to_hf(mc: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Megatron GPTModel state dict (TP=1, local-spec names) -> HF GPT-2 state dict (Conv1D layout)."""
    weights = {k: v for k, v in mc.items() if not k.endswith("_extra_state")}
    src = layout.KeyTaker(weights, "megatron checkpoint")
    heads = cfg.num_attention_heads
    hd = cfg.head_dim()
    out: dict[str, torch.Tensor] = {}
    wte = src.take("embedding.word_embeddings.weight")  # [Vp, H]
    out["transformer.wte.weight"] = layout.unpad_vocab(wte, cfg.vocab_size)
    out["transformer.wpe.weight"] = src.take("embedding.position_embeddings.weight")
    for i in range(cfg.num_layers):
        h, m = f"transformer.h.{i}", f"decoder.layers.{i}"
        for part in ("weight", "bias"):
            out[f"{h}.ln_1.{part}"] = src.take(f"{m}.input_layernorm.{part}")
            q, k, v = layout.split_qkv(src.take(f"{m}.self_attention.linear_qkv.{part}"), heads, heads, hd)
            qkv = torch.cat([q, k, v], dim=0)  # [3H, H] / [3H]
            out[f"{h}.attn.c_attn.{part}"] = qkv.t() if qkv.dim() == 2 else qkv  # Conv1D [H, 3H]
            out[f"{h}.ln_2.{part}"] = src.take(f"{m}.pre_mlp_layernorm.{part}")
        out[f"{h}.attn.c_proj.weight"] = src.take(f"{m}.self_attention.linear_proj.weight").t()
        out[f"{h}.attn.c_proj.bias"] = src.take(f"{m}.self_attention.linear_proj.bias")
        out[f"{h}.mlp.c_fc.weight"] = src.take(f"{m}.mlp.linear_fc1.weight").t()  # [H, F]
        out[f"{h}.mlp.c_fc.bias"] = src.take(f"{m}.mlp.linear_fc1.bias")
        out[f"{h}.mlp.c_proj.weight"] = src.take(f"{m}.mlp.linear_fc2.weight").t()  # [F, H]
        out[f"{h}.mlp.c_proj.bias"] = src.take(f"{m}.mlp.linear_fc2.bias")
    out["transformer.ln_f.weight"] = src.take("decoder.final_layernorm.weight")
    out["transformer.ln_f.bias"] = src.take("decoder.final_layernorm.bias")
    if not cfg.share_embeddings_and_output_weights:
        out["lm_head.weight"] = layout.unpad_vocab(src.take("output_layer.weight"), cfg.vocab_size)
    src.finish()
    return {k: v.contiguous() for k, v in out.items()}
