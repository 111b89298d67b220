"""Front doors that build an ``AlignTokenizer``: by library (``model.tokenizer.library``) or from a directory.

Directory detection, first match wins:
1. ``megatron_align_tokenizer.json`` (written by ``AlignTokenizer.save``) names the library;
2. ``tokenizer.json`` -> huggingface (an HF model directory often also holds a ``tokenizer.model``; the
   ``tokenizer.json`` + ``tokenizer_config.json`` pair is preferred because it carries special tokens and the
   chat template);
3. ``tokenizer.model`` -> sentencepiece (a NeMo checkpoint's extracted tokenizer).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable

from megatron_align.tokenizers.base import METADATA_FILE, AlignTokenizer, TokenizerError
from megatron_align.tokenizers.hf_tokenizer import TOKENIZER_FILE, HFTokenizer
from megatron_align.tokenizers.sentencepiece_tokenizer import MODEL_FILE, SentencePieceTokenizer

logger = logging.getLogger(__name__)

LIBRARIES: dict[str, Callable[..., AlignTokenizer]] = {
    "sentencepiece": SentencePieceTokenizer,
    "huggingface": HFTokenizer,
}
ALIASES = {"hf": "huggingface", "spm": "sentencepiece"}


def load_tokenizer(library: str, path: str, **special_tokens: str) -> AlignTokenizer:
    """Load ``path`` (a file, or a directory holding it) with ``library``: sentencepiece | huggingface.

    ``special_tokens`` (``bos_token=``, ``eos_token=``, ``pad_token=``, ``unk_token=``) override the side
    files of an HF tokenizer; a sentencepiece model always uses the ids its file declares.
    """
    name = ALIASES.get(str(library).lower(), str(library).lower())
    if name not in LIBRARIES:
        raise TokenizerError(
            f"{path}: unknown tokenizer library {library!r}; use one of {', '.join(sorted(LIBRARIES))}"
        )
    if not os.path.exists(path):
        raise TokenizerError(f"{path}: tokenizer path not found")
    if special_tokens and name == "sentencepiece":
        raise TokenizerError(
            f"{path}: special token overrides {sorted(special_tokens)} apply only to huggingface"
        )
    tokenizer = LIBRARIES[name](path, **special_tokens)
    fingerprint = _fingerprint(name, tokenizer, special_tokens)
    # Each stage of a run loads its checkpoint's copy of the same tokenizer: say it once per process.
    logger.log(logging.DEBUG if fingerprint in _announced else logging.INFO, "loaded %r", tokenizer)
    _announced.add(fingerprint)
    return tokenizer


_announced: set[str] = set()


def _fingerprint(library: str, tokenizer: AlignTokenizer, special_tokens: dict) -> str:
    """A digest of the file the tokenizer read (``tokenizer.path``: a copy of the same tokenizer elsewhere,
    with or without our ``megatron_align_tokenizer.json`` beside it, has the same one) and of the ids its side
    files set (the repr without the path)."""
    digest = hashlib.sha256(f"{library}\0{sorted(special_tokens.items())}\0".encode())
    digest.update(repr(tokenizer).replace(repr(tokenizer.path), "").encode())
    with open(tokenizer.path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def detect_library(directory: str) -> str:
    """The library that reads ``directory`` (see the module docstring for the order)."""
    if not os.path.isdir(directory):
        raise TokenizerError(f"{directory}: tokenizer directory not found")
    meta = os.path.join(directory, METADATA_FILE)
    if os.path.isfile(meta):
        try:
            with open(meta) as f:
                library = json.load(f)["library"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TokenizerError(
                f'{meta}: unreadable ({type(exc).__name__}); expected {{"library": ...}}'
            ) from None
        if ALIASES.get(str(library).lower(), str(library).lower()) not in LIBRARIES:
            raise TokenizerError(
                f"{meta}: unknown tokenizer library {library!r}; use one of {', '.join(LIBRARIES)}"
            )
        return library
    if os.path.isfile(os.path.join(directory, TOKENIZER_FILE)):
        return "huggingface"
    if os.path.isfile(os.path.join(directory, MODEL_FILE)):
        return "sentencepiece"
    raise TokenizerError(f"{directory}: no tokenizer found (expected {TOKENIZER_FILE} or {MODEL_FILE})")


def load_tokenizer_from_dir(directory: str, **special_tokens: str) -> AlignTokenizer:
    """Load the tokenizer saved in ``directory``, detecting its library."""
    return load_tokenizer(detect_library(directory), directory, **special_tokens)
