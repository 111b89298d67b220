"""Megatron TP/PP shards -> the full Hugging Face tensors TensorRT-LLM's loader expects (pure, CPU-testable).

Owns the gather of one model replica's shards and their renaming to HF Llama-family names, one *group* at a
time, so that a refit never materialises a second full copy of the model:

- column-parallel layers are concatenated along dim 0 (``linear_qkv``: each rank holds whole query groups,
  interleaved ``[q_g..., k_g, v_g]``; ``linear_fc1``: each rank holds ``[gate_r; up_r]``, split in halves
  before concatenating; ``word_embeddings`` / ``output_layer``: vocab-parallel rows);
- row-parallel layers along dim 1 (``linear_proj``, ``linear_fc2``; their biases are replicated);
- pipeline stages number their layers locally; stage ``p``'s layer ``j`` is global layer
  ``j + sum(layers of stages < p)`` (megatron's pipeline layer offset);
- then the TP=1 transforms of ``models.hf.layout``: QKV split per group (GQA), gate/up split, vocabulary
  unpadding, norm renaming (local or Transformer Engine spec), no ``lm_head`` when embeddings are tied.

A *group* is a list of ``(hf_name, tensor)`` that TensorRT-LLM fuses into one module (``q/k/v_proj`` ->
``qkv_proj``, ``gate/up_proj`` -> ``gate_up_proj``) or a single tensor; ``iter_buckets`` never splits one.
The pinned TensorRT-LLM (1.2.1, PyTorch backend) takes these *full* tensors and slices its own TP shard
(docs/gpu.md, "TensorRT-LLM refit"); ``reshard.py`` computes what each engine rank ends up holding.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Optional

import torch

from megatron_align.config.generation import llama_family_problem
from megatron_align.config.model import ModelConfig
from megatron_align.models import spec_names
from megatron_align.models.hf import layout
from megatron_align.models.hf.errors import HFConversionError

Group = list[tuple[str, torch.Tensor]]
"""Tensors that must reach the engine together (one fused TensorRT-LLM module), as ``(hf_name, tensor)``."""
Fetch = Callable[[str], list[torch.Tensor]]
"""``fetch(megatron_name)`` -> that tensor's TP shards in TP-rank order (one stage's view)."""

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")
GROUPS_PER_LAYER = 6
"""input norm, q/k/v, o_proj, post-attention norm, gate/up, down_proj."""


# ------------------------------------------------------------------------------------------------------------
# checks
# ------------------------------------------------------------------------------------------------------------
def check_llama_family(cfg: ModelConfig) -> None:
    """Refuse architectures the HF Llama-family names cannot express (one line: ``llama_family_problem``)."""
    problem = llama_family_problem(cfg)
    if problem:
        raise HFConversionError(problem)


def local_names(state: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """A rank's state dict without ``_extra_state`` / non-tensors, norms renamed to megatron's local spec."""
    return {
        spec_names.rename_norms(k, "local"): v
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and not k.endswith("_extra_state")
    }


def count_layers(names: Iterable[str]) -> int:
    """Transformer layers held by one pipeline stage (local indices must be 0..n-1)."""
    found = {int(m.group(1)) for m in map(_LAYER.match, names) if m}
    if found != set(range(len(found))):
        raise HFConversionError(
            f"stage holds layers {sorted(found)}; expected local indices 0..{len(found) - 1}"
        )
    return len(found)


def stage_offsets(layer_counts: Sequence[int], num_layers: int) -> list[int]:
    """Global index of each stage's first layer (megatron's pipeline layer offset), from the stage sizes."""
    if sum(layer_counts) != num_layers:
        raise HFConversionError(
            f"pipeline stages hold {list(layer_counts)} layers, {sum(layer_counts)} in all; "
            f"model.num_layers={num_layers}"
        )
    offsets, total = [], 0
    for n in layer_counts:
        offsets.append(total)
        total += n
    return offsets


# ------------------------------------------------------------------------------------------------------------
# one group at a time, from a stage's ``fetch``
# ------------------------------------------------------------------------------------------------------------
def _rows(fetch: Fetch, key: str) -> torch.Tensor:
    return torch.cat(fetch(key), dim=0)  # column-parallel: [out/tp, ...] x tp -> [out, ...]


def _cols(fetch: Fetch, key: str) -> torch.Tensor:
    return torch.cat(fetch(key), dim=1)  # row-parallel: [out, in/tp] x tp -> [out, in]


def _first(fetch: Fetch, key: str) -> torch.Tensor:
    return fetch(key)[0]  # replicated over TP (norms, row-parallel biases)


def embedding_group(fetch: Fetch, cfg: ModelConfig) -> Group:
    """``embedding.word_embeddings`` ``[Vp/tp, H] x tp`` -> ``model.embed_tokens.weight [V, H]``."""
    emb = _rows(fetch, "embedding.word_embeddings.weight")  # [Vp, H]
    return [("model.embed_tokens.weight", layout.unpad_vocab(emb, cfg.vocab_size))]


def output_groups(fetch: Fetch, cfg: ModelConfig) -> list[Group]:
    """Final norm and (untied) ``lm_head [V, H]`` of the last stage."""
    groups = [[("model.norm.weight", _first(fetch, "decoder.final_layernorm.weight"))]]
    if not cfg.share_embeddings_and_output_weights:
        head = _rows(fetch, "output_layer.weight")  # [Vp, H]
        groups.append([("lm_head.weight", layout.unpad_vocab(head, cfg.vocab_size))])
    return groups


def layer_groups(fetch: Fetch, cfg: ModelConfig, local: int, index: int) -> list[Group]:
    """Stage-local layer ``local`` -> HF groups of global layer ``index``."""
    m, h = f"decoder.layers.{local}", f"model.layers.{index}"
    heads, groups, hd = cfg.num_attention_heads, cfg.query_groups(), cfg.head_dim()
    attn: Group = []
    q, k, v = layout.split_qkv(_rows(fetch, f"{m}.self_attention.linear_qkv.weight"), heads, groups, hd)
    attn += [(f"{h}.self_attn.q_proj.weight", q),  # [np*hn, H]
             (f"{h}.self_attn.k_proj.weight", k),  # [ng*hn, H]
             (f"{h}.self_attn.v_proj.weight", v)]  # [ng*hn, H]
    if cfg.bias or cfg.qkv_bias:
        q, k, v = layout.split_qkv(_rows(fetch, f"{m}.self_attention.linear_qkv.bias"), heads, groups, hd)
        attn += [(f"{h}.self_attn.q_proj.bias", q), (f"{h}.self_attn.k_proj.bias", k),
                 (f"{h}.self_attn.v_proj.bias", v)]
    proj: Group = [(f"{h}.self_attn.o_proj.weight", _cols(fetch, f"{m}.self_attention.linear_proj.weight"))]
    # linear_fc1 shard r = [gate_r; up_r]: halve every shard, then concatenate the gates and the ups
    halves = [layout.split_gate_up(s) for s in fetch(f"{m}.mlp.linear_fc1.weight")]  # ([F/tp, H], [F/tp, H])
    mlp: Group = [(f"{h}.mlp.gate_proj.weight", torch.cat([g for g, _ in halves], dim=0)),  # [F, H]
                  (f"{h}.mlp.up_proj.weight", torch.cat([u for _, u in halves], dim=0))]  # [F, H]
    down: Group = [(f"{h}.mlp.down_proj.weight", _cols(fetch, f"{m}.mlp.linear_fc2.weight"))]  # [H, F]
    if cfg.bias:
        proj.append((f"{h}.self_attn.o_proj.bias", _first(fetch, f"{m}.self_attention.linear_proj.bias")))
        halves = [layout.split_gate_up(s) for s in fetch(f"{m}.mlp.linear_fc1.bias")]
        mlp += [(f"{h}.mlp.gate_proj.bias", torch.cat([g for g, _ in halves])),
                (f"{h}.mlp.up_proj.bias", torch.cat([u for _, u in halves]))]
        down.append((f"{h}.mlp.down_proj.bias", _first(fetch, f"{m}.mlp.linear_fc2.bias")))
    return [
        [(f"{h}.input_layernorm.weight", _first(fetch, f"{m}.input_layernorm.weight"))],
        attn, proj,
        [(f"{h}.post_attention_layernorm.weight", _first(fetch, f"{m}.pre_mlp_layernorm.weight"))],
        mlp, down,
    ]


def stage_groups(
    fetch: Fetch, cfg: ModelConfig, stage: int, stages: int, num_local_layers: int, offset: int
) -> Iterator[Group]:
    """Every HF group pipeline stage ``stage`` owns, in checkpoint order."""
    if stage == 0:
        yield embedding_group(fetch, cfg)
    for j in range(num_local_layers):
        yield from layer_groups(fetch, cfg, j, offset + j)
    if stage == stages - 1:
        yield from output_groups(fetch, cfg)


def stage_group_count(cfg: ModelConfig, stage: int, stages: int, num_local_layers: int) -> int:
    """How many groups :func:`stage_groups` yields (known to every rank from the config alone)."""
    n = GROUPS_PER_LAYER * num_local_layers + (stage == 0)
    if stage == stages - 1:
        n += 1 if cfg.share_embeddings_and_output_weights else 2
    return n


def finish_group(group: Group, dtype: Optional[torch.dtype]) -> Group:
    """Own, contiguous storage per tensor (q/k/v and gate/up come out as views), cast to the engine dtype."""
    out = []
    for name, t in group:
        t = t.detach()
        t = t.to(dtype) if dtype is not None and t.dtype != dtype else t
        out.append((name, t.contiguous()))
    return out


# ------------------------------------------------------------------------------------------------------------
# all source ranks in one process
# ------------------------------------------------------------------------------------------------------------
def iter_hf_groups(
    shards: Mapping[tuple[int, int], Mapping[str, object]],
    cfg: ModelConfig,
    tp: int,
    pp: int,
    dtype: Optional[torch.dtype] = None,
) -> Iterator[Group]:
    """``{(pp_rank, tp_rank): GPTModel state dict}`` of one replica -> HF groups, one at a time.

    Names may be megatron local-spec or TE-spec; ``_extra_state`` entries are ignored. Every other tensor
    must be consumed: a leftover (wrong config, unsupported layer) raises instead of being dropped silently.
    """
    check_llama_family(cfg)
    want = {(p, t) for p in range(pp) for t in range(tp)}
    if set(shards) != want:
        raise HFConversionError(f"shards for {sorted(shards)}; tp={tp}, pp={pp} needs {sorted(want)}")
    states = {key: local_names(sd) for key, sd in shards.items()}
    counts = [count_layers(states[(p, 0)]) for p in range(pp)]
    offsets = stage_offsets(counts, cfg.num_layers)
    used: set[tuple[int, str]] = set()
    for p in range(pp):
        def fetch(key: str, p: int = p) -> list[torch.Tensor]:
            missing = [t for t in range(tp) if key not in states[(p, t)]]
            if missing:
                raise HFConversionError(f"stage {p}, tp rank {missing[0]}: tensor {key!r} is missing")
            used.add((p, key))
            return [states[(p, t)][key] for t in range(tp)]

        for group in stage_groups(fetch, cfg, p, pp, counts[p], offsets[p]):
            yield finish_group(group, dtype)
        if cfg.share_embeddings_and_output_weights and p == pp - 1 and pp > 1:
            used.add((p, "output_layer.weight"))  # the last stage's copy of the tied embedding
        left = sorted({k for t in range(tp) for k in states[(p, t)] if (p, k) not in used})
        if left:
            raise HFConversionError(
                f"stage {p}: tensors not converted {left[:3]}; does model.* match the model?"
            )


def megatron_shards_to_hf(
    shards: Mapping[tuple[int, int], Mapping[str, object]],
    cfg: ModelConfig,
    tp: int,
    pp: int,
    dtype: Optional[torch.dtype] = None,
) -> dict[str, torch.Tensor]:
    """All HF tensors at once (checkpoint export, tests); refit streams :func:`iter_hf_groups` instead."""
    return {name: t for group in iter_hf_groups(shards, cfg, tp, pp, dtype) for name, t in group}


# ------------------------------------------------------------------------------------------------------------
# bounded buckets
# ------------------------------------------------------------------------------------------------------------
def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def iter_buckets(groups: Iterable[Group], max_bytes: int) -> Iterator[Group]:
    """Pack groups into buckets of at most ``max_bytes``; a group is never split, so a single group larger
    than ``max_bytes`` travels alone. Consumes ``groups`` lazily: at most one bucket plus the group being
    produced is alive at a time (the caller frees a bucket before asking for the next)."""
    if max_bytes <= 0:
        raise ValueError(f"max_bytes={max_bytes}: must be > 0")
    bucket: Group = []
    size = 0
    for group in groups:
        g = sum(nbytes(t) for _, t in group)
        if bucket and size + g > max_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.extend(group)
        size += g
    if bucket:
        yield bucket
