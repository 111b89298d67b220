"""``SentencePieceTokenizer``: ``AlignTokenizer`` over a sentencepiece ``tokenizer.model`` (NeMo, Llama-2).

bos/eos/pad/unk ids are the ones the model file declares (``pad_id`` falls back to eos when the model has
pad = -1, as Llama-2's does). User-defined symbols (NeMo's ``<extra_id_0..2>``) are matched whole inside
text by sentencepiece itself; ``add_special_tokens`` appends missing ones to the model as user-defined pieces.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import numpy as np
import sentencepiece as spm

from megatron_align.tokenizers import sp_proto
from megatron_align.tokenizers.base import METADATA_FILE, AlignTokenizer, TokenizerError

logger = logging.getLogger(__name__)

MODEL_FILE = "tokenizer.model"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class SentencePieceTokenizer(AlignTokenizer):
    """A sentencepiece model file (or a directory holding ``tokenizer.model``)."""

    library = "sentencepiece"

    def __init__(self, path: str):
        path = str(path)
        model_file = os.path.join(path, MODEL_FILE) if os.path.isdir(path) else path
        if not os.path.isfile(model_file):
            raise TokenizerError(f"{model_file}: sentencepiece model file not found")
        super().__init__(model_file)
        with open(model_file, "rb") as f:
            self._load_proto(f.read())

    def _load_proto(self, proto: bytes) -> None:
        try:
            sp = spm.SentencePieceProcessor()
            sp.LoadFromSerializedProto(proto)
            types = sp_proto.piece_types(proto)
        except (
            RuntimeError,
            OSError,
            ValueError,
            IndexError,
        ) as exc:  # library, and sp_proto on corrupt bytes
            raise TokenizerError(
                f"{self.path}: not a readable sentencepiece model ({_first_line(exc)})"
            ) from None
        if sp.get_piece_size() != len(types):
            raise TokenizerError(
                f"{self.path}: not a readable sentencepiece model (vocabulary size mismatch)"
            )
        self._sp, self._proto = sp, bytes(proto)
        self._piece_ids = {piece: i for i, (piece, _) in enumerate(types)}
        kinds = (sp_proto.UNKNOWN, sp_proto.CONTROL, sp_proto.USER_DEFINED)
        self._special = {piece: i for i, (piece, kind) in enumerate(types) if kind in kinds}
        if sp.eos_id() < 0:
            raise TokenizerError(f"{self.path}: sentencepiece model defines no eos token (eos_id = -1)")

    # ---------------------------------------- vocabulary
    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def token_to_id(self, token: str) -> int | None:
        return self._piece_ids.get(token)

    def id_to_token(self, token_id: int) -> str | None:
        if not 0 <= token_id < self.vocab_size:
            return None
        return self._sp.id_to_piece(token_id)

    @property
    def special_token_ids(self) -> dict[str, int]:
        return dict(self._special)

    @staticmethod
    def _opt(value: int) -> int | None:
        return None if value < 0 else value

    @property
    def bos_id(self) -> int | None:
        return self._opt(self._sp.bos_id())

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def unk_id(self) -> int | None:
        return self._opt(self._sp.unk_id())

    @property
    def _own_pad_id(self) -> int | None:
        return self._opt(self._sp.pad_id())

    # ---------------------------------------- encode / decode
    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts), out_type=int)

    def text_to_ids_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        if not isinstance(text, str):
            raise TypeError(f"text_to_ids expects str, got {type(text).__name__}")
        try:  # sentencepiece >= 0.2.1: character offsets directly
            enc = self._sp.encode(text, return_type="offset_mapping")
            return list(enc["ids"]), [tuple(o) for o in enc["offsets"]]
        except (ValueError, TypeError):
            pass
        pieces = self._sp.encode(text, return_type="proto").pieces  # older releases: UTF-8 byte offsets
        ids = [p.id for p in pieces]
        raw = text.encode("utf-8")
        if len(raw) == len(text):
            return ids, [(p.begin, p.end) for p in pieces]
        lead = (np.frombuffer(raw, dtype=np.uint8) & 0xC0) != 0x80  # [n_bytes] True where a character starts
        char_of_byte = np.append(np.cumsum(lead) - 1, len(text)).tolist()  # [n_bytes + 1]
        lead = lead.tolist() + [True]
        # a begin offset maps to the character it falls in; an end offset inside a character (byte-fallback
        # pieces) rounds up to that character's end
        return ids, [(char_of_byte[p.begin], char_of_byte[p.end] + (not lead[p.end])) for p in pieces]

    def _decode(self, ids: Sequence[int]) -> str:
        # sentencepiece drops control pieces (bos/eos/pad) when decoding; render those left as their text.
        if not any(self._sp.is_control(i) for i in ids):
            return self._sp.decode(list(ids))
        parts: list[str] = []
        run: list[int] = []
        seen_text = False
        for i in list(ids) + [None]:
            if i is not None and not self._sp.is_control(i):
                run.append(i)
                continue
            if run:
                parts.append(self._decode_run(run, first=not seen_text))
                run, seen_text = [], True
            if i is not None:
                parts.append(self._sp.id_to_piece(i))
        return "".join(parts)

    def _decode_run(self, run: list[int], first: bool) -> str:
        text = self._sp.decode(run)
        # Decoding strips a run's leading dummy-prefix space; only the sequence's first run owns one.
        if not first and self._sp.id_to_piece(run[0]).startswith("\u2581") and not text.startswith(" "):
            text = " " + text
        return text

    # ---------------------------------------- changes, files
    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        missing = [t for t in dict.fromkeys(tokens) if t not in self._piece_ids]
        if missing:
            self._load_proto(sp_proto.append_pieces(self._proto, missing, sp_proto.USER_DEFINED))
            logger.info("appended user-defined pieces %s to %s", missing, self.path)
        return [self._piece_ids[t] for t in tokens]

    def save(self, directory: str) -> str:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, MODEL_FILE), "wb") as f:
            f.write(self._proto)
        with open(os.path.join(directory, METADATA_FILE), "w") as f:
            json.dump({"library": self.library, "files": [MODEL_FILE]}, f, indent=2)
        logger.info("saved sentencepiece tokenizer to %s", directory)
        return directory
