"""Tiny ``.nemo`` files written the way NeMo 1.x writes them, from a random Hugging Face model, by code that
shares nothing with ``megatron_align.models.nemo`` (an independent reference for its import).

What is reproduced (docs/nemo_format_research.md has the sources): the uncompressed tar with a ``.`` member
and ``./``-prefixed names; ``model_config.yaml`` with NeMo's keys and a ``nemo:<hex>_tokenizer.model``
reference; ``model_weights/`` as megatron-core's dist checkpoint with the ``model.`` prefix and stacked
layers, either zarr (one chunk per layer and per TP rank, as megatron-core 0.5 writes a TP=2 save) or
torch_dist (torch's own ``dcp.save``); the TE ``_extra_state`` objects per layer; the vocabulary padded to
``128 x TP``; layernorm1p's gamma - 1. Not reproduced: the fp8 scaling state, optimizer-free PTL checkpoints,
real NeMo-trained values.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import torch
import yaml

TEXTS = [f"the quick brown fox {i} jumps over the lazy dog number {i * 7} and runs home" for i in range(200)]
SPM_VOCAB = 300
HEX = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def _spm(root: Path) -> Path:
    from megatron_align.tokenizers.training import train_sentencepiece

    return Path(train_sentencepiece(TEXTS, str(root / "spm"), vocab_size=SPM_VOCAB))


def make_hf(kind: str, root: Path, seed: int = 0) -> Path:
    """A random HF ``llama`` (GQA 4/2, untied, RMSNorm, SwiGLU) or ``gpt2`` (LayerNorm, biases, tied,
    learned positions) with the sentencepiece vocabulary's size; norms and biases randomised."""
    import transformers

    torch.manual_seed(seed)
    if kind == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=SPM_VOCAB,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_theta=50000.0,
            rms_norm_eps=1e-5,
            max_position_embeddings=64,
            tie_word_embeddings=False,
            initializer_range=0.1,
        )
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.GPT2Config(
            vocab_size=SPM_VOCAB,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=64,
            initializer_range=0.1,
            activation_function="gelu_new",
        )
        model = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    out = root / f"hf_{kind}"
    model.save_pretrained(str(out))
    return out


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


def _grouped_qkv(q, k, v, heads: int, groups: int):
    """Rows per query group: the group's q heads, then its k head, then its v head."""
    d = q.shape[0] // heads
    per = heads // groups
    parts = []
    for g in range(groups):
        parts += [q[g * per * d : (g + 1) * per * d], k[g * d : (g + 1) * d], v[g * d : (g + 1) * d]]
    return torch.cat(parts)


def nemo_tensors(kind: str, hf_dir: Path, padded_vocab: int, layernorm1p: bool = False) -> dict:
    """HF weights under NeMo's mcore names, layers stacked (``model.decoder.layers.<name>``: ``[L, ...]``)."""
    from safetensors.torch import load_file

    sd = load_file(str(hf_dir / "model.safetensors"))
    layers: dict[str, list] = {}

    def put(name, t):
        layers.setdefault(name, []).append(t)

    if kind == "llama":
        out = {
            "model.embedding.word_embeddings.weight": _pad_rows(
                sd["model.embed_tokens.weight"], padded_vocab
            ),
            "model.output_layer.weight": _pad_rows(sd["lm_head.weight"], padded_vocab),
            "model.decoder.final_layernorm.weight": sd["model.norm.weight"],
        }
        for i in range(2):
            p = f"model.layers.{i}."
            put("self_attention.linear_qkv.layer_norm_weight", sd[p + "input_layernorm.weight"])
            put(
                "self_attention.linear_qkv.weight",
                _grouped_qkv(
                    sd[p + "self_attn.q_proj.weight"],
                    sd[p + "self_attn.k_proj.weight"],
                    sd[p + "self_attn.v_proj.weight"],
                    4,
                    2,
                ),
            )
            put("self_attention.linear_proj.weight", sd[p + "self_attn.o_proj.weight"])
            put("mlp.linear_fc1.layer_norm_weight", sd[p + "post_attention_layernorm.weight"])
            put(
                "mlp.linear_fc1.weight",
                torch.cat([sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]]),
            )
            put("mlp.linear_fc2.weight", sd[p + "mlp.down_proj.weight"])
    else:  # GPT-2: Conv1D weights are [in, out]
        out = {
            "model.embedding.word_embeddings.weight": _pad_rows(sd["transformer.wte.weight"], padded_vocab),
            "model.embedding.position_embeddings.weight": sd["transformer.wpe.weight"],
            "model.decoder.final_layernorm.weight": sd["transformer.ln_f.weight"],
            "model.decoder.final_layernorm.bias": sd["transformer.ln_f.bias"],
        }
        for i in range(2):
            p = f"transformer.h.{i}."
            w, b = sd[p + "attn.c_attn.weight"].t(), sd[p + "attn.c_attn.bias"]  # [3H, H] = [Q; K; V]
            put("self_attention.linear_qkv.layer_norm_weight", sd[p + "ln_1.weight"])
            put("self_attention.linear_qkv.layer_norm_bias", sd[p + "ln_1.bias"])
            put("self_attention.linear_qkv.weight", _grouped_qkv(*w.chunk(3), 4, 4))
            put("self_attention.linear_qkv.bias", _grouped_qkv(*b.chunk(3), 4, 4))
            put("self_attention.linear_proj.weight", sd[p + "attn.c_proj.weight"].t())
            put("self_attention.linear_proj.bias", sd[p + "attn.c_proj.bias"])
            put("mlp.linear_fc1.layer_norm_weight", sd[p + "ln_2.weight"])
            put("mlp.linear_fc1.layer_norm_bias", sd[p + "ln_2.bias"])
            put("mlp.linear_fc1.weight", sd[p + "mlp.c_fc.weight"].t())
            put("mlp.linear_fc1.bias", sd[p + "mlp.c_fc.bias"])
            put("mlp.linear_fc2.weight", sd[p + "mlp.c_proj.weight"].t())
            put("mlp.linear_fc2.bias", sd[p + "mlp.c_proj.bias"])
    out.update({f"model.decoder.layers.{k}": torch.stack(v) for k, v in layers.items()})
    if layernorm1p:
        for k in list(out):
            if k.endswith(("layer_norm_weight", "final_layernorm.weight")):
                out[k] = out[k] - 1.0
    return {k: v.contiguous().clone() for k, v in out.items()}


_TP_AXIS = {
    "rm_head.weight": 1,
    "word_embeddings.weight": 0,
    "output_layer.weight": 0,
    "linear_qkv.weight": 1,
    "linear_qkv.bias": 1,
    "linear_fc1.weight": 1,
    "linear_fc1.bias": 1,
    "linear_proj.weight": 2,
    "linear_fc2.weight": 2,
}


def _write_zarr(directory: Path, tensors: dict, tp: int, glu: bool) -> None:
    """megatron-core 0.5's zarr layout: one chunk per layer along the stacked axis and one per TP rank along
    the split axis (a GLU fc1 is ``[gate; up]`` with each half split: 2 x TP chunks)."""
    for key, t in tensors.items():
        chunks = list(t.shape)
        if key.startswith("model.decoder.layers."):
            chunks[0] = 1
        for suffix, axis in _TP_AXIS.items():
            if key.endswith(suffix):
                parts = 2 * tp if (glu and "linear_fc1" in key) else tp
                chunks[axis] = t.shape[axis] // parts
        d = directory / key
        d.mkdir(parents=True)
        if t.dtype == torch.bfloat16:
            dtype_name, arr = "bfloat16", t.view(torch.int16).numpy()
        else:
            dtype_name, arr = "<f4", t.float().numpy()
        (d / ".zarray").write_text(
            json.dumps(
                {
                    "chunks": chunks,
                    "compressor": None,
                    "dtype": dtype_name,
                    "fill_value": None,
                    "filters": None,
                    "order": "C",
                    "shape": list(t.shape),
                    "zarr_format": 2,
                }
            )
        )
        grid = [range(math.ceil(s / c)) for s, c in zip(t.shape, chunks)]
        for index in np.ndindex(*[len(g) for g in grid]):
            region = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, chunks))
            (d / ".".join(map(str, index))).write_bytes(np.ascontiguousarray(arr[region]).tobytes())


def _extra_state_keys() -> list:
    return [
        f"model.decoder.layers.{m}._extra_state"
        for m in (
            "self_attention.linear_qkv",
            "self_attention.linear_proj",
            "mlp.linear_fc1",
            "mlp.linear_fc2",
        )
    ]


def _none_pickle() -> bytes:
    buf = io.BytesIO()
    torch.save(None, buf)
    return buf.getvalue()


def make_nemo(
    kind: str,
    root: Path,
    *,
    tp: int = 2,
    backend: str = "zarr",
    tarball: bool = True,
    layernorm1p: bool = False,
    dtype=torch.float32,
    rm_attributes: int = 0,
) -> tuple[Path, Path]:
    """``(nemo path, HF source directory)``: a ``llama`` or ``gpt2`` model saved as NeMo would at ``tp``;
    ``rm_attributes`` > 0 makes it a NeMo-Aligner regression reward model (``model.rm_head.weight [A, H]``,
    ``.bias [A]``, seeded; the unused LM head kept, as NeMo-Aligner saves it)."""
    root.mkdir(parents=True, exist_ok=True)
    hf_dir = make_hf(kind, root)
    spm = _spm(root)
    padded = -(-SPM_VOCAB // (128 * tp)) * (128 * tp)
    tensors = nemo_tensors(kind, hf_dir, padded, layernorm1p)
    if rm_attributes:
        g = torch.Generator().manual_seed(11)
        tensors["model.rm_head.weight"] = torch.randn(rm_attributes, 64, generator=g) * 0.2
        tensors["model.rm_head.bias"] = torch.randn(rm_attributes, generator=g)
        tensors.setdefault(
            "model.output_layer.weight", tensors["model.embedding.word_embeddings.weight"].clone()
        )
    tensors = {k: v.to(dtype) for k, v in tensors.items()}
    stage = root / f"stage_{kind}_{backend}"
    weights = stage / "model_weights"
    weights.mkdir(parents=True)
    extra = {f"{k}/shard_{i}_2": io.BytesIO(_none_pickle()) for k in _extra_state_keys() for i in range(2)}
    if backend == "zarr":
        _write_zarr(weights, tensors, tp, glu=kind == "llama")
        for unique, value in extra.items():
            key, shard = unique.split("/")
            (weights / key).mkdir(exist_ok=True)
            (weights / key / f"{shard}.pt").write_bytes(value.getvalue())
    else:
        import torch.distributed.checkpoint as dcp

        dcp.save({**tensors, **extra}, checkpoint_id=str(weights), no_dist=True)
    (weights / "metadata.json").write_text(
        json.dumps(
            {
                "sharded_backend": backend,
                "sharded_backend_version": 1,
                "common_backend": "torch",
                "common_backend_version": 1,
            }
        )
    )
    torch.save({}, weights / "common.pt")
    tok_name = f"{HEX}_tokenizer.model"
    (stage / tok_name).write_bytes(spm.read_bytes())
    llama = kind == "llama"
    cfg = {
        "mcore_gpt": True,
        "micro_batch_size": 1,
        "global_batch_size": 8,
        "tensor_model_parallel_size": tp,
        "pipeline_model_parallel_size": 1,
        "encoder_seq_length": 256 if kind == "llama" else 64,
        "max_position_embeddings": "${.encoder_seq_length}",
        "num_layers": 2,
        "hidden_size": 64,
        "ffn_hidden_size": 96 if llama else 256,
        "num_attention_heads": 4,
        "num_query_groups": 2 if llama else None,
        "init_method_std": 0.02,
        "kv_channels": None,
        "layernorm_epsilon": 1e-5,
        "normalization": ("layernorm1p" if layernorm1p else "layernorm") if not llama else "rmsnorm",
        "activation": "fast-swiglu" if llama else "gelu",
        "openai_gelu": not llama,
        "bias": not llama,
        "position_embedding_type": "rope" if llama else "learned_absolute",
        "rotary_base": 50000.0,
        "rotary_percentage": 1.0,
        "share_embeddings_and_output_weights": not llama,
        "make_vocab_size_divisible_by": 128,
        "precision": "bf16" if dtype == torch.bfloat16 else 32,
        "transformer_engine": True,
        "megatron_amp_O2": True,
        "tokenizer": {
            "library": "sentencepiece",
            "type": None,
            "model": f"nemo:{tok_name}",
            "vocab_file": None,
            "merge_file": None,
            "delimiter": None,
            "sentencepiece_legacy": False,
        },
        "optim": {"name": "distributed_fused_adam", "lr": 1e-4},
        "target": "nemo.collections.nlp.models.language_modeling.megatron_gpt_model.MegatronGPTModel",
        "nemo_version": "1.23.0",
    }
    if rm_attributes:
        cfg.update(
            reward_model_type="regression",
            regression={"num_attributes": rm_attributes, "loss_func": "regression"},
            share_embeddings_and_output_weights=False,
            target="nemo_aligner.models.nlp.gpt.megatron_gpt_regression_reward_model."
            "MegatronGPTRegressionRewardModel",
        )
    (stage / "model_config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    if not tarball:
        return stage, hf_dir
    path = root / f"{kind}_{backend}.nemo"
    with tarfile.open(path, "w:") as tar:
        tar.add(stage, arcname=".")
    return path, hf_dir
