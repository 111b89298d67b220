"""Cross-rank combination of per-row softmax statistics for a vocab-parallel output layer.

Each tensor-parallel rank holds a contiguous slice ``[rank * V_local, (rank + 1) * V_local)`` of the
vocabulary. A kernel reduces its slice of every row to a local log-sum-exp ``lse_r`` plus a few additive
statistics; this module merges them into the global values with exactly two collectives on ``[N]``-sized
tensors:

1. all-reduce MAX of the local log-sum-exps: ``m = max_r lse_r``;
2. one all-reduce SUM of ``[exp(lse_r - m), exp(lse_r - m) * E_r[z], target_logit_r]``;
   then ``lse = m + log(S0)``, ``E[z] = S1 / S0`` (for entropy), ``target = S2``.

The process group is always an argument (``None`` means a single rank); nothing here reads megatron's global
parallel state.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def group_size(group) -> int:
    """Number of ranks in ``group``; 1 when ``group`` is None or torch.distributed is not running."""
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def group_rank(group) -> int:
    """This process's rank inside ``group``; 0 when ``group`` is None."""
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 0
    return dist.get_rank(group)


def vocab_start(local_vocab: int, group) -> int:
    """First global vocabulary id held by this rank."""
    return group_rank(group) * local_vocab


def combine_lse(local_lse: torch.Tensor, target_logit: torch.Tensor, local_mean_z: torch.Tensor | None,
                group) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Merge per-rank statistics into global ones.

    local_lse:    [N] fp32, log-sum-exp of this rank's (temperature-scaled) logits per row
    target_logit: [N] fp32, the target's scaled logit if this rank holds the target id, else 0
    local_mean_z: [N] fp32 or None, E_{p_r}[z] under this rank's local softmax (only for entropy)
    returns (lse [N], target_logit [N], mean_z [N] or None), identical on every rank.
    """
    if group_size(group) == 1:
        return local_lse, target_logit, local_mean_z
    # 1. m = max_r lse_r
    m = local_lse.clone()
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    # 2. one SUM over the stacked statistics: [N, 2] or [N, 3]
    scale = torch.exp(local_lse - m)  # [N], in (0, 1]
    cols = [scale, target_logit] if local_mean_z is None else [scale, target_logit, scale * local_mean_z]
    stats = torch.stack(cols, dim=1)
    dist.all_reduce(stats, op=dist.ReduceOp.SUM, group=group)
    lse = m + torch.log(stats[:, 0])
    mean_z = None if local_mean_z is None else stats[:, 2] / stats[:, 0]
    return lse, stats[:, 1].contiguous(), mean_z


def all_reduce_grad(grad: torch.Tensor, group) -> torch.Tensor:
    """SUM all-reduce of an input gradient across the tensor-parallel group (what megatron's
    ColumnParallelLinear does in backward for its replicated input)."""
    if group_size(group) > 1:
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=group)
    return grad
