"""The ``update_weights`` payload of TensorRT-LLM's ``WorkerExtension`` (1.2.x), built from one bucket.

Format read by ``tensorrt_llm/llmapi/rlhf_utils.py`` (``WorkerExtension.update_weights(ipc_handles)``):
``{device_uuid: base64(pickle([(hf_name, (rebuild_fn, rebuild_args)), ...]))}``. Each worker takes the entry
of its own GPU's UUID, unpickles it with TRT-LLM's restricted unpickler (builtins and ``torch.*`` only),
overwrites ``rebuild_args[6]`` (the storage device of
``torch.multiprocessing.reductions.rebuild_cuda_tensor``) with its own device index, calls
``rebuild_fn(*rebuild_args)`` and loads the tensors with
``model_loader.reload(model, weights, allow_partial_loading=True)``. ``update_weights(None)`` finalizes.

``make_handle`` defaults to ``torch.multiprocessing.reductions.reduce_tensor`` (a CUDA IPC handle for a CUDA
tensor); tests pass a CPU stand-in with the same ``(fn, args)`` shape. The source tensors must stay alive
until the RPC has returned.
"""

from __future__ import annotations

import base64
import pickle
from collections.abc import Callable, Iterable
from typing import Any, Optional

import torch

from megatron_align.generation.trtllm.convert import Group

Handle = tuple[Callable[..., torch.Tensor], tuple]
DEVICE_ARG = 6
"""Index of the device argument in ``rebuild_cuda_tensor``'s arguments, replaced by each worker."""


def reduce_cuda_tensor(t: torch.Tensor) -> Handle:
    """CUDA IPC handle of ``t`` (``torch.multiprocessing.reductions.reduce_tensor``)."""
    from torch.multiprocessing.reductions import reduce_tensor

    if not t.is_cuda:
        raise ValueError("CUDA IPC needs a CUDA tensor; refit buckets must live on the GPU")
    return reduce_tensor(t)


def bucket_payload(
    bucket: Group,
    device_uuid: str,
    make_handle: Optional[Callable[[torch.Tensor], Handle]] = None,
    serialize: bool = True,
) -> dict[str, Any]:
    """``{device_uuid: payload}`` for one bucket held on the GPU ``device_uuid`` names."""
    make_handle = make_handle or reduce_cuda_tensor
    handles = [(name, make_handle(t)) for name, t in bucket]
    for name, (_, args) in handles:
        if len(args) <= DEVICE_ARG:
            raise ValueError(f"{name}: handle has {len(args)} rebuild arguments; TRT-LLM rewrites index 6")
    if not serialize:
        return {device_uuid: handles}
    return {device_uuid: base64.b64encode(pickle.dumps(handles)).decode("ascii")}


def merge_payloads(payloads: Iterable[Optional[dict[str, Any]]]) -> dict[str, Any]:
    """One payload from several ranks' (``None``: a rank that hosts no engine worker)."""
    merged: dict[str, Any] = {}
    for part in payloads:
        for uuid, data in (part or {}).items():
            if uuid in merged:
                raise ValueError(f"two ranks sent weights for GPU {uuid}; one refit rank per GPU")
            merged[uuid] = data
    return merged
