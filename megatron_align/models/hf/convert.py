"""End-to-end Hugging Face import/export: an HF model directory <-> a megatron_align checkpoint directory.

``import_hf(hf_dir, out_dir)`` reads ``config.json`` and the safetensors weights (one ``model.safetensors`` or
shards listed in ``model.safetensors.index.json``), maps them to megatron names (``config_map``,
``weights_llama`` / ``weights_gpt2``), builds the GPTModel at TP=1 in this process, loads the tensors and
writes a checkpoint with ``save_checkpoint`` (which reshards to any TP/PP on load), the tokenizer files under
``tokenizer/``.

``export_hf(ckpt_dir, out_dir)`` does the reverse: it builds the model at TP=1, loads the checkpoint, maps the
weights back and writes ``config.json``, ``model.safetensors`` (sharded above ``max_shard_bytes``) and the
tokenizer files, so that ``transformers.AutoModelForCausalLM.from_pretrained(out_dir)`` loads it.

Both run in a single process (``distributed.start(1, 1)`` when nothing is initialised yet) and never unpickle:
``pytorch_model.bin`` checkpoints are refused. Output directories are written as ``<out>.incomplete`` and
renamed into place when complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import torch

from megatron_align.config.model import ModelConfig
from megatron_align.models import spec_names
from megatron_align.models.conversion import (
    check_layout,
    prepare_out,
    save_converted,
    single_process_tp1,
    tp1,
)
from megatron_align.models.hf import config_map, weights_gpt2, weights_llama
from megatron_align.models.hf.errors import HFConversionError

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)
"""Files copied between an HF directory and a checkpoint's ``tokenizer/`` (whichever exist)."""

EXPORT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


# ------------------------------------------------------------------------------------------------------------
# HF directory reading / writing (no megatron needed)
# ------------------------------------------------------------------------------------------------------------
def read_hf_config(hf_dir: str | os.PathLike) -> dict:
    """``config.json`` of an HF model directory as a dict; one-line errors for a missing or broken file."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise HFConversionError(f"{hf_dir}: not a directory; give a Hugging Face model directory")
    path = hf_dir / CONFIG_FILE
    if not path.is_file():
        raise HFConversionError(f"{path}: not found; a Hugging Face model directory holds config.json")
    try:
        hf = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HFConversionError(f"{path}: unreadable JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(hf, dict):
        raise HFConversionError(f"{path}: expected a JSON object")
    return hf


def _weight_files(hf_dir: Path) -> list[Path]:
    single, index = hf_dir / SAFETENSORS_FILE, hf_dir / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise HFConversionError(
                f"{index}: unreadable ({type(exc).__name__}); expected a 'weight_map'"
            ) from None
        files = [hf_dir / name for name in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise HFConversionError(f"{missing[0]}: listed in {index.name} but not found")
        return files
    if single.is_file():
        return [single]
    if any(hf_dir.glob("pytorch_model*.bin")):
        raise HFConversionError(
            f"{hf_dir}: only pickle weights (pytorch_model*.bin); re-save them as safetensors "
            "(model.save_pretrained(dir, safe_serialization=True)); pickles are never loaded here"
        )
    raise HFConversionError(f"{hf_dir}: no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX} found")


def read_hf_state_dict(hf_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of an HF directory's safetensors file(s), by name, on CPU."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in _weight_files(Path(hf_dir)):
        part = load_file(str(path), device="cpu")
        clash = state.keys() & part.keys()
        if clash:
            raise HFConversionError(f"{path}: tensor {sorted(clash)[0]!r} also appears in another shard")
        state.update(part)
    return state


def write_hf_state_dict(
    state: Mapping[str, torch.Tensor],
    out_dir: str | os.PathLike,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> list[str]:
    """Write ``state`` as ``model.safetensors``, or as shards plus ``model.safetensors.index.json``."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    names = [SAFETENSORS_FILE] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))
    ]
    for name, shard in zip(names, shards):
        # own, contiguous storage per tensor: q/k/v and gate/up come out of the maps as views of one tensor
        save_file({k: v.detach().contiguous().clone() for k, v in shard.items()}, str(out_dir / name),
                  metadata={"format": "pt"})
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": {k: name for name, shard in zip(names, shards) for k in shard},
        }
        (out_dir / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
    return names


def copy_tokenizer_files(src_dir: str | os.PathLike, dst_dir: str | os.PathLike) -> list[str]:
    """Copy whichever of ``TOKENIZER_FILES`` exist from ``src_dir`` into ``dst_dir``; returns their names."""
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    copied = []
    for name in TOKENIZER_FILES:
        if (src_dir / name).is_file():
            dst_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src_dir / name, dst_dir / name)
            copied.append(name)
    return copied


# ------------------------------------------------------------------------------------------------------------
# pure state-dict conversion (TP=1, local-spec names)
# ------------------------------------------------------------------------------------------------------------
def _weights_module(model_type: str):
    return weights_gpt2 if config_map.family(model_type) == "gpt2" else weights_llama


def hf_to_megatron_state(
    hf_state: Mapping[str, torch.Tensor], cfg: ModelConfig, model_type: str
) -> dict[str, torch.Tensor]:
    """HF state dict -> full megatron state dict (local-spec names) for ``model_type``."""
    return _weights_module(model_type).hf_to_megatron(hf_state, cfg)


def megatron_to_hf_state(
    mc_state: Mapping[str, torch.Tensor], cfg: ModelConfig, model_type: str
) -> dict[str, torch.Tensor]:
    """Full megatron state dict (local or TE names) -> HF state dict for ``model_type``."""
    local = {spec_names.rename_norms(k, "local"): v for k, v in mc_state.items()}
    return _weights_module(model_type).megatron_to_hf(local, cfg)


# ------------------------------------------------------------------------------------------------------------
# in-process megatron
# ------------------------------------------------------------------------------------------------------------
def import_hf(
    hf_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    tp: int = 1,
    pp: int = 1,
    precision="32",
    overwrite: bool = False,
    seed: int = 1234,
) -> Path:
    """Convert an HF model directory into a megatron_align checkpoint; returns the checkpoint directory.

    ``tp``/``pp`` are recorded as the checkpoint's default layout (the weights reshard to any layout on load);
    ``precision`` (32 | bf16 | 16) is the dtype the weights are stored in.
    """
    from megatron_align.models.gpt import precision_dtype

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    hf = read_hf_config(hf_dir)
    cfg = config_map.model_config_from_hf(hf, source=str(hf_dir / CONFIG_FILE))
    model_type = hf["model_type"]
    check_layout(cfg, tp, pp, HFConversionError)
    precision_dtype(precision)  # validate before the slow part
    prepare_out(out_dir, overwrite, HFConversionError)
    hf_state = read_hf_state_dict(hf_dir)
    mc_state = hf_to_megatron_state(hf_state, cfg, model_type)
    del hf_state

    with tempfile.TemporaryDirectory(prefix="hf_tokenizer_") as staging:
        copied = copy_tokenizer_files(hf_dir, staging)
        if "tokenizer.json" in copied:
            cfg.tokenizer.library = "huggingface"
        elif "tokenizer.model" in copied:
            cfg.tokenizer.library = "sentencepiece"
        if not copied:
            logger.warning("%s: no tokenizer files found; the checkpoint will have no tokenizer/", hf_dir)
        elif not {"tokenizer.json", "tokenizer.model"} & set(copied):
            logger.warning("%s: neither tokenizer.json nor tokenizer.model; copied %s as they are",
                           hf_dir, copied)
        cfg.tokenizer.model = None  # filled from the checkpoint's tokenizer/ when restoring
        cfg.tokenizer.type = hf.get("_name_or_path") or None
        path = save_converted(cfg, mc_state, out_dir, tp=tp, pp=pp, precision=precision, seed=seed,
                              tokenizer_dir=staging if copied else None, config_file=CONFIG_FILE,
                              error=HFConversionError)
    logger.info("imported %s (%s) into %s", hf_dir, model_type, path)
    return Path(path)


def _token_ids(tokenizer_dir: Path) -> dict:
    """bos/eos/pad ids from the checkpoint's tokenizer, for config.json; empty when it cannot be read."""
    if not tokenizer_dir.is_dir():
        return {}
    try:
        from megatron_align.tokenizers.loading import load_tokenizer_from_dir

        tok = load_tokenizer_from_dir(str(tokenizer_dir))
    except Exception as exc:  # noqa: BLE001 - the ids are a convenience; the export is valid without them
        logger.warning("%s: tokenizer unreadable (%s); config.json gets no bos/eos ids", tokenizer_dir, exc)
        return {}
    return {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id,
            "pad_token_id": tok.pad_id if tok.has_pad_token else None}


def export_hf(
    ckpt_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    dtype: str = "float32",
    model_type: Optional[str] = None,
    overwrite: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Convert a megatron_align checkpoint into an HF model directory; returns ``out_dir``.

    ``model_type`` (llama | mistral | qwen2 | gpt2) defaults to the one the architecture implies
    (qwen2 with QKV-only biases, gpt2 with learned positions, llama otherwise).
    """
    from megatron_align.models.checkpoint import load_checkpoint, read_model_config
    from megatron_align.models.gpt import build_gpt_model

    if dtype not in EXPORT_DTYPES:
        raise HFConversionError(f"dtype={dtype!r}: use one of {', '.join(EXPORT_DTYPES)}")
    ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
    cfg = read_model_config(ckpt_dir)
    model_type = model_type or config_map.default_model_type(cfg)
    hf_config = config_map.hf_config_from_model(cfg, model_type, dtype, _token_ids(ckpt_dir / "tokenizer"))
    prepare_out(out_dir, overwrite, HFConversionError)

    with single_process_tp1(cfg.seed, HFConversionError):
        model = build_gpt_model(tp1(cfg), precision="32")
        load_checkpoint(ckpt_dir, model)
        mc_state = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
        del model
    hf_state = megatron_to_hf_state(mc_state, cfg, model_type)
    del mc_state
    hf_state = {k: v.to(EXPORT_DTYPES[dtype]) for k, v in hf_state.items()}

    tmp = out_dir.with_name(out_dir.name + ".incomplete")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    files = write_hf_state_dict(hf_state, tmp, max_shard_bytes)
    copy_tokenizer_files(ckpt_dir / "tokenizer", tmp)
    (tmp / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    logger.info("exported %s as %s (%s, %s) into %s", ckpt_dir, model_type, dtype, ", ".join(files), out_dir)
    return out_dir
