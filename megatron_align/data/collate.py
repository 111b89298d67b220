"""Collation of samples (or packed rows) into a typed, right-padded ``Batch`` of next-token training tensors.

For a sample of ``T`` tokens placed at columns ``[o, o + T)`` of a row:

* ``tokens[o + t] = ids[t]``;
* ``labels[o + t] = ids[t + 1]`` for ``t < T - 1`` (the next token *within the sample*);
* ``loss_mask[o + t] = target_mask[t + 1]``: trained where the next token is a target;
* ``position_ids[o + t] = t`` (restarting at 0 for every packed sample).

A sample's last column and every padding column have ``labels = pad_id`` and ``loss_mask = 0``, so the loss
never reaches across samples or into padding. Attention is causal; padding sits on the right, where no real
token attends to it. Packed rows carry ``cu_seqlens`` (per-row sample boundaries) for variable-length
attention; ``Batch.attention_mask()`` gives the equivalent block-diagonal causal mask for plain attention.

Row length: exactly ``seq_length`` when given (pipeline parallelism needs one fixed shape), else the longest
row rounded up to a multiple of ``pad_to_multiple_of``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch


@dataclass
class Batch:
    """A micro-batch for causal-LM losses (also readable as a dict: ``batch["tokens"]``)."""

    tokens: torch.Tensor
    """``int64 [B, S]`` input ids, right-padded with ``pad_id``."""
    labels: torch.Tensor
    """``int64 [B, S]`` next-token targets (``pad_id`` where there is none)."""
    loss_mask: torch.Tensor
    """``float32 [B, S]``: 1 where ``labels`` is trained."""
    position_ids: torch.Tensor
    """``int64 [B, S]``: position of each token inside its sample."""
    lengths: torch.Tensor
    """``int64 [B]``: real (non-padding) tokens per row."""
    cu_seqlens: torch.Tensor | None = None
    """Packed rows only: ``int32 [B, K + 1]`` cumulative sample lengths per row (``[0, n1, n1 + n2, ...]``),
    padded with -1 to the batch's largest sample count ``K``."""
    sources: list[list[str]] = field(default_factory=list)
    """``file:line`` of the samples in each row."""

    _TENSORS = ("tokens", "labels", "loss_mask", "position_ids", "lengths", "cu_seqlens")

    def __getitem__(self, key: str):
        return getattr(self, key)

    def get(self, key: str, default=None):
        """Dict-style access (``batch.get("attention_mask")`` is None: causal attention)."""
        return getattr(self, key, default) if key in {f.name for f in fields(self)} else default

    def keys(self) -> list[str]:
        """Names of the tensors that are set."""
        return [k for k in self._TENSORS if getattr(self, k) is not None]

    def items(self) -> list[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` of the tensors that are set."""
        return [(k, getattr(self, k)) for k in self.keys()]

    @property
    def num_target_tokens(self) -> int:
        """Trained tokens in the batch (the loss normaliser's share of this micro-batch)."""
        return int(self.loss_mask.sum().item())

    def to(self, device, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on ``device``."""
        moved = {k: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
                 for k, v in ((f.name, getattr(self, f.name)) for f in fields(self))}
        return Batch(**moved)

    def segment_ids(self) -> torch.Tensor:
        """``int64 [B, S]``: index of the sample each column belongs to (padding: -1)."""
        b, s = self.tokens.shape
        col = torch.arange(s).unsqueeze(0).expand(b, -1)  # [B, S]
        if self.cu_seqlens is None:
            return torch.where(col < self.lengths.unsqueeze(1), 0, -1)
        bounds = self.cu_seqlens.to(torch.int64).clone()  # [B, K + 1]
        bounds[bounds < 0] = torch.iinfo(torch.int64).max
        seg = torch.searchsorted(bounds[:, 1:].contiguous(), col.contiguous(), right=True)  # [B, S]
        return torch.where(col < self.lengths.unsqueeze(1), seg, -1)

    def attention_mask(self) -> torch.Tensor:
        """``bool [B, 1, S, S]``, True where attention is *blocked* (megatron's convention): causal and, for
        packed rows, within each sample only."""
        s = self.tokens.shape[1]
        causal = torch.ones(s, s, dtype=torch.bool).tril()  # [S, S]
        seg = self.segment_ids()  # [B, S]
        same = seg.unsqueeze(2) == seg.unsqueeze(1)  # [B, S, S]
        return ~(causal & same).unsqueeze(1)

    def to_dict(self) -> dict:
        """The tensors as a plain dict (what ``training.schedule`` micro-batches are)."""
        return {k: getattr(self, k) for k in self.keys()}


def _row_length(longest: int, seq_length: int | None, pad_to_multiple_of: int) -> int:
    if seq_length is not None:
        if longest > seq_length:
            raise ValueError(f"a row of {longest} tokens does not fit seq_length={seq_length}")
        return seq_length
    m = max(1, pad_to_multiple_of)
    return max(m, -(-longest // m) * m)


def _fill(rows: Sequence[tuple[np.ndarray, np.ndarray, list[int]]], pad_id: int, width: int):
    """rows: (ids [T], target_mask [T], sample lengths); returns the Batch tensors."""
    b = len(rows)
    tokens = np.full((b, width), pad_id, dtype=np.int64)  # [B, S]
    labels = np.full((b, width), pad_id, dtype=np.int64)  # [B, S]
    loss_mask = np.zeros((b, width), dtype=np.float32)  # [B, S]
    position_ids = np.tile(np.arange(width, dtype=np.int64), (b, 1))  # [B, S]
    lengths = np.zeros(b, dtype=np.int64)  # [B]
    for r, (ids, mask, seq_lengths) in enumerate(rows):
        n = len(ids)
        tokens[r, :n] = ids
        lengths[r] = n
        o = 0
        for t in seq_lengths:
            labels[r, o:o + t - 1] = ids[o + 1:o + t]
            loss_mask[r, o:o + t - 1] = mask[o + 1:o + t]
            position_ids[r, o:o + t] = np.arange(t)
            o += t
        last = seq_lengths[-1] if seq_lengths else 0
        position_ids[r, n:] = np.arange(last, last + width - n)  # padding continues the last sample's run
    return (torch.from_numpy(tokens), torch.from_numpy(labels), torch.from_numpy(loss_mask),
            torch.from_numpy(position_ids), torch.from_numpy(lengths))


def collate(samples: Sequence, pad_id: int, seq_length: int | None = None, pad_to_multiple_of: int = 1,
            ) -> Batch:
    """One sample per row (objects with ``input_ids``, ``target_mask`` and optionally ``source``)."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    rows = [(np.asarray(s.input_ids, dtype=np.int64), np.asarray(s.target_mask, dtype=bool),
             [len(s.input_ids)]) for s in samples]
    width = _row_length(max(len(r[0]) for r in rows), seq_length, pad_to_multiple_of)
    tokens, labels, loss_mask, position_ids, lengths = _fill(rows, pad_id, width)
    return Batch(tokens, labels, loss_mask, position_ids, lengths,
                 sources=[[getattr(s, "source", "")] for s in samples])


def collate_packed(rows: Sequence, pad_id: int, seq_length: int | None = None, pad_to_multiple_of: int = 1,
                   ) -> Batch:
    """Packed rows (``packing.PackedRow``) into a batch with ``cu_seqlens``."""
    if not rows:
        raise ValueError("cannot collate an empty list of rows")
    width = _row_length(max(len(r.input_ids) for r in rows), seq_length, pad_to_multiple_of)
    tokens, labels, loss_mask, position_ids, lengths = _fill(
        [(np.asarray(r.input_ids, dtype=np.int64), np.asarray(r.target_mask, dtype=bool), list(r.seq_lengths))
         for r in rows], pad_id, width)
    k = max(len(r.seq_lengths) for r in rows)
    cu = np.full((len(rows), k + 1), -1, dtype=np.int32)  # [B, K + 1]
    for i, r in enumerate(rows):
        cu[i, : len(r.seq_lengths) + 1] = np.concatenate(([0], np.cumsum(r.seq_lengths)))
    return Batch(tokens, labels, loss_mask, position_ids, lengths, torch.from_numpy(cu),
                 sources=[list(r.sources) for r in rows])
