"""Who talks to whom during generation: pipeline activations and the per-step token broadcast.

- Pipeline stages pass hidden states ``[s, B, H]`` forward with blocking point-to-point send/recv in the
  pipeline group (gloo on CPU, NCCL on GPUs); shapes are known on both sides, so no shape exchange.
- Only the last stage has logits. Its tensor-parallel rank 0 chooses the next tokens and broadcasts them
  (with their log-probs and stop flags) first to the other TP ranks of the last stage, then down the
  pipeline group, so every rank of the model holds the same tokens: ranks agree by broadcast, not by
  seeding (the other ranks never sample).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


def _size_rank(group) -> tuple[int, int]:
    if group is None or not dist.is_initialized():
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


@dataclass
class StageComm:
    """This rank's place in the TP x PP grid and the collectives generation needs."""

    tp_group: Optional[object] = None
    pp_group: Optional[object] = None

    def __post_init__(self):
        self.tp_size, self.tp_rank = _size_rank(self.tp_group)
        self.pp_size, self.pp_rank = _size_rank(self.pp_group)
        self.first = self.pp_rank == 0
        self.last = self.pp_rank == self.pp_size - 1
        self.chooser = self.last and self.tp_rank == 0
        """This rank picks the tokens (last stage, TP rank 0)."""

    @classmethod
    def from_parallel_state(cls) -> StageComm:
        """Groups from megatron's global parallel state."""
        from megatron.core import parallel_state as ps

        return cls(ps.get_tensor_model_parallel_group(), ps.get_pipeline_model_parallel_group())

    def _pp_global(self, pp_rank: int) -> int:
        return dist.get_global_rank(self.pp_group, pp_rank)

    def recv_hidden(self, shape: tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor:
        """Hidden states from the previous stage (``[s, B, H]``)."""
        buf = torch.empty(shape, dtype=dtype, device=device)
        dist.recv(buf, src=self._pp_global(self.pp_rank - 1), group=self.pp_group)
        return buf

    def send_hidden(self, hidden: torch.Tensor) -> None:
        """Hidden states to the next stage."""
        dist.send(hidden.contiguous(), dst=self._pp_global(self.pp_rank + 1), group=self.pp_group)

    def share_choice(self, packed: torch.Tensor) -> torch.Tensor:
        """Broadcast the chooser's ``packed`` step result to every rank of the model (in place)."""
        if self.tp_size > 1 and self.last:
            dist.broadcast(packed, src=dist.get_global_rank(self.tp_group, 0), group=self.tp_group)
        if self.pp_size > 1:
            dist.broadcast(packed, src=self._pp_global(self.pp_size - 1), group=self.pp_group)
        return packed

    def all_true(self, flag: bool, device=None) -> bool:
        """True when ``flag`` holds on every TP and PP rank of the model."""
        t = torch.tensor([1 if flag else 0], dtype=torch.long, device=device)
        for group, size in ((self.tp_group, self.tp_size), (self.pp_group, self.pp_size)):
            if size > 1:
                dist.all_reduce(t, op=dist.ReduceOp.MIN, group=group)
        return bool(t.item())

    @property
    def shares(self) -> bool:
        """True when a broadcast is needed at all (more than one rank holds the model)."""
        return self.tp_size > 1 or self.pp_size > 1
