"""``HFTokenizer``: ``AlignTokenizer`` over an HF ``tokenizer.json`` (``tokenizers``, not transformers).

Accepts a ``tokenizer.json`` file or a directory as transformers' ``save_pretrained`` writes it.
bos/eos/pad/unk come from explicit arguments, else ``tokenizer_config.json``, else
``special_tokens_map.json``; nothing is guessed from token spellings. Truncation/padding stored in
``tokenizer.json`` are switched off, and encoding never runs the post-processor, so ids are exactly the text's
tokens (bos/eos only on request).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

from tokenizers import AddedToken, Tokenizer

from megatron_align.tokenizers import hf_config
from megatron_align.tokenizers.base import METADATA_FILE, AlignTokenizer, TokenizerError

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"


class HFTokenizer(AlignTokenizer):
    """An HF fast tokenizer (``tokenizer.json`` + optional side files)."""

    library = "huggingface"

    def __init__(
        self,
        path: str,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
    ):
        path = str(path)
        if os.path.isdir(path):
            directory, tokenizer_file = path, os.path.join(path, TOKENIZER_FILE)
        else:
            directory, tokenizer_file = os.path.dirname(path) or ".", path
        if not os.path.isfile(tokenizer_file):
            raise TokenizerError(f"{tokenizer_file}: HF tokenizer file not found")
        super().__init__(tokenizer_file)
        try:
            self._tok = Tokenizer.from_file(tokenizer_file)
        except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for unparsable files
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise TokenizerError(f"{tokenizer_file}: not a readable HF tokenizer.json ({first})") from None
        self._tok.no_truncation()
        self._tok.no_padding()
        side = hf_config.read_side_config(directory)
        overrides = {"bos": bos_token, "eos": eos_token, "pad": pad_token, "unk": unk_token}
        for role, text in overrides.items():
            if text is not None:
                side.named[role], side.sources[role] = text, "argument"
        self._side = side
        self._ids = {role: self._resolve(role) for role in hf_config.ROLES}
        if self._ids["eos"] is None:
            raise TokenizerError(
                f"{tokenizer_file}: no eos token named (no eos_token in {hf_config.CONFIG_FILE} or "
                f"{hf_config.SPECIAL_MAP_FILE} beside it); add one there or pass eos_token=..."
            )

    def _resolve(self, role: str) -> int | None:
        text = self._side.named.get(role)
        if text is None:
            return None
        tid = self._tok.token_to_id(text)
        if tid is None:
            raise TokenizerError(
                f"{self._side.sources[role]}: {role}_token {text!r} is not in the vocabulary of {self.path}"
            )
        return tid

    # ---------------------------------------- vocabulary
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    @property
    def special_token_ids(self) -> dict[str, int]:
        out = {tok.content: tid for tid, tok in self._tok.get_added_tokens_decoder().items()}
        out.update({self._side.named[r]: tid for r, tid in self._ids.items() if tid is not None})
        return out

    @property
    def chat_template(self) -> str | None:
        return self._side.chat_template

    @property
    def bos_id(self) -> int | None:
        return self._ids["bos"]

    @property
    def eos_id(self) -> int:
        return self._ids["eos"]

    @property
    def unk_id(self) -> int | None:
        return self._ids["unk"]

    @property
    def _own_pad_id(self) -> int | None:
        return self._ids["pad"]

    # ---------------------------------------- encode / decode
    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [enc.ids for enc in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def text_to_ids_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        if not isinstance(text, str):
            raise TypeError(f"text_to_ids expects str, got {type(text).__name__}")
        enc = self._tok.encode(text, add_special_tokens=False)  # offsets are character offsets
        return list(enc.ids), [tuple(o) for o in enc.offsets]

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    # ---------------------------------------- changes, files
    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        missing = [t for t in dict.fromkeys(tokens) if self._tok.token_to_id(t) is None]
        if missing:
            self._tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
            self._side.extra += [t for t in missing if t not in self._side.extra]
            logger.info("added special tokens %s to %s", missing, self.path)
        return [self._tok.token_to_id(t) for t in tokens]

    def save(self, directory: str) -> str:
        os.makedirs(directory, exist_ok=True)
        self._tok.save(os.path.join(directory, TOKENIZER_FILE))
        hf_config.write_side_config(
            directory, self._side.named, self._side.extra, self._side.chat_template, self._side.raw_config
        )
        files = [TOKENIZER_FILE, hf_config.CONFIG_FILE, hf_config.SPECIAL_MAP_FILE]
        with open(os.path.join(directory, METADATA_FILE), "w") as f:
            json.dump({"library": self.library, "files": files}, f, indent=2)
        logger.info("saved HF tokenizer to %s", directory)
        return directory
