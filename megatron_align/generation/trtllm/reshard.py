"""Full HF tensors -> the shard each rank of a TP=k inference engine holds (pure, CPU-testable).

Which form the pinned TensorRT-LLM consumes: 1.2.1's PyTorch backend takes the *full* tensors from
``convert.py`` through ``WorkerExtension.update_weights`` and each engine rank slices its own part
(``load_weight_shard`` in ``tensorrt_llm/_torch/modules/linear.py``; K/V heads are replicated by the HF weight
mapper's ``_duplicate_kv_weights`` when num_kv_heads < TP). So refit never calls this module.

Why it exists: (1) to state, and test, what a TP=k engine rank ends up with, independently of TRT-LLM, so a
"TP 2 -> 2" or "2 -> 1" refit can be checked shard by shard and functionally (summing the per-rank partial
outputs gives the full layer); (2) for engine backends that read pre-sharded per-rank checkpoints (the legacy
TensorRT-engine path of docs/gpu.md, "Alternatives"), which need exactly these slices.

Layout of rank ``r`` of ``k`` (HF names kept):
- ``q_proj`` rows of query heads ``[r*np/k, (r+1)*np/k)``; ``o_proj`` the same heads' columns;
- ``k_proj`` / ``v_proj``: kv heads ``[r*ng/k, (r+1)*ng/k)`` when ``ng >= k``; when ``ng < k`` the single kv
  head ``r // (k/ng)`` that this rank's query heads attend to (replicated over ``k/ng`` ranks);
- ``gate_proj`` / ``up_proj`` rows ``[r*F/k, (r+1)*F/k)``, ``down_proj`` the same columns;
- ``embed_tokens`` / ``lm_head`` vocab-parallel: rows zero-padded to a multiple of ``k`` (``Vk``), then
  ``Vk/k`` rows each;
- norms and row-parallel biases (``o_proj``, ``down_proj``) replicated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from megatron_align.config.generation import engine_tp_problem
from megatron_align.config.model import ModelConfig
from megatron_align.models.hf import layout
from megatron_align.models.hf.errors import HFConversionError

_Q = re.compile(r"\.self_attn\.q_proj\.(weight|bias)$")
_KV = re.compile(r"\.self_attn\.[kv]_proj\.(weight|bias)$")
_COL = re.compile(r"\.mlp\.(gate|up)_proj\.(weight|bias)$")
_ROW_W = re.compile(r"\.(self_attn\.o_proj|mlp\.down_proj)\.weight$")
_REPLICATED = re.compile(r"(norm\.weight|layernorm\.weight|\.(o_proj|down_proj)\.bias)$")
_VOCAB = ("model.embed_tokens.weight", "lm_head.weight")


def check_target_tp(cfg: ModelConfig, tp: int) -> None:
    """One line naming what a TP=``tp`` engine cannot split (``config.generation.engine_tp_problem``)."""
    problem = engine_tp_problem(cfg, tp)
    if problem:
        raise HFConversionError(problem)


def kv_heads_of_rank(num_kv: int, tp: int, rank: int) -> list[int]:
    """KV heads rank ``rank`` of ``tp`` holds (one replicated head per rank when ``num_kv < tp``)."""
    if num_kv >= tp:
        per = num_kv // tp
        return list(range(rank * per, (rank + 1) * per))
    return [rank // (tp // num_kv)]


def padded_rows(rows: int, tp: int) -> int:
    """Vocabulary rows padded to a multiple of ``tp`` (what a vocab-parallel engine layer allocates)."""
    return -(-rows // tp) * tp


def _chunk(t: torch.Tensor, tp: int, rank: int, dim: int) -> torch.Tensor:
    if t.shape[dim] % tp:
        raise HFConversionError(f"dimension {dim} of size {t.shape[dim]} does not split into {tp} shards")
    return torch.chunk(t, tp, dim=dim)[rank]


def shard_tensor(name: str, t: torch.Tensor, cfg: ModelConfig, tp: int, rank: int) -> torch.Tensor:
    """The part of HF tensor ``name`` that rank ``rank`` of a TP=``tp`` engine holds."""
    if name in _VOCAB:
        rows = padded_rows(t.shape[0], tp)
        return _chunk(layout.pad_vocab(t, rows), tp, rank, 0)  # [Vk/tp, H]
    if _Q.search(name) or _COL.search(name):
        return _chunk(t, tp, rank, 0)  # [np*hn/tp, ...] or [F/tp, ...]
    if _KV.search(name):
        hd, num_kv = cfg.head_dim(), cfg.query_groups()
        heads = t.reshape(num_kv, hd, *t.shape[1:])  # [ng, hn, ...]
        return heads[kv_heads_of_rank(num_kv, tp, rank)].reshape(-1, *t.shape[1:])  # [max(ng/tp,1)*hn, ...]
    if _ROW_W.search(name):
        return _chunk(t, tp, rank, 1)  # [H, np*hn/tp] or [H, F/tp]
    if _REPLICATED.search(name):
        return t
    raise HFConversionError(f"{name}: no tensor-parallel layout known for this tensor")


def shard_for_rank(
    hf: Mapping[str, torch.Tensor], cfg: ModelConfig, tp: int, rank: int
) -> dict[str, torch.Tensor]:
    """Every HF tensor's rank-``rank`` shard for a TP=``tp`` engine (same names)."""
    check_target_tp(cfg, tp)
    if not 0 <= rank < tp:
        raise ValueError(f"rank={rank} outside 0..{tp - 1}")
    return {name: shard_tensor(name, t, cfg, tp, rank) for name, t in hf.items()}


def reshard_for_tp(
    hf: Mapping[str, torch.Tensor], cfg: ModelConfig, tp: int
) -> list[dict[str, torch.Tensor]]:
    """Per-rank shards for all ``tp`` engine ranks (``[hf]`` itself, unchanged, for ``tp == 1``)."""
    return [shard_for_rank(hf, cfg, tp, r) for r in range(tp)]
