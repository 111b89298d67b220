"""What a checkpoint named by ``model.restore_from_path`` decides for a stage, and what it forbids.

``merge_architecture``: the checkpoint's ``model_config.yaml`` decides the architecture (a key set otherwise
on the command line is named as ignored); the command line decides layout and training. ``check_context``: the
training rows must fit the restored model's context. ``read_model_config`` reads a checkpoint's
``model_config.yaml`` (OmegaConf's YAML loader: no Python tags; one-line errors), ``restored_model_config``
also says when a directory is not a megatron_align checkpoint at all.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from omegaconf import OmegaConf

from megatron_align.config.data import DataConfig
from megatron_align.config.errors import CheckpointError, ConfigError
from megatron_align.config.model import ModelConfig

logger = logging.getLogger(__name__)


def restored_model_config(path: str, key: str = "model.restore_from_path") -> ModelConfig:
    """The ``ModelConfig`` saved in the checkpoint directory ``path`` that the config key ``key`` names."""
    if not (Path(path) / "model_config.yaml").is_file():
        raise ConfigError(f"{key}={path}: not a megatron_align checkpoint (no model_config.yaml); convert HF "
                          "weights with `megatron-align convert --from-hf`", key=key)
    return read_model_config(path)


def read_model_config(ckpt: str | os.PathLike) -> ModelConfig:
    """The ``model.*`` section stored in a checkpoint directory (stage-only keys written by older versions,
    such as SFT's ``answer_only_loss``, are ignored)."""
    path = Path(ckpt) / "model_config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; {ckpt} is not a megatron_align checkpoint")
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as e:  # noqa: BLE001 - yaml and OmegaConf raise many types; every one is "bad file"
        raise CheckpointError(f"{path}: not a plain YAML mapping ({_one_line(e)})") from None
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{path}: expected a mapping of model.* keys")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    extra = sorted(set(loaded) - known)
    if extra:
        logger.info("%s: ignoring keys that are not model architecture: %s", path, ", ".join(map(str, extra)))
        loaded = {k: v for k, v in loaded.items() if k in known}
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), loaded))
    except Exception as e:  # noqa: BLE001 - OmegaConf's validation errors: a wrong type or value in the file
        raise CheckpointError(f"{path}: {_one_line(e)}") from None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:240]}"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:240]}"


def merge_architecture(requested: ModelConfig, restored: ModelConfig, source: str = "the checkpoint",
                        ) -> ModelConfig:
    """The restored checkpoint decides the architecture; the command line decides layout and training. An
    architecture key the user set to something else is named in one warning line (it is not used)."""
    keep = {f.name for f in dataclasses.fields(ModelConfig)} - {
        "tensor_model_parallel_size", "pipeline_model_parallel_size", "sequence_parallel",
        "restore_from_path", "optim", "data", "micro_batch_size", "global_batch_size", "hidden_dropout",
        "attention_dropout", "seed", "megatron_amp_O2", "activations_checkpoint_granularity",
        "activations_checkpoint_method", "activations_checkpoint_num_layers"}
    defaults = type(requested)()
    ignored = []
    for k in sorted(keep):
        asked, saved = getattr(requested, k), getattr(restored, k)
        if asked != getattr(defaults, k) and asked != saved:
            ignored.append(f"model.{k}={asked!r} (checkpoint: {saved!r})")
    if ignored:
        logger.warning("ignored: %s: the architecture comes from %s/model_config.yaml", "; ".join(ignored),
                       source)
    return dataclasses.replace(requested, **{k: getattr(restored, k) for k in keep})


def check_context(data: DataConfig, model_cfg: ModelConfig, source: str) -> None:
    """Training rows must fit the restored model's context (its position table and training length)."""
    context = model_cfg.context_length()
    for split in ("train_ds", "validation_ds"):
        ds = getattr(data, split)
        length = ds.max_seq_length
        if length > context and (split == "train_ds" or ds.file_path):  # an unset validation split is unused
            key = f"model.data.{split}.max_seq_length"
            raise ConfigError(f"{key}={length} is longer than the context of {context} tokens of {source} "
                              f"(encoder_seq_length={model_cfg.encoder_seq_length}, max_position_embeddings="
                              f"{model_cfg.max_position_embeddings}): use at most {context}", key=key)
