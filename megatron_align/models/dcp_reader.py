"""The one door through which megatron_align reads a dist_checkpointing directory, and why nothing in it runs.

A ``torch_dist`` directory (``weights/`` or ``optimizer/`` of a checkpoint) holds four kinds of bytes; here is
what megatron-core / torch.distributed.checkpoint would do with each, and what ``load_sharded`` does instead:

- ``metadata.json``: megatron builds ``CheckpointingConfig(**json)`` and picks a strategy by the named
  backend; here the JSON is checked field by field (backends ``torch_dist`` / ``torch``, integer versions).
- ``.metadata`` (the index): torch calls ``pickle.load``; here ``_SafeMetadataUnpickler`` admits DCP record
  classes only, and every storage item's file, offset and length is checked against the disk.
- ``common.pt``: megatron calls ``torch.load`` with weights_only left to the environment; here always
  ``weights_only=True``.
- byte items of ``*.distcp`` (``*._extra_state/shard_*``): torch unpickles them with ``weights_only=False``;
  here ``weights_only=True``, and a uint8 blob that Transformer Engine will unpickle itself is first
  replayed through ``_SafeExtraStateUnpickler``.

Anything outside those allow-lists stops the load with one ``CheckpointError`` line that names the file and
the refused global, before any of it is used; so does a truncated or unreadable file. Every loader of the
project (``models/checkpoint.load_checkpoint``, ``models/reward.load_reward_weights``, and through them the
servers, SFT / RM restore, resume, HF export) calls ``load_sharded``; ``tests/e2e/test_crafted_checkpoint.py``
checks that no other module calls ``dist_checkpointing.load`` or an unrestricted ``torch.load``.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import json
import os
import pickle
import re
from pathlib import Path

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.core import CheckpointingException
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.dist_checkpointing.strategies.common import TorchCommonLoadStrategy
from megatron.core.dist_checkpointing.strategies.torch import (
    MCoreLoadPlanner,
    TorchDistLoadShardedStrategy,
    _replace_sharded_keys_with_state_dict_keys,
    _replace_state_dict_keys_with_sharded_keys,
    _restore_dict_types,
    _unwrap_pyt_sharded_tensor,
    mcore_to_pyt_state_dict,
)
from torch.distributed import checkpoint as dcp
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, StorageMeta

from megatron_align.config.errors import CheckpointError

# ----------------------------------------------------------------------------------------------------------
# allow-list for the index (.metadata)
# ----------------------------------------------------------------------------------------------------------
_ALLOWED_MODULE_PREFIXES = ("torch.distributed.checkpoint.",)
_ALLOWED_GLOBALS = {
    ("torch", "Size"),
    ("torch", "device"),
    ("torch", "dtype"),
    ("torch", "layout"),
    ("torch", "memory_format"),
    ("torch", "strided"),
    ("torch", "contiguous_format"),
    ("torch", "preserve_format"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("torch.serialization", "_get_layout"),  # maps a layout's name to a torch.layout, nothing else
    ("megatron.core.dist_checkpointing.strategies.torch", "MCoreMetadata"),
    ("megatron.core.dist_checkpointing.strategies.torch", "MCoreSavePlan"),
    # torch's own DCP writer (NeMo 2.x, plain ``dcp.save``) records ``StorageMeta.checkpoint_id`` as a path:
    # rebuilding one joins strings, no file is touched
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
}


def _is_plain_record(obj, prefixes: tuple[str, ...]) -> bool:
    """A dataclass or enum *defined* under an allowed module (not re-exported there, as ``io.FileIO`` is)."""
    if not isinstance(obj, type) or not str(getattr(obj, "__module__", "")).startswith(prefixes):
        return False
    return dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum)


class _SafeMetadataUnpickler(pickle.Unpickler):
    """Admits only plain checkpoint-index records (DCP metadata dataclasses and enums, torch dtypes/sizes).

    Dotted names are refused outright: pickle protocol 4 resolves ``module`` + ``"a.b.c"`` by walking
    attributes, which would reach any class importable from an allowed module (``subprocess.Popen`` via
    ``torch.utils``, ``io.FileIO`` via ``filesystem.io``).
    """

    record_prefixes = _ALLOWED_MODULE_PREFIXES

    def find_class(self, module, name):
        if "." in name:
            raise CheckpointError(f"refusing to unpickle {module}.{name}")
        is_dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) in _ALLOWED_GLOBALS or is_dtype:
            return super().find_class(module, name)
        if module.startswith(self.record_prefixes):
            try:
                obj = super().find_class(module, name)
            except (ImportError, AttributeError):
                obj = None
            if _is_plain_record(obj, self.record_prefixes):  # records and enums, never a function
                return obj
        raise CheckpointError(f"refusing to unpickle {module}.{name}")


def _safe_storage_from_bytes(data: bytes):
    """``torch.storage._load_from_bytes`` (plain-pickled tensors carry their storage as torch.save bytes)
    with the nested bytes under ``weights_only``."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class _SafeExtraStateUnpickler(_SafeMetadataUnpickler):
    """Transformer Engine's ``_extra_state`` blob (FP8 scales and amax histories, its recipe): tensors,
    containers, numbers, and dataclass / enum records of ``transformer_engine``; nothing callable."""

    record_prefixes = ("transformer_engine.",)
    _tensor_rebuilds = {("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
                        ("torch._utils", "_rebuild_parameter")}

    def find_class(self, module, name):
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _safe_storage_from_bytes
        if (module, name) in self._tensor_rebuilds:
            return pickle.Unpickler.find_class(self, module, name)
        return super().find_class(module, name)


def verify_safe_to_load(sharded_dir: Path) -> None:
    """Replay every index pickle of a dist_checkpointing directory through the allow-list (no load)."""
    for meta in sorted(Path(sharded_dir).glob("*.metadata")):
        _read_index(meta)


def _read_index(path: Path):
    try:
        with open(path, "rb") as f:
            return _SafeMetadataUnpickler(f).load()
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}; this file was not written by megatron_align") from None
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint index ({_short(e)})") from None


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


_GLOBAL_RE = re.compile(r"(?:GLOBAL|global) ([\w.]+)")


def _refused_global(err: BaseException) -> str:
    """The global that torch's weights_only unpickler refused, from its (long) message."""
    found = _GLOBAL_RE.search(str(err))
    if not found:
        return _short(err)
    name = found.group(1)
    return name if "." in name else f"builtins.{name}"  # torch names builtins without their module


# ----------------------------------------------------------------------------------------------------------
# the reader, the planner and the two strategies megatron is handed
# ----------------------------------------------------------------------------------------------------------
class SafeFileSystemReader(dcp.FileSystemReader):
    """torch's FileSystemReader whose index is read through the allow-list and checked against the disk."""

    def read_metadata(self, *args, **kwargs):
        rank = kwargs.get("rank")
        path = Path(self._get_metadata_path(rank))
        metadata = _read_index(path)
        if not isinstance(metadata, dcp.Metadata):
            raise CheckpointError(f"{path}: not a checkpoint index (holds a {type(metadata).__name__})")
        _check_storage(path.parent, metadata)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _check_storage(directory: Path, metadata) -> None:
    """Every item the index points at lies inside a shard file of this directory (no ``..``, no absolute
    path), and ends before that file does (a truncated ``.distcp`` is named here, not deep in a read)."""
    sizes: dict[str, int] = {}
    for index, info in (metadata.storage_data or {}).items():
        rel = getattr(info, "relative_path", None)
        if not isinstance(rel, str) or not rel or os.path.basename(rel) != rel or rel in (".", ".."):
            raise CheckpointError(f"{directory}/.metadata: item {index.fqn} points outside the checkpoint "
                                  f"({rel!r})")
        if rel not in sizes:
            file = directory / rel
            if not file.is_file():
                raise CheckpointError(f"{file}: missing (the checkpoint index names it)")
            sizes[rel] = file.stat().st_size
        offset, length = info.offset, info.length
        if not (isinstance(offset, int) and isinstance(length, int) and offset >= 0 and length >= 0):
            raise CheckpointError(f"{directory}/.metadata: item {index.fqn}: bad offset/length")
        if offset + length > sizes[rel]:
            raise CheckpointError(f"{directory / rel}: truncated ({sizes[rel]} bytes, item {index.fqn} needs "
                                  f"{offset + length}); copy the checkpoint again")


class SafeLoadPlanner(MCoreLoadPlanner):
    """megatron's load planner whose byte items are decoded under ``weights_only`` (see the module table)."""

    def __init__(self, reader: SafeFileSystemReader, **kwargs):
        super().__init__(**kwargs)
        self._reader = reader

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        info = self._reader.storage_data.get(read_item.storage_index)
        where = f"{self._reader.path}/{getattr(info, 'relative_path', '?')}: item {fqn}"
        obj = decode_byte_item(value, where)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


def decode_byte_item(value: io.BytesIO, where: str):
    """One byte item of a shard file -> its object, or a ``CheckpointError`` naming ``where`` and the
    global."""
    try:
        obj = torch.load(value, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{where}: refusing to unpickle {_refused_global(e)}") from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError, IndexError) as e:
        raise CheckpointError(f"{where}: unreadable ({_short(e)})") from None
    for blob in _te_blobs(obj):
        try:
            _SafeExtraStateUnpickler(io.BytesIO(blob.numpy().tobytes())).load()
        except CheckpointError as e:
            raise CheckpointError(f"{where}: Transformer Engine extra state: {e}") from None
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"{where}: Transformer Engine extra state: refusing to unpickle "
                                  f"{_refused_global(e)}") from None
        except Exception as e:  # noqa: BLE001 - any failure of a replay means "do not hand this to TE"
            raise CheckpointError(f"{where}: unreadable Transformer Engine extra state ({_short(e)})"
                                  ) from None
    return obj


def _te_blobs(obj):
    """uint8 tensors in a byte item: how Transformer Engine stores its pickled ``_extra_state`` (it calls
    ``pickle.loads`` on them when the model's ``set_extra_state`` runs)."""
    items = obj if isinstance(obj, (list, tuple)) else [obj]
    return [t for t in items if isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.numel() > 0]


class SafeTorchDistLoadStrategy(TorchDistLoadShardedStrategy):
    """megatron's torch_dist load strategy over ``SafeFileSystemReader`` + ``SafeLoadPlanner``.

    ``load`` is megatron-core 0.16's own sequence of steps (key mapping in, DCP load, key mapping out) with
    the reader and the planner swapped; the two metadata queries read the index through the allow-list too.
    """

    def load(self, sharded_state_dict, checkpoint_dir):
        from megatron.core.dist_checkpointing.dict_utils import nested_values
        from megatron.core.dist_checkpointing.mapping import ShardedTensor

        tensors = [t for t in nested_values(sharded_state_dict) if isinstance(t, ShardedTensor)]
        checked = [t for t in tensors if not t.allow_shape_mismatch]
        flexible = {t.key: t for t in tensors if t.allow_shape_mismatch}
        original = sharded_state_dict
        sharded_state_dict, flat_mapping, rename_mapping = _replace_state_dict_keys_with_sharded_keys(
            sharded_state_dict)
        pyt_state_dict = mcore_to_pyt_state_dict(sharded_state_dict, True)
        reader = SafeFileSystemReader(checkpoint_dir)
        planner = SafeLoadPlanner(reader, shapes_validation_sharded_tensors=checked,
                                  allow_shape_mismatch_sharded_tensors=flexible)
        dcp.load(pyt_state_dict, storage_reader=reader, planner=planner)
        state = {k: _unwrap_pyt_sharded_tensor(v) for k, v in pyt_state_dict.items()}
        state = _replace_sharded_keys_with_state_dict_keys(state, flat_mapping, rename_mapping)
        _restore_dict_types(state, original)
        return state

    def load_tensors_metadata(self, checkpoint_dir, metadata=None):
        if metadata is None:
            metadata = SafeFileSystemReader(checkpoint_dir).read_metadata()
        return super().load_tensors_metadata(checkpoint_dir, metadata)

    def load_sharded_metadata(self, checkpoint_dir):
        metadata = SafeFileSystemReader(checkpoint_dir).read_metadata()
        sharded = {}
        for key, item in metadata.state_dict_metadata.items():
            if isinstance(item, BytesStorageMetadata):
                obj = ShardedObject.empty_from_unique_key(key)
                sharded[obj.unique_key] = obj
        sharded.update(self.load_tensors_metadata(checkpoint_dir, metadata))
        return sharded


class SafeCommonLoadStrategy(TorchCommonLoadStrategy):
    """``common.pt`` under ``weights_only=True`` whatever the environment says; no separate object files."""

    def load_common(self, checkpoint_dir):
        path = Path(checkpoint_dir) / "common.pt"
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"{path}: refusing to unpickle {_refused_global(e)}") from None
        except (RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"{path}: unreadable ({_short(e)})") from None

    def load_sharded_objects(self, sharded_objects_state_dict, checkpoint_dir):
        raise CheckpointError(f"{checkpoint_dir}: separate sharded-object files are not read (torch_dist "
                              "checkpoints keep them in the shard files)")


# ----------------------------------------------------------------------------------------------------------
# the front door
# ----------------------------------------------------------------------------------------------------------
_BACKENDS = {"sharded_backend": "torch_dist", "common_backend": "torch"}


def check_backend_config(directory: Path) -> None:
    """``metadata.json`` of a dist_checkpointing directory names the backends this reader implements."""
    path = Path(directory) / "metadata.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; {directory} is not a dist_checkpointing directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({_short(e)})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    for field, wanted in _BACKENDS.items():
        if config.get(field) != wanted:
            raise CheckpointError(f"{path}: {field} is {config.get(field)!r}; megatron_align reads only "
                                  f"{wanted!r} checkpoints")
    for field in ("sharded_backend_version", "common_backend_version"):
        if type(config.get(field)) is not int or config[field] < 1:
            raise CheckpointError(f"{path}: {field} must be a positive integer, got {config.get(field)!r}")


def load_sharded(sharded_state_dict, directory, strict=None):
    """``dist_checkpointing.load`` through the safe reader; every failure is one ``CheckpointError`` line."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: missing")
    check_backend_config(directory)
    kwargs = {} if strict is None else {"strict": strict}
    try:
        return dist_checkpointing.load(sharded_state_dict, str(directory),
                                       sharded_strategy=SafeTorchDistLoadStrategy(),
                                       common_strategy=SafeCommonLoadStrategy(), **kwargs)
    except CheckpointException as e:  # DCP wraps each rank's failure; ours stay readable
        raise _first_failure(e, directory) from None
    except CheckpointError:
        raise
    except (CheckpointingException, RuntimeError, KeyError, ValueError, OSError, EOFError) as e:
        raise CheckpointError(f"{directory}: cannot load ({_short(e)})") from None


def _first_failure(err: CheckpointException, directory: Path) -> CheckpointError:
    for _rank, (exc, _trace) in sorted(err.failures.items()):
        if isinstance(exc, CheckpointError):
            return exc
        return CheckpointError(f"{directory}: cannot load ({_short(exc)})")
    return CheckpointError(f"{directory}: cannot load")
