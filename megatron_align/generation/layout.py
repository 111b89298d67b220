"""Where a batch of prompts of different lengths sits in the ``[B, T]`` working buffer, and its masks.

Two layouts, both with no attention to padding:

- ``left`` (prompts right-aligned, pads first): one prefill of all prompts, then every row decodes at the
  same position. Pad keys are blocked with an explicit mask (a pad query sees only itself, so no softmax row
  is empty). Learned absolute positions count from each row's first real token; rotary positions are the
  buffer index, a per-row constant shift that rotary attention cannot see (q_m . k_n depends on m - n only;
  RoFormer, Su et al. 2021, Eq. 16). Needs core attention that honours explicit masks (megatron's local
  ``DotProductAttention`` and our SDPA subclass do; Transformer Engine ignores the mask under the causal /
  no-mask types megatron passes it).
- ``right`` (prompts left-aligned, "context first"; NeMo's and megatron's static engine's scheme): prefill up
  to the shortest prompt, then one position per step for every row; a row still inside its prompt keeps its
  prompt token instead of the sampled one. No mask at all (causal prefill, single-query decode), so it is
  right for every attention implementation, at the cost of extra decode steps over the prompt-length spread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class BatchLayout:
    """One batch in the working buffer; every tensor is ``[B]`` or ``[B, T]``."""

    tokens: torch.Tensor  # [B, T] int64: prompts placed, pad elsewhere; generated tokens are written here
    prompt_lengths: torch.Tensor  # [B] int64
    offset: torch.Tensor  # [B] int64: buffer index of the first prompt token
    start: torch.Tensor  # [B] int64: buffer index of the first generated token
    position_ids: torch.Tensor  # [B, T] int64
    key_blocked: Optional[torch.Tensor]  # [B, 1, 1, T] bool, True at pad positions (left layout with pads)
    prefill_end: int  # positions [0, prefill_end) go in the first forward
    total: int  # T
    left: bool


def make_layout(prompts: Sequence[Sequence[int]], new_tokens: int, pad_id: int, left: bool,
                device: torch.device) -> BatchLayout:
    """Place ``prompts`` (non-empty id lists) for ``new_tokens`` generated tokens each."""
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)  # [B]
    b, longest = len(prompts), int(lengths.max())
    total = longest + new_tokens
    tokens = torch.full((b, total), pad_id, dtype=torch.long)  # [B, T]
    offset = (longest - lengths) if left else torch.zeros_like(lengths)  # [B]
    for i, p in enumerate(prompts):
        o = int(offset[i])
        tokens[i, o:o + len(p)] = torch.tensor(list(p), dtype=torch.long)
    start = offset + lengths  # [B]
    index = torch.arange(total).unsqueeze(0)  # [1, T]
    position_ids = (index - offset.unsqueeze(1)).clamp_(min=0)  # [B, T]
    key_blocked = None
    if left and bool((offset > 0).any()):
        key_blocked = (index < offset.unsqueeze(1)).view(b, 1, 1, total).to(device)  # [B, 1, 1, T]
    return BatchLayout(
        tokens=tokens.to(device), prompt_lengths=lengths, offset=offset.to(device), start=start.to(device),
        position_ids=position_ids.to(device), key_blocked=key_blocked,
        prefill_end=longest if left else int(lengths.min()), total=total, left=left,
    )


def attention_mask(layout: BatchLayout, q_start: int, q_end: int) -> Optional[torch.Tensor]:
    """megatron's boolean mask (True = blocked) for queries ``[q_start, q_end)`` over keys ``[0, q_end)``.

    None when nothing beyond causality needs blocking (the attention applies its own causal mask for
    ``q_start == 0`` and attends everywhere for one query).
    """
    if layout.key_blocked is None:
        return None
    keys = layout.key_blocked[..., :q_end]  # [B, 1, 1, K]
    if q_end - q_start == 1:
        return keys  # a view: nothing is built per decode step
    k = torch.arange(q_end, device=keys.device)  # [K]
    q = torch.arange(q_start, q_end, device=keys.device).unsqueeze(1)  # [Q, 1]
    future = k > q  # [Q, K]
    own = k == q  # [Q, K]: a pad query still sees itself
    return future | (keys & ~own)  # [B, 1, Q, K]
