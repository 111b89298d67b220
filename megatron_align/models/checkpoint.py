"""The checkpoint directory format: save at any TP/PP, load at any other, never half-written, never unpickled.

Layout of one checkpoint directory::

    <ckpt>/
      metadata.json        format version, layout at save time, step, model kind (``gpt`` / ``reward``);
                           written last: its presence marks "complete"
      model_config.yaml    the ``model.*`` section the weights belong to (OmegaConf YAML, no Python objects)
      tokenizer/           the tokenizer files (tokenizer.model or tokenizer.json + tokenizer_config.json
                           ...)
      weights/             megatron dist_checkpointing (torch_dist): the sharded model state, TP/PP-agnostic
                           keys
      optimizer/           (training only) dist_checkpointing of the optimizer state
      train_state.json     (training only) step, consumed samples, scheduler, data position: plain JSON
      rng/rank_00000.pt    (training only) per-rank RNG states: tensors and numbers only (``weights_only``
                           load)

Atomicity: every rank writes into ``<ckpt>.incomplete``; after a barrier rank 0 writes ``metadata.json`` and
renames the directory into place. A writer killed at any point leaves at most a ``*.incomplete`` directory,
which ``is_complete_checkpoint`` and ``latest_checkpoint`` never accept.

Safety: ``weights/`` and ``optimizer/`` are read only through ``models/dcp_reader.load_sharded``, which
decodes every pickle in them (index, common state, byte items) through an allow-list and refuses anything else
with one line; ``model_config.yaml`` is read with OmegaConf's YAML loader (no Python tags), the rest is JSON
or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import random
import re
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from megatron_align.config.errors import CheckpointError
from megatron_align.config.model import ModelConfig
from megatron_align.config.restore import read_model_config  # noqa: F401 - part of this module's API

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
INCOMPLETE_SUFFIX = ".incomplete"
_METADATA = "metadata.json"


# ----------------------------------------------------------------------------------------------------------
# helpers over torch.distributed (work in a single process without a process group too)
# ----------------------------------------------------------------------------------------------------------
def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _unwrap(model):
    """A module, a list of one module, or a DDP/Float16 wrapper -> the megatron module itself."""
    if isinstance(model, (list, tuple)):
        if len(model) != 1:
            raise CheckpointError("virtual pipeline stages (more than one model chunk) are not supported yet")
        model = model[0]
    while hasattr(model, "module") and not hasattr(model, "sharded_state_dict"):
        model = model.module
    while hasattr(model, "module") and hasattr(model.module, "sharded_state_dict"):
        model = model.module
    return model


# ----------------------------------------------------------------------------------------------------------
# RNG state (tensors and numbers only)
# ----------------------------------------------------------------------------------------------------------
def capture_rng_state() -> dict:
    """Python, numpy, torch CPU/CUDA and megatron tracker RNG states of this rank."""
    from megatron.core.tensor_parallel import random as mrandom

    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
        "tracker": {},
    }
    tracker = mrandom._CUDA_RNG_STATE_TRACKER
    if tracker is not None and tracker.is_initialized():
        state["tracker"] = {k: v.clone() for k, v in tracker.get_states().items()}
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of ``capture_rng_state``."""
    from megatron.core.tensor_parallel import random as mrandom

    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("tracker") and mrandom._CUDA_RNG_STATE_TRACKER is not None:
        mrandom._CUDA_RNG_STATE_TRACKER.set_states(dict(state["tracker"]))
    if "cuda" in state and torch.cuda.is_available() and torch.cuda.device_count() > 0:
        torch.cuda.set_rng_state(state["cuda"])


# ----------------------------------------------------------------------------------------------------------
# model config
# ----------------------------------------------------------------------------------------------------------
def base_model_config(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` as a plain ``ModelConfig``: a stage's model section (``SFTModelConfig``, ``RMModelConfig``)
    minus its stage-only keys, with a dataclass ``data`` section turned into a dict."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ModelConfig)}
    if dataclasses.is_dataclass(values["data"]):
        values["data"] = dataclasses.asdict(values["data"])
    return ModelConfig(**values)


def write_model_config(cfg: ModelConfig, path: Path) -> None:
    """Save the model section as YAML (no Python objects); a stage's extra keys are left out so that every
    reader can load it as a ``ModelConfig``."""
    OmegaConf.save(OmegaConf.structured(base_model_config(cfg)), str(path))


def checkpoint_kind(ckpt: str | os.PathLike) -> str:
    """``"reward"`` for a reward model checkpoint (``num_attributes`` outputs, see ``read_model_config``),
    ``"gpt"`` for a language model (also for checkpoints written before the kind was recorded)."""
    return str(read_metadata(ckpt).get("model_kind", "gpt"))


# ----------------------------------------------------------------------------------------------------------
# completeness
# ----------------------------------------------------------------------------------------------------------
def is_complete_checkpoint(ckpt: str | os.PathLike) -> bool:
    """A directory whose writer finished: not ``*.incomplete`` and holding a complete ``metadata.json``."""
    ckpt = Path(ckpt)
    if ckpt.name.endswith(INCOMPLETE_SUFFIX) or not (ckpt / _METADATA).is_file():
        return False
    try:
        meta = json.loads((ckpt / _METADATA).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return bool(meta.get("complete")) and (ckpt / "weights").is_dir()


def read_metadata(ckpt: str | os.PathLike) -> dict:
    """``metadata.json`` of a complete checkpoint; a clear error otherwise."""
    ckpt = Path(ckpt)
    if not ckpt.exists():
        raise CheckpointError(f"{ckpt}: no such checkpoint directory")
    if not is_complete_checkpoint(ckpt):
        raise CheckpointError(
            f"{ckpt}: incomplete checkpoint (its writer did not finish); use an earlier one or delete it"
        )
    return json.loads((ckpt / _METADATA).read_text())


_STEP_RE = re.compile(r"step[=_-]?(\d+)")


def latest_checkpoint(run_dir: str | os.PathLike) -> Optional[Path]:
    """The complete checkpoint with the highest step under ``run_dir`` (or None); incomplete ones are
    skipped."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    best, best_key = None, None
    for child in run_dir.iterdir():
        # ``<name>.nemo`` beside the checkpoints is the stage's final copy or link, not a resume point
        if child.name.endswith(".nemo") or not child.is_dir() or not is_complete_checkpoint(child):
            continue
        meta = json.loads((child / _METADATA).read_text())
        key = (int(meta.get("step", -1)), meta.get("saved_at", 0.0))
        if best_key is None or key > best_key:
            best, best_key = child, key
    return best


# ----------------------------------------------------------------------------------------------------------
# save
# ----------------------------------------------------------------------------------------------------------
# The distributed optimizer's state in megatron-core 0.16's canonical per-parameter layout, so that it can be
# loaded at another TP/PP/DP size. ("fully_sharded_model_space", the older name for this, fails in 0.16 with
# "ShardedTensor.flattened_range is not supported".)
_OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def _ensure_optimizer_state(optimizer) -> None:
    """Give a fresh distributed optimizer its (lazily created) state before it is asked for a loading
    template.

    megatron-core 0.16's ``DistributedOptimizer.sharded_state_dict(is_loading=True)`` calls ``state_dict()``,
    which asserts on the per-parameter ``step`` of torch's Adam; without TE/apex that state only exists after
    a first step. We take megatron's own dummy step (zero gradients) at learning rate 0, so neither the
    weights nor (decoupled) weight decay move; the loaded state then overwrites the dummy one.
    """
    for opt in getattr(optimizer, "chained_optimizers", None) or [optimizer]:
        inner = getattr(opt, "optimizer", None)
        if inner is None or len(inner.state) > 0:
            continue
        lrs = [group["lr"] for group in inner.param_groups]
        for group in inner.param_groups:
            group["lr"] = 0.0
        try:
            if hasattr(opt, "_init_optimizer_states_with_dummy_values"):
                opt._init_optimizer_states_with_dummy_values()
            else:  # megatron's FP32 / Float16 wrappers around a torch optimizer: one zero-gradient step
                params = [p for group in inner.param_groups for p in group["params"]]
                saved = [p.grad for p in params]
                for p in params:
                    p.grad = torch.zeros_like(p)
                inner.step()
                for p, g in zip(params, saved):
                    p.grad = g
        finally:
            for group, lr in zip(inner.param_groups, lrs):
                group["lr"] = lr


def optimizer_has_state(optimizer) -> bool:
    """Whether the optimizer has taken a step (holds moments worth saving)."""
    return any(len(getattr(opt, "optimizer", opt).state) > 0
               for opt in getattr(optimizer, "chained_optimizers", None) or [optimizer])


def _optimizer_sharded_state(optimizer, model_ssd, is_loading: bool):
    if is_loading:
        _ensure_optimizer_state(optimizer)
    try:
        return optimizer.sharded_state_dict(model_ssd, is_loading=is_loading, metadata=dict(_OPTIM_METADATA))
    except TypeError:
        return optimizer.sharded_state_dict(model_ssd, is_loading=is_loading)


def _pause_for_tests() -> None:
    # Lets the crash test kill a writer at a known point (between the shards and the commit).
    pause = float(os.environ.get("MEGATRON_ALIGN_TEST_PAUSE_BEFORE_COMMIT", "0") or 0)
    if pause > 0:
        logger.warning("pausing %.1fs before committing the checkpoint (test hook)", pause)
        time.sleep(pause)


def save_checkpoint(
    path: str | os.PathLike,
    model,
    model_cfg: ModelConfig,
    tokenizer_dir: Optional[str | os.PathLike] = None,
    optimizer=None,
    train_state: Optional[dict] = None,
    save_rng: bool = False,
) -> Path:
    """Save on every rank (collective); returns the final directory once it is complete."""
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps

    final = Path(path).absolute()
    tmp = final.with_name(final.name + INCOMPLETE_SUFFIX)
    rank = _rank()
    if optimizer is not None and not optimizer_has_state(optimizer):
        # Saved before the first update: there are no moments yet, and a resume starts the optimizer fresh.
        logger.info("optimizer has not stepped yet: %s holds no optimizer state", final.name)
        optimizer = None
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "weights").mkdir(parents=True)
        if optimizer is not None:
            (tmp / "optimizer").mkdir()
        if save_rng:
            (tmp / "rng").mkdir()
    _barrier()

    module = _unwrap(model)
    model_ssd = module.sharded_state_dict()
    dist_checkpointing.save(model_ssd, str(tmp / "weights"))
    if optimizer is not None:
        optim_ssd = _optimizer_sharded_state(optimizer, module.sharded_state_dict(), is_loading=False)
        dist_checkpointing.save(optim_ssd, str(tmp / "optimizer"))
    if save_rng:
        torch.save(capture_rng_state(), tmp / "rng" / f"rank_{rank:05d}.pt")
    _barrier()

    if rank == 0:
        write_model_config(model_cfg, tmp / "model_config.yaml")
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, tmp / "tokenizer")
        if train_state is not None:
            (tmp / "train_state.json").write_text(json.dumps(train_state, indent=1, sort_keys=True))
        _pause_for_tests()
        meta = {
            "format": "megatron_align",
            "format_version": FORMAT_VERSION,
            "complete": True,
            "step": int((train_state or {}).get("step", 0)),
            "saved_at": time.time(),
            "tensor_model_parallel_size": ps.get_tensor_model_parallel_world_size(),
            "pipeline_model_parallel_size": ps.get_pipeline_model_parallel_world_size(),
            "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
            "has_optimizer": optimizer is not None,
            "has_rng": save_rng,
            # what the weights are: "gpt" (language model) or "reward" (GPTRewardModel: rm_head, no LM head)
            "model_kind": getattr(module, "checkpoint_kind", "gpt"),
        }
        with open(tmp / _METADATA, "w") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        old = None
        if final.exists():
            old = final.with_name(f"{final.name}.old-{int(time.time() * 1000)}")
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("saved checkpoint %s", final)
    _barrier()
    return final


# ----------------------------------------------------------------------------------------------------------
# load
# ----------------------------------------------------------------------------------------------------------
def _load_one_optimizer(opt, state: dict) -> None:
    if state.get("param_state_sharding_type") != "fully_reshardable" or not hasattr(
        opt, "load_parameter_state_from_fully_reshardable"
    ):
        opt.load_state_dict(state)
        return
    # megatron-core 0.16 + torch's Adam (no TE/apex): ``_set_main_param_and_optimizer_states`` copies every
    # key of the live per-parameter state, including torch's ``step``, which the fully-reshardable format does
    # not carry (it keeps the step in the param groups) -> KeyError. So: param groups and step first, then the
    # per-parameter tensors with ``step`` set aside for the duration.
    state = dict(state)
    param_state = state.pop("param_state")
    state.pop("param_state_sharding_type")
    opt.load_state_dict(state)
    live = opt.optimizer.state
    steps = {p: s.pop("step") for p, s in live.items() if "step" in s}
    try:
        opt.load_parameter_state_from_fully_reshardable(param_state)
    finally:
        # megatron hands every parameter the same ``step`` tensor; torch's Adam increments each parameter's
        # step in place, so a shared one would advance once per parameter per step (wrong bias correction).
        for p, step in steps.items():
            live[p]["step"] = step.clone()


def _load_optimizer_state(optimizer, state) -> None:
    """``optimizer.load_state_dict(state)`` for megatron's (chained / distributed) optimizers."""
    children = getattr(optimizer, "chained_optimizers", None)
    if not children:
        _load_one_optimizer(optimizer, state)
    elif len(children) == 1:
        _load_one_optimizer(children[0], state)
    else:
        for child, child_state in zip(children, (v for _, v in sorted(state.items()))):
            _load_one_optimizer(child, child_state)
        optimizer._synchronize_steps()


def _load_rng_file(path: Path) -> dict:
    """One rank's RNG states (tensors, numbers, lists: ``weights_only``); anything else is one line."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refusing to unpickle it ({' '.join(str(e).split())[:160]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable RNG state ({type(e).__name__})") from None
    if not isinstance(state, dict) or not {"python", "numpy", "torch"} <= set(state):
        raise CheckpointError(f"{path}: not an RNG state file")
    return state


def load_checkpoint(
    path: str | os.PathLike,
    model,
    optimizer=None,
    load_rng: bool = False,
    strict: bool = True,
) -> dict:
    """Load weights (and optionally optimizer / RNG) into this rank's model at its current TP/PP layout.

    Returns the checkpoint's ``train_state`` (empty dict for a weights-only checkpoint).
    """
    from megatron.core.dist_checkpointing.validation import StrictHandling

    from megatron_align.models.dcp_reader import load_sharded

    ckpt = Path(path)
    meta = read_metadata(ckpt)
    module = _unwrap(model)
    strictness = StrictHandling.RAISE_ALL if strict else StrictHandling.LOG_ALL
    state = load_sharded(module.sharded_state_dict(), ckpt / "weights", strict=strictness)
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if strict and missing:
        raise CheckpointError(f"{ckpt}: weights missing for {missing[:5]}")
    if optimizer is not None:
        if not meta.get("has_optimizer"):
            raise CheckpointError(f"{ckpt}: holds no optimizer state (a weights-only checkpoint)")
        optim_ssd = _optimizer_sharded_state(optimizer, module.sharded_state_dict(), is_loading=True)
        _load_optimizer_state(optimizer, load_sharded(optim_ssd, ckpt / "optimizer"))
    if load_rng:
        rng_file = ckpt / "rng" / f"rank_{_rank():05d}.pt"
        saved_world = meta.get("world_size")
        now_world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        if rng_file.is_file() and saved_world == now_world:
            try:
                restore_rng_state(_load_rng_file(rng_file))
            except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as e:
                raise CheckpointError(f"{rng_file}: not a usable RNG state ({type(e).__name__})") from None
        else:
            logger.warning("%s: RNG state not restored (saved at world size %s, now %s)", ckpt, saved_world,
                           now_world)
    train_state_file = ckpt / "train_state.json"
    return json.loads(train_state_file.read_text()) if train_state_file.is_file() else {}
