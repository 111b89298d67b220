"""``model_weights/`` of a ``.nemo``: megatron dist-checkpointing of the model alone, read and written without
megatron or NeMo (docs/nemo_format_research.md, section 2).

Keys are megatron-core GPTModel names behind NeMo's ``model.`` prefix, layers stacked: one global tensor per
parameter name with the layer as its first dimension
(``model.decoder.layers.self_attention.linear_qkv.weight`` is ``[L, (nh + 2 ng) d, H]``), whatever TP/PP saved
it. Two backends, named by ``metadata.json``:
- ``zarr`` (NeMo <= 1.23, megatron-core 0.5): one directory per key holding ``.zarray`` (zarr v2 JSON,
  uncompressed, C order; ``"bfloat16"`` for bf16) and one raw little-endian file per chunk (``0.0.0``...);
- ``torch_dist`` (NeMo 2.x's nlp collection, megatron-core >= 0.7): a torch.distributed.checkpoint directory
  (``.metadata`` + ``__*_*.distcp``), read through ``models/dcp_reader.SafeFileSystemReader`` (its index is
  unpickled through an allow-list) and written with plain ``dcp.save``.
Transformer Engine's ``_extra_state`` objects are never read (a zarr ``shard_*.pt`` would be a pickle); when
writing, the ones NeMo's loader asks for are written as the bytes of ``torch.save(None)`` (TE without fp8).
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from megatron_align.models.nemo.errors import NemoFormatError

PREFIX = "model."
"""NeMo's key prefix (``MegatronGPTModel.sharded_state_dict(prefix='model.')``)."""
EXTRA_STATE = "_extra_state"

_ZARR_DTYPES = {"bfloat16": torch.bfloat16, "<f4": torch.float32, "<f2": torch.float16, "<f8": torch.float64}
_ZARR_NAMES = {v: k for k, v in _ZARR_DTYPES.items()}


def backend_of(directory: Path) -> str:
    """``zarr`` or ``torch_dist``, from ``metadata.json``."""
    path = Path(directory) / "metadata.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise NemoFormatError(f"{path}: missing (model_weights/ is not a dist checkpoint)") from None
    except (OSError, ValueError) as e:
        raise NemoFormatError(f"{path}: unreadable ({type(e).__name__})") from None
    backend = meta.get("sharded_backend") if isinstance(meta, dict) else None
    if backend not in ("zarr", "torch_dist"):
        raise NemoFormatError(f"{path}: sharded_backend={backend!r}; supported: zarr, torch_dist")
    return backend


def read_weights(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of ``model_weights/`` by its key (``model.`` prefix kept), ``_extra_state`` left out."""
    directory = Path(directory)
    if backend_of(directory) == "zarr":
        return _read_zarr_dir(directory)
    return _read_torch_dist(directory)


# -- zarr ------------------------------------------------------------------------------------------------
def _read_zarr_dir(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for entry in sorted(directory.iterdir()):
        if entry.is_dir() and EXTRA_STATE not in entry.name:
            if not (entry / ".zarray").is_file():
                raise NemoFormatError(f"{entry}: a key directory without .zarray")
            out[entry.name] = read_zarr_array(entry)
    return out


def read_zarr_array(path: Path) -> torch.Tensor:
    """One uncompressed zarr v2 array (what megatron-core 0.5 writes) as a tensor."""
    where = path / ".zarray"
    try:
        meta = json.loads(where.read_text())
    except (OSError, ValueError) as e:
        raise NemoFormatError(f"{where}: unreadable ({type(e).__name__})") from None
    for key, wanted in (("zarr_format", 2), ("compressor", None), ("filters", None), ("order", "C")):
        if meta.get(key) != wanted:
            raise NemoFormatError(f"{where}: {key}={meta.get(key)!r}; only {wanted!r} is read")
    dtype = _ZARR_DTYPES.get(meta.get("dtype"))
    if dtype is None:
        raise NemoFormatError(f"{where}: dtype {meta.get('dtype')!r}; supported: {', '.join(_ZARR_DTYPES)}")
    shape, chunks = list(meta["shape"]), list(meta["chunks"])
    sep = meta.get("dimension_separator", ".")
    out = torch.empty(shape, dtype=dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    grid = [range(math.ceil(s / c)) for s, c in zip(shape, chunks)]
    for index in itertools.product(*grid):
        name = sep.join(str(i) for i in index) or "0"
        file = path / name
        if not file.is_file():
            raise NemoFormatError(f"{file}: chunk missing (the array has no fill value)")
        data = file.read_bytes()
        if len(data) != math.prod(chunks) * itemsize:
            raise NemoFormatError(f"{file}: {len(data)} bytes, a chunk of {chunks} {meta['dtype']} needs "
                                  f"{math.prod(chunks) * itemsize}")
        chunk = torch.frombuffer(bytearray(data), dtype=dtype).reshape(chunks)
        region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, shape))
        out[region] = chunk[tuple(slice(0, r.stop - r.start) for r in region)]
    return out


def write_zarr_array(path: Path, tensor: torch.Tensor, chunks: list[int]) -> None:
    """``tensor`` as an uncompressed zarr v2 array with ``chunks`` (as megatron-core 0.5 writes it)."""
    if tensor.dtype not in _ZARR_NAMES:
        raise NemoFormatError(f"{path.name}: dtype {tensor.dtype} cannot be written as zarr")
    path.mkdir(parents=True, exist_ok=False)
    shape = list(tensor.shape)
    meta = {"chunks": chunks, "compressor": None, "dtype": _ZARR_NAMES[tensor.dtype], "fill_value": None,
            "filters": None, "order": "C", "shape": shape, "zarr_format": 2}
    (path / ".zarray").write_text(json.dumps(meta))
    for index in itertools.product(*[range(math.ceil(s / c)) for s, c in zip(shape, chunks)]):
        region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, shape))
        chunk = torch.zeros(chunks, dtype=tensor.dtype)
        chunk[tuple(slice(0, r.stop - r.start) for r in region)] = tensor[region]
        raw = chunk.contiguous().view(torch.uint8) if chunk.dim() else chunk.reshape(1).view(torch.uint8)
        (path / (".".join(str(i) for i in index) or "0")).write_bytes(raw.numpy().tobytes())


# -- torch_dist ------------------------------------------------------------------------------------------
def _read_torch_dist(directory: Path) -> dict[str, torch.Tensor]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from megatron_align.config.errors import CheckpointError
    from megatron_align.models.dcp_reader import SafeFileSystemReader

    try:
        meta = SafeFileSystemReader(str(directory)).read_metadata()
        state = {k: torch.empty(tuple(v.size), dtype=v.properties.dtype)
                 for k, v in meta.state_dict_metadata.items()
                 if isinstance(v, TensorStorageMetadata) and EXTRA_STATE not in k}
        dcp.load(state, storage_reader=SafeFileSystemReader(str(directory)), no_dist=True)
    except CheckpointError as e:
        raise NemoFormatError(str(e)) from None
    except (RuntimeError, ValueError, OSError, KeyError) as e:
        raise NemoFormatError(f"{directory}: cannot read ({type(e).__name__}: {str(e).splitlines()[0]})") \
            from None
    return state


def _none_bytes() -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(None, buf)
    buf.seek(0)
    return buf


def write_weights(directory: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                  extra_state_keys: Iterable[str] = (), backend: str = "torch_dist",
                  num_layers: int = 0) -> None:
    """Write a ``model_weights/`` directory: ``tensors`` by key (layers stacked), plus one
    ``torch.save(None)`` object per layer for each key of ``extra_state_keys`` (``<module>._extra_state``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=False)
    extra = {f"{key}/shard_{i}_{num_layers}": _none_bytes()
             for key in extra_state_keys for i in range(num_layers)}
    if backend == "zarr":
        for key, t in tensors.items():
            stacked = key.startswith(f"{PREFIX}decoder.layers.")
            write_zarr_array(directory / key, t, [1, *t.shape[1:]] if stacked else list(t.shape))
        for unique, value in extra.items():
            key, shard = unique.split("/")
            (directory / key).mkdir(exist_ok=True)
            (directory / key / f"{shard}.pt").write_bytes(value.getvalue())
    elif backend == "torch_dist":
        import torch.distributed.checkpoint as dcp

        dcp.save({**{k: v.contiguous() for k, v in tensors.items()}, **extra}, checkpoint_id=str(directory),
                 no_dist=True)
    else:
        raise NemoFormatError(f"backend {backend!r}: use torch_dist or zarr")
    (directory / "metadata.json").write_text(json.dumps({
        "sharded_backend": backend, "sharded_backend_version": 1, "common_backend": "torch",
        "common_backend_version": 1}))
    torch.save({}, directory / "common.pt")
