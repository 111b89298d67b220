"""Pure tensor layout transforms shared by the HF weight maps, and local <-> Transformer Engine key names.

Owns:
- the grouped-query QKV interleave: HF keeps ``q_proj``/``k_proj``/``v_proj`` (or GPT-2's ``[Q; K; V]``);
  megatron's fused ``linear_qkv`` holds, for each query group g, the q heads of g, then k_g, then v_g
  (``SelfAttention.get_query_key_value_tensors`` views it as ``[.., ng, (np/ng + 2) * hn]``);
- the SwiGLU ``linear_fc1`` = ``[gate; up]`` concat/split (megatron applies the activation to the first half);
- vocabulary padding (zero rows) on import and unpadding on export;
Everything here works on full (TP=1) tensors; weights ``[out, in]`` and biases ``[out]`` alike.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from megatron_align.models.hf.errors import HFConversionError


def interleave_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, num_groups: int, head_dim: int
) -> torch.Tensor:
    """``q [np*hn, ...]``, ``k``/``v`` ``[ng*hn, ...]`` -> ``linear_qkv [ng*(np/ng+2)*hn, ...]``."""
    if num_heads % num_groups:
        raise HFConversionError(f"{num_heads} attention heads are not divisible into {num_groups} kv groups")
    per = num_heads // num_groups
    rest = tuple(q.shape[1:])
    if q.shape[0] != num_heads * head_dim or k.shape[0] != num_groups * head_dim or v.shape != k.shape:
        raise HFConversionError(
            f"q/k/v shapes {tuple(q.shape)}/{tuple(k.shape)}/{tuple(v.shape)} do not match "
            f"{num_heads} heads, {num_groups} kv groups, head dim {head_dim}"
        )
    q = q.reshape(num_groups, per * head_dim, *rest)  # [ng, np/ng*hn, ...]
    k = k.reshape(num_groups, head_dim, *rest)  # [ng, hn, ...]
    v = v.reshape(num_groups, head_dim, *rest)  # [ng, hn, ...]
    return torch.cat([q, k, v], dim=1).reshape(num_groups * (per + 2) * head_dim, *rest)


def split_qkv(
    qkv: torch.Tensor, num_heads: int, num_groups: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`interleave_qkv`: ``[ng*(np/ng+2)*hn, ...]`` -> ``q [np*hn, ...]``, ``k``, ``v``."""
    per = num_heads // num_groups
    rest = tuple(qkv.shape[1:])
    if qkv.shape[0] != num_groups * (per + 2) * head_dim:
        raise HFConversionError(
            f"linear_qkv has {qkv.shape[0]} rows; {num_heads} heads / {num_groups} groups / "
            f"head dim {head_dim} need {num_groups * (per + 2) * head_dim}"
        )
    grouped = qkv.reshape(num_groups, (per + 2) * head_dim, *rest)  # [ng, (np/ng+2)*hn, ...]
    q, k, v = torch.split(grouped, [per * head_dim, head_dim, head_dim], dim=1)
    return (
        q.reshape(num_heads * head_dim, *rest),
        k.reshape(num_groups * head_dim, *rest),
        v.reshape(num_groups * head_dim, *rest),
    )


def concat_gate_up(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SwiGLU ``gate [F, ...]``, ``up [F, ...]`` -> megatron ``linear_fc1`` ``[2F, ...]`` = ``[gate; up]``."""
    if gate.shape != up.shape:
        raise HFConversionError(f"gate {tuple(gate.shape)} and up {tuple(up.shape)} differ in shape")
    return torch.cat([gate, up], dim=0)


def split_gate_up(fc1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`concat_gate_up`: ``[2F, ...]`` -> ``(gate [F, ...], up [F, ...])``."""
    if fc1.shape[0] % 2:
        raise HFConversionError(f"linear_fc1 has an odd number of rows ({fc1.shape[0]}); not a gated MLP")
    gate, up = torch.chunk(fc1, 2, dim=0)
    return gate, up


def pad_vocab(weight: torch.Tensor, padded_rows: int) -> torch.Tensor:
    """``[V, H]`` -> ``[V_padded, H]`` with zero rows appended (their logits are 0; callers mask them)."""
    rows = weight.shape[0]
    if padded_rows < rows:
        raise HFConversionError(f"vocabulary of {rows} rows cannot be padded down to {padded_rows}")
    if padded_rows == rows:
        return weight
    pad = weight.new_zeros((padded_rows - rows, *weight.shape[1:]))
    return torch.cat([weight, pad], dim=0)


def unpad_vocab(weight: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[V_padded, H]`` -> ``[V, H]`` (the first ``vocab_size`` rows)."""
    if weight.shape[0] < vocab_size:
        raise HFConversionError(f"embedding has {weight.shape[0]} rows, fewer than vocab_size={vocab_size}")
    return weight[:vocab_size]


class KeyTaker:
    """Pops named tensors from a state dict and reports, at the end, what nobody asked for."""

    def __init__(self, state: Mapping[str, torch.Tensor], what: str):
        self.state = dict(state)
        self.what = what

    def take(self, key: str) -> torch.Tensor:
        if key not in self.state:
            raise HFConversionError(f"{self.what}: tensor {key!r} is missing")
        return self.state.pop(key)

    def drop(self, key: str) -> None:
        self.state.pop(key, None)

    def finish(self, ignored_suffixes: tuple[str, ...] = ()) -> None:
        left = sorted(k for k in self.state if not k.endswith(ignored_suffixes))
        if left:
            more = f" (+{len(left) - 3} more)" if len(left) > 3 else ""
            raise HFConversionError(f"{self.what}: unexpected tensors {left[:3]}{more}; is the config right?")
