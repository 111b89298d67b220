"""Inside a live job: gather this replica's megatron shards into full HF groups on every rank of the replica.

``iter_gathered_groups(model, cfg, tp_group, pp_group)`` is collective over the ranks of one model replica
(all TP ranks of all pipeline stages). The process groups are arguments, never read from megatron's global
state, so the caller decides which ranks take part. For each group of ``convert.py``, in checkpoint order:

1. the owning pipeline stage all-gathers the needed shards over its ``tp_group`` and converts them
   (``convert.stage_groups``: QKV / gate-up split, vocabulary unpadding, global layer numbering);
2. with PP > 1 the owner stage broadcasts the result over ``pp_group`` (names, shapes and dtypes first, as a
   small object, then the tensors), so every rank of the replica ends with the same full tensors.

Every rank receives every tensor because, in the colocated layout of docs/gpu.md, each trainer GPU also hosts
a TensorRT-LLM worker, which needs full tensors on its own device for the CUDA IPC hand-over (the worker
slices its TP shard itself). Only one group (plus the caller's bucket) is alive at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

import torch
import torch.distributed as dist

from megatron_align.config.model import ModelConfig
from megatron_align.generation.trtllm import convert
from megatron_align.generation.trtllm.convert import Group


def _tp_fetch(state: dict[str, torch.Tensor], tp_group, tp: int):
    def fetch(key: str) -> list[torch.Tensor]:
        if key not in state:
            raise KeyError(f"tensor {key!r} is missing on this rank; does model.* match the model?")
        local = state[key].detach().contiguous()
        if tp == 1:
            return [local]
        out = [torch.empty_like(local) for _ in range(tp)]
        dist.all_gather(out, local, group=tp_group)
        return out

    return fetch


def _broadcast_group(group: Optional[Group], src_stage: int, pp_group, device) -> Group:
    """Owner stage sends ``group``; the other stages receive it (``group`` is None there)."""
    src = dist.get_global_rank(pp_group, src_stage)
    meta = [[(n, tuple(t.shape), t.dtype) for n, t in group] if group is not None else None]
    dist.broadcast_object_list(meta, src=src, group=pp_group)
    if group is None:
        group = [(n, torch.empty(shape, dtype=dtype, device=device)) for n, shape, dtype in meta[0]]
    for _, t in group:
        dist.broadcast(t, src=src, group=pp_group)
    return group


def iter_gathered_groups(
    model,
    cfg: ModelConfig,
    tp_group=None,
    pp_group=None,
    dtype: Optional[torch.dtype] = None,
) -> Iterator[Group]:
    """Full HF groups of this replica on every one of its ranks (collective; same order everywhere).

    ``model`` is this rank's GPTModel stage (unwrapped); ``tp_group`` / ``pp_group`` its tensor- and
    pipeline-parallel groups (``None``: size 1). ``dtype`` casts the output (the engine's dtype).
    """
    convert.check_llama_family(cfg)
    tp = dist.get_world_size(tp_group) if tp_group is not None else 1
    pp = dist.get_world_size(pp_group) if pp_group is not None else 1
    stage = dist.get_rank(pp_group) if pp_group is not None else 0
    state = convert.local_names(model.state_dict())
    device = next(iter(state.values())).device
    counts = [convert.count_layers(state)]
    if pp > 1:
        everyone: list = [None] * pp
        dist.all_gather_object(everyone, counts[0], group=pp_group)
        counts = [int(c) for c in everyone]
    offsets = convert.stage_offsets(counts, cfg.num_layers)
    fetch = _tp_fetch(state, tp_group, tp)
    for p in range(pp):
        # every rank walks every stage's groups in the same order; only stage p computes them
        mine = convert.stage_groups(fetch, cfg, p, pp, counts[p], offsets[p]) if p == stage else None
        for _ in range(convert.stage_group_count(cfg, p, pp, counts[p])):
            group = convert.finish_group(next(mine), dtype) if mine is not None else None
            if pp > 1:
                group = _broadcast_group(group, p, pp_group, device)
            yield group
            del group

