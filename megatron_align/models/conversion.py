"""What every checkpoint converter (Hugging Face, NeMo) does in-process: a single TP=1 process, the model
built at TP=1, a full state dict copied into it with names and shapes checked, the output directory guarded.

Each converter passes its own error class (``HFConversionError``, ``NemoFormatError``) and the name of the
file whose config implied the shapes, so failures read in its terms.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from pathlib import Path

import torch

from megatron_align.config.model import ModelConfig
from megatron_align.models import spec_names


@contextlib.contextmanager
def single_process_tp1(seed: int, error: type[Exception] = RuntimeError):
    """TP=1/PP=1 parallel state for the conversion; torn down afterwards only if this call set it up."""
    from megatron_align.distributed import shutdown, start

    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        raise error("conversion runs in a single process; launch it without torchrun/srun")
    owned = not torch.distributed.is_initialized()
    start(1, 1, seed=seed)
    try:
        yield
    finally:
        if owned:
            shutdown()


def tp1(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` laid out on one process (the converters build the whole model there)."""
    return dataclasses.replace(cfg, tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                               sequence_parallel=False)


def load_full_state(model, state: Mapping[str, torch.Tensor], config_file: str,
                    error: type[Exception] = RuntimeError) -> None:
    """Copy a full (TP=1) state dict into ``model``, checking names and shapes; the names are the model's own
    (``spec_names.match_names`` renames local-spec / TE norm names)."""
    own = model.state_dict()
    for name, tensor in state.items():
        if name in own and tuple(own[name].shape) != tuple(tensor.shape):
            raise error(f"tensor {name}: checkpoint shape {tuple(tensor.shape)} but {config_file} implies "
                        f"{tuple(own[name].shape)}; {config_file} and the weights disagree")
    missing, unexpected = model.load_state_dict(dict(state), strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise error(f"the weights do not fit the model {config_file} describes: missing {missing[:5]}, "
                    f"unexpected {unexpected[:5]}")


def check_layout(cfg: ModelConfig, tp: int, pp: int, error: type[Exception] = ValueError) -> None:
    """``tp``/``pp`` (the layout recorded in the output) fit the architecture."""
    if tp < 1 or pp < 1:
        raise error(f"tp={tp}, pp={pp}: both must be >= 1")
    if cfg.num_attention_heads % tp or cfg.query_groups() % tp:
        raise error(f"tp={tp} must divide num_attention_heads={cfg.num_attention_heads} and "
                    f"num_query_groups={cfg.query_groups()}")
    if cfg.num_layers % pp:
        raise error(f"pp={pp} must divide num_layers={cfg.num_layers}")


def prepare_out(out_dir: Path, overwrite: bool, error: type[Exception] = ValueError) -> None:
    """Refuse to write into a non-empty ``out_dir`` unless ``overwrite``."""
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise error(f"{out_dir}: exists and is not empty; choose a new directory or pass --overwrite")


def save_converted(cfg: ModelConfig, state: Mapping[str, torch.Tensor], out_dir: Path, *, tp: int, pp: int,
                   precision, seed: int, tokenizer_dir, config_file: str, error: type[Exception],
                   kind: str = "gpt") -> Path:
    """Build the ``kind`` (``gpt`` / ``reward``) model at TP=1, copy ``state`` in, save a checkpoint that
    records ``tp``/``pp`` as its layout (the weights reshard to any layout on load)."""
    from megatron_align.models.checkpoint import save_checkpoint
    from megatron_align.models.gpt import build_gpt_model

    with single_process_tp1(seed, error):
        if kind == "reward":
            from megatron_align.models.reward import build_reward_model

            model = build_reward_model(tp1(cfg), precision=precision)
        else:
            model = build_gpt_model(tp1(cfg), precision=precision)
        load_full_state(model, spec_names.match_names(state, model.state_dict().keys()), config_file, error)
        saved = dataclasses.replace(cfg, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
        return Path(save_checkpoint(out_dir, model, saved, tokenizer_dir=tokenizer_dir))
