"""megatron-core's two names for a layer's norm parameters: the local spec's (``input_layernorm``,
``pre_mlp_layernorm``) and the Transformer Engine spec's, where the norms are fused into the next linear
(``self_attention.linear_qkv.layer_norm_weight``, ``mlp.linear_fc1.layer_norm_weight``, ``..._bias``). The
checkpoint keys of ``sharded_state_dict`` (ours, NeMo's) are the TE names whichever spec the model was built
with; a model's own ``state_dict`` uses its spec's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

_LOCAL_TO_TE = (
    (re.compile(r"^(.*\.layers\.\d+)\.input_layernorm\.(weight|bias)$"),
     r"\1.self_attention.linear_qkv.layer_norm_\2"),
    (re.compile(r"^(.*\.layers\.\d+)\.pre_mlp_layernorm\.(weight|bias)$"),
     r"\1.mlp.linear_fc1.layer_norm_\2"),
)
_TE_TO_LOCAL = (
    (re.compile(r"^(.*\.layers\.\d+)\.self_attention\.linear_qkv\.layer_norm_(weight|bias)$"),
     r"\1.input_layernorm.\2"),
    (re.compile(r"^(.*\.layers\.\d+)\.mlp\.linear_fc1\.layer_norm_(weight|bias)$"),
     r"\1.pre_mlp_layernorm.\2"),
)


def rename_norms(name: str, to: str) -> str:
    """One parameter name in megatron's local-spec form -> TE form (``to="te"``), or back (``to="local"``)."""
    if to not in ("te", "local"):
        raise ValueError(f"to={to!r}: use 'te' or 'local'")
    for pattern, repl in _LOCAL_TO_TE if to == "te" else _TE_TO_LOCAL:
        new, n = pattern.subn(repl, name)
        if n:
            return new
    return name


def uses_te_names(names: Iterable[str]) -> bool:
    """True when a model's parameter names are in Transformer Engine form (norms fused into linears)."""
    return any(".layer_norm_weight" in n for n in names)


def match_names(state: Mapping[str, torch.Tensor], model_names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Rename a local-spec (or TE) state dict to the naming of ``model_names`` (the maps emit local names)."""
    to = "te" if uses_te_names(model_names) else "local"
    return {rename_norms(k, to): v for k, v in state.items()}
