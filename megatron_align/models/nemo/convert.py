"""``.nemo`` (NeMo 1.x mcore GPT, NeMo-Aligner reward model) <-> a megatron_align checkpoint directory.

``import_nemo(path, out_dir)``:
1. open the tarball or directory (``archive``: unsafe members refused), refuse NeMo 2.0 checkpoints and legacy
   per-rank pickles;
2. ``model_config.yaml`` -> ``ModelConfig`` (``config_map``), the tokenizer found through the config's own
   reference (``tokenizer.model: nemo:<member>``), never by guessing;
3. ``model_weights/`` (zarr or torch_dist, any saving TP/PP) -> one global tensor per stacked key
   (``weights``); ``model.`` prefix dropped, layers unstacked into ``decoder.layers.<i>.``, norm names to the
   model's spec, ``layernorm1p`` weights + 1, a reward model's unused LM head dropped;
4. the TP=1 model built here, loaded (names and shapes checked), saved by ``models.checkpoint`` (which
   reshards to any TP/PP on load).

``export_nemo(ckpt_dir, out)``: the reverse; ``out`` ending in ``.nemo`` is a tarball as NeMo writes it
(uncompressed, ``./`` member names), otherwise a directory with the same members. Weights are written with
the layers stacked under NeMo's key names, the ``_extra_state`` objects NeMo's loader requires, the tokenizer
as ``<hex>_tokenizer.model`` referenced as ``nemo:<hex>_tokenizer.model``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import torch
import yaml

from megatron_align.config.model import ModelConfig
from megatron_align.models import spec_names
from megatron_align.models.nemo import config_map
from megatron_align.models.nemo.archive import NemoArchive
from megatron_align.models.nemo.errors import NemoFormatError
from megatron_align.models.nemo.weights import EXTRA_STATE, PREFIX, read_weights, write_weights

logger = logging.getLogger(__name__)

CONFIG = "model_config.yaml"
WEIGHTS = "model_weights"
_LAYERS = "decoder.layers."
_LAYER_INDEX = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_NORM_WEIGHTS = ("layer_norm_weight", "final_layernorm.weight", "input_layernorm.weight",
                 "pre_mlp_layernorm.weight")
EXPORT_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
_TE_MODULES = ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2",
               "self_attention.core_attention")
"""The per-layer modules whose ``_extra_state`` NeMo's (Transformer Engine) model asks for; a superset is
harmless, a missing one fails NeMo 1.23's load."""


def _check_variant(nemo: NemoArchive) -> None:
    where = nemo.path
    if "context" in nemo.dirs and ("weights" in nemo.dirs or nemo.has("context/io.json")):
        raise NemoFormatError(f"{where}: a NeMo 2.0 (NeMo-Run) checkpoint (context/ + weights/); only "
                              "NeMo 1.x .nemo files are read: export it to Hugging Face with NeMo 2 and use "
                              "`megatron-align convert --from-hf`")
    if not nemo.has(CONFIG):
        raise NemoFormatError(f"{where}: no {CONFIG}; not a .nemo checkpoint")
    legacy = [n for n in nemo.names() if n.endswith("model_weights.ckpt")]
    if legacy:
        raise NemoFormatError(f"{where}: {legacy[0]}: a legacy (pickled, per-rank) .nemo from NeMo "
                              "<= 1.20; re-save it with NeMo >= 1.21 (distributed checkpoint) first: pickles "
                              "are never loaded here")
    if WEIGHTS not in nemo.dirs:
        raise NemoFormatError(f"{where}: no {WEIGHTS}/ directory")


# -- tokenizer -----------------------------------------------------------------------------------------------
def _tokenizer_member(tok: dict, nemo: NemoArchive, key: str) -> Optional[str]:
    ref = tok.get(key)
    if not ref:
        return None
    ref = str(ref)
    if ref.startswith("nemo:"):
        name = ref[len("nemo:"):]
        if not nemo.has(name):
            raise NemoFormatError(f"{nemo.path}: tokenizer.{key}={ref}: no such member in the archive")
        return name
    base = os.path.basename(ref)  # NeMo's backward-compatible lookup: the file name in the archive root
    if nemo.has(base):
        return base
    raise NemoFormatError(f"{nemo.path}: tokenizer.{key}={ref}: not packed in the archive (a path on the "
                          "machine that saved it); put the file beside the model as model.tokenizer.model")


def _copy_tokenizer(cfg: dict, nemo: NemoArchive, dest: Path) -> str:
    """The tokenizer the config names, copied to ``dest``; returns its library."""
    tok = cfg.get("tokenizer") or {}
    library = str(tok.get("library", "sentencepiece")).lower()
    dest.mkdir(parents=True)
    if library == "sentencepiece" or (library, tok.get("type")) == ("megatron", "GPTSentencePieceTokenizer"):
        member = _tokenizer_member(tok, nemo, "model")
        if member is None:
            raise NemoFormatError(f"{nemo.path}: tokenizer.model is not set (a sentencepiece tokenizer)")
        (dest / "tokenizer.model").write_bytes(nemo.read_bytes(member))
        return "sentencepiece"
    if library == "huggingface":
        src = Path(str(tok.get("type") or ""))
        if src.is_dir() and (src / "tokenizer.json").is_file():
            from megatron_align.models.hf.convert import copy_tokenizer_files

            copy_tokenizer_files(src, dest)
            return "huggingface"
        raise NemoFormatError(f"{nemo.path}: tokenizer.type={tok.get('type')}: a Hugging Face tokenizer "
                              "that is not in the archive and not a local directory with tokenizer.json "
                              "(nothing is downloaded here)")
    raise NemoFormatError(f"{nemo.path}: tokenizer.library={library} (type {tok.get('type')}): not "
                          "supported; sentencepiece and huggingface tokenizers are")


# -- weights: NeMo's stacked global tensors <-> a full TP=1 state dict ---------------------------------------
def unstack(tensors: Mapping[str, torch.Tensor], cfg: dict, kind: str, num_layers: int,
            source: str) -> dict[str, torch.Tensor]:
    """NeMo's keys -> a full (TP=1) megatron state dict with per-layer names (TE norm names kept)."""
    out: dict[str, torch.Tensor] = {}
    zero_centered = config_map.zero_centered_gamma(cfg)
    for key, t in tensors.items():
        if not key.startswith(PREFIX):
            raise NemoFormatError(f"{source}: weight {key!r} lacks NeMo's {PREFIX!r} prefix")
        name = key[len(PREFIX):]
        if ".mlp.router." in name or ".mlp.experts." in name:
            raise NemoFormatError(f"{source}: weight {key}: mixture-of-experts layers are not supported")
        if kind == "reward" and name == "output_layer.weight":
            continue  # NeMo-Aligner keeps an LM head its reward model never uses
        if zero_centered and name.endswith(_NORM_WEIGHTS):
            t = t.float() + 1.0  # layernorm1p stores gamma - 1
        if name.startswith(_LAYERS) and not _LAYER_INDEX.match(name):
            if t.shape[0] != num_layers:
                raise NemoFormatError(f"{source}: weight {key}: {t.shape[0]} stacked layers, num_layers is "
                                      f"{num_layers}")
            rest = name[len(_LAYERS):]
            for i in range(num_layers):
                out[f"{_LAYERS}{i}.{rest}"] = t[i]
        else:
            out[name] = t
    return out


def stack(state: Mapping[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """A full per-layer state dict -> NeMo's keys with the layers stacked."""
    layers: dict[str, list] = {}
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if name.endswith(EXTRA_STATE) or not isinstance(t, torch.Tensor):
            continue
        m = _LAYER_INDEX.match(name)
        if m:
            layers.setdefault(m.group(2), [None] * num_layers)[int(m.group(1))] = t
        else:
            out[PREFIX + name] = t
    for rest, per_layer in layers.items():
        if any(t is None for t in per_layer):
            raise NemoFormatError(f"decoder.layers.*.{rest}: missing for some layers")
        out[f"{PREFIX}{_LAYERS}{rest}"] = torch.stack(per_layer)
    return out


# -- import --------------------------------------------------------------------------------------------------
def import_nemo(path: str | os.PathLike, out_dir: str | os.PathLike, tp: int = 1, pp: int = 1,
                precision="32", overwrite: bool = False, seed: int = 1234) -> Path:
    """Convert a ``.nemo`` (tarball or directory) into a megatron_align checkpoint; returns its directory."""
    from megatron_align.models.conversion import check_layout, prepare_out, save_converted
    from megatron_align.models.gpt import precision_dtype
    from megatron_align.tokenizers import load_tokenizer_from_dir

    path, out_dir = Path(path), Path(out_dir)
    precision_dtype(precision)
    with NemoArchive(path) as nemo, tempfile.TemporaryDirectory(prefix="nemo_import_") as tmp:
        _check_variant(nemo)
        source = f"{path}/{CONFIG}"
        cfg = config_map.parse_model_yaml(nemo.read_text(CONFIG), source)
        kind = config_map.model_kind(cfg)
        model_cfg = config_map.model_config_from_nemo(cfg, source)
        check_layout(model_cfg, tp, pp, NemoFormatError)
        prepare_out(out_dir, overwrite, NemoFormatError)
        library = _copy_tokenizer(cfg, nemo, Path(tmp) / "tokenizer")
        tokenizer = load_tokenizer_from_dir(str(Path(tmp) / "tokenizer"))
        tensors = read_weights(nemo.extract(WEIGHTS, tmp))
        embedding = tensors.get(f"{PREFIX}embedding.word_embeddings.weight")
        if embedding is None:
            raise NemoFormatError(f"{path}: {WEIGHTS}/ has no {PREFIX}embedding.word_embeddings.weight")
        model_cfg = dataclasses.replace(model_cfg, **config_map.vocab_fields(cfg, embedding.shape[0],
                                                                            tokenizer.vocab_size))
        model_cfg.tokenizer.library, model_cfg.tokenizer.model = library, None
        state = unstack(tensors, cfg, kind, model_cfg.num_layers, str(path))
        del tensors
        out = save_converted(model_cfg, state, out_dir, tp=tp, pp=pp, precision=precision, seed=seed,
                             tokenizer_dir=Path(tmp) / "tokenizer", config_file=CONFIG, error=NemoFormatError,
                             kind=kind)
    logger.info("imported %s (%s) into %s", path, kind, out)
    return Path(out)


# -- export --------------------------------------------------------------------------------------------------
def _tokenizer_block(ckpt_dir: Path, cfg: ModelConfig, staging: Path) -> dict:
    """Copy the checkpoint's tokenizer into ``staging`` as NeMo names its artifacts; the config block."""
    tok_dir = ckpt_dir / "tokenizer"
    block = {"library": "sentencepiece", "type": None, "model": None, "vocab_file": None, "merge_file": None,
             "delimiter": None, "sentencepiece_legacy": False}
    if (tok_dir / "tokenizer.json").is_file():
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (tok_dir / name).is_file():
                shutil.copy2(tok_dir / name, staging / f"{uuid.uuid4().hex}_{name}")
        block.update(library="huggingface", type=cfg.tokenizer.type, use_fast=True)
        if not cfg.tokenizer.type:
            logger.warning("%s: a Hugging Face tokenizer without a hub name: NeMo will need tokenizer.type "
                           "set to its directory (its files are packed as artifacts)", ckpt_dir)
        return block
    if (tok_dir / "tokenizer.model").is_file():
        name = f"{uuid.uuid4().hex}_tokenizer.model"
        shutil.copy2(tok_dir / "tokenizer.model", staging / name)
        block["model"] = f"nemo:{name}"
        return block
    raise NemoFormatError(f"{ckpt_dir}: no tokenizer/ (tokenizer.model or tokenizer.json) to pack")


def export_nemo(ckpt_dir: str | os.PathLike, out: str | os.PathLike, dtype: str = "bfloat16",
                backend: str = "torch_dist", overwrite: bool = False) -> Path:
    """Write a megatron_align checkpoint as a NeMo 1.x ``.nemo`` (tarball when ``out`` ends in ``.nemo``)."""
    from megatron_align.models.checkpoint import checkpoint_kind, load_checkpoint, read_model_config
    from megatron_align.models.conversion import single_process_tp1, tp1
    from megatron_align.models.gpt import build_gpt_model

    if dtype not in EXPORT_DTYPES:
        raise NemoFormatError(f"dtype={dtype!r}: use one of {', '.join(EXPORT_DTYPES)}")
    ckpt_dir, out = Path(ckpt_dir), Path(out)
    if out.exists() and not overwrite:
        raise NemoFormatError(f"{out}: exists; choose a new path or pass --overwrite")
    cfg, kind = read_model_config(ckpt_dir), checkpoint_kind(ckpt_dir)
    with single_process_tp1(cfg.seed, NemoFormatError):
        if kind == "reward":
            from megatron_align.models.reward import build_reward_model, load_reward_weights

            model = build_reward_model(tp1(cfg), precision="32")
            load_reward_weights(ckpt_dir, model, load_head=True)
        else:
            model = build_gpt_model(tp1(cfg), precision="32")
            load_checkpoint(ckpt_dir, model)
        state = {spec_names.rename_norms(k, "te"): v.detach().clone() for k, v in model.state_dict().items()
                 if isinstance(v, torch.Tensor) and not k.endswith(EXTRA_STATE)}
        del model
    if kind == "reward":  # NeMo-Aligner's reward model keeps an (unused) LM head and asks for it on load
        state["output_layer.weight"] = state["embedding.word_embeddings.weight"].clone()
    tensors = {k: v.to(EXPORT_DTYPES[dtype]) for k, v in stack(state, cfg.num_layers).items()}
    tmp = out.with_name(out.name + ".incomplete")
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    staging = Path(tempfile.mkdtemp(prefix="nemo_export_", dir=out.parent))
    try:
        block = _tokenizer_block(ckpt_dir, cfg, staging)
        nemo_cfg = config_map.nemo_config_from_model(cfg, kind, block)
        nemo_cfg["precision"] = {"bfloat16": "bf16", "float16": 16, "float32": 32}[dtype]
        (staging / CONFIG).write_text(yaml.safe_dump(nemo_cfg, sort_keys=False))
        extra = [f"{PREFIX}{_LAYERS}{m}.{EXTRA_STATE}" for m in _TE_MODULES]
        write_weights(staging / WEIGHTS, tensors, extra, backend=backend, num_layers=cfg.num_layers)
        if out.suffix == ".nemo":
            with tarfile.open(tmp, "w:") as tar:  # NeMo's own layout: uncompressed, members under "./"
                tar.add(staging, arcname=".")
        else:
            shutil.copytree(staging, tmp)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    tmp.rename(out)
    logger.info("exported %s (%s, %s, %s) to %s", ckpt_dir, kind, dtype, backend, out)
    return out
