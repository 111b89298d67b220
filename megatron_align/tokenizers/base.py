"""The tokenizer interface every stage uses, the error type for users, and checks for required tokens.

``AlignTokenizer`` is the one shape that data, generation and servers code sees, whatever library sits below
(``sentencepiece`` for NeMo ``tokenizer.model`` files, ``tokenizers`` for HF ``tokenizer.json``).

Conventions, the same for every implementation:

* ``text_to_ids`` never adds bos/eos on its own; callers ask with ``add_bos`` / ``add_eos``. (HF
  post-processors that would add them are bypassed, so a Llama ``tokenizer.json`` and a NeMo
  ``tokenizer.model`` behave alike.)
* ``pad_id`` is the tokenizer's own pad token when it has one, otherwise ``eos_id``. Padding positions are
  always masked out of losses, so reusing eos is safe; ``has_pad_token`` tells which case holds.
* ``ids_to_text(skip_special=True)`` drops bos, eos and pad ids only. Symbols such as ``<extra_id_1>`` are
  kept as text, because chat templates and generation end strings (``end_strings: ["<extra_id_1>"]``)
  rely on them.
* A tokenizer without an eos token cannot be loaded: every stage needs one.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterable, Sequence

from megatron_align.config.errors import UserError

logger = logging.getLogger(__name__)

EXTRA_ID_TOKENS: tuple[str, ...] = ("<extra_id_0>", "<extra_id_1>", "<extra_id_2>")
"""The NeMo SteerLM chat template's turn markers: system turn start, turn start, label (attribute) start."""

METADATA_FILE = "megatron_align_tokenizer.json"
"""Written by ``AlignTokenizer.save`` beside the tokenizer files; names the library that reads them."""


class TokenizerError(UserError, ValueError):
    """A user-facing problem with a tokenizer file or option; the message is one line naming the file."""

    prefix = "tokenizer error"


class AlignTokenizer(abc.ABC):
    """Uniform tokenizer interface. Subclasses: ``SentencePieceTokenizer``, ``HFTokenizer``."""

    library: str = ""
    """The name ``load_tokenizer`` knows this implementation by (``model.tokenizer.library``)."""

    def __init__(self, path: str):
        self.path = str(path)
        """The file or directory this tokenizer was loaded from (used in error messages)."""

    # ---------------------------------------- vocabulary
    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids, added/user-defined tokens included (before any model-side padding)."""

    @abc.abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """The id of ``token`` as a whole vocabulary entry, or None when the vocabulary lacks it."""

    @abc.abstractmethod
    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary entry (piece) of ``token_id``, or None when out of range."""

    @property
    @abc.abstractmethod
    def special_token_ids(self) -> dict[str, int]:
        """Every special token by its text: bos/eos/pad/unk plus control, user-defined and added ones."""

    @property
    def chat_template(self) -> str | None:
        """The raw Jinja chat template shipped with the tokenizer (HF ``tokenizer_config.json``) or None."""
        return None

    # ---------------------------------------- special ids
    @property
    @abc.abstractmethod
    def bos_id(self) -> int | None:
        """Beginning-of-sequence id, or None when the tokenizer has none."""

    @property
    @abc.abstractmethod
    def eos_id(self) -> int:
        """End-of-sequence id (always present; loading fails without one)."""

    @property
    @abc.abstractmethod
    def unk_id(self) -> int | None:
        """Unknown-token id, or None."""

    @property
    @abc.abstractmethod
    def _own_pad_id(self) -> int | None:
        """The tokenizer's own pad id, or None; ``pad_id`` falls back to eos when this is None."""

    @property
    def has_pad_token(self) -> bool:
        """True when the tokenizer defines its own pad token; False when ``pad_id`` is borrowed from eos."""
        return self._own_pad_id is not None

    @property
    def pad_id(self) -> int:
        """Pad id: the tokenizer's own pad token if it has one, else ``eos_id`` (padding is always masked)."""
        own = self._own_pad_id
        return self.eos_id if own is None else own

    @property
    def bos_token(self) -> str | None:
        """Text of the bos token (for chat templates' ``bos_token``), or None."""
        return None if self.bos_id is None else self.id_to_token(self.bos_id)

    @property
    def eos_token(self) -> str:
        """Text of the eos token (for chat templates' ``eos_token``)."""
        return self.id_to_token(self.eos_id)

    # ---------------------------------------- encode / decode
    @abc.abstractmethod
    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode each text without any bos/eos."""

    @abc.abstractmethod
    def _decode(self, ids: Sequence[int]) -> str:
        """Decode ids (already filtered); any bos/eos/pad left are rendered as their text."""

    def text_to_ids(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text``; bos/eos only when asked for (``add_bos`` fails if there is no bos token)."""
        return self.texts_to_ids([text], add_bos=add_bos, add_eos=add_eos)[0]

    def texts_to_ids(
        self, texts: Iterable[str], add_bos: bool = False, add_eos: bool = False
    ) -> list[list[int]]:
        """Batch form of ``text_to_ids`` (one call into the library, faster for many short texts)."""
        texts = list(texts)
        bad = next((t for t in texts if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"text_to_ids expects str, got {type(bad).__name__}")
        out = self._encode(texts)
        if add_bos:
            if self.bos_id is None:
                raise TokenizerError(
                    f"{self.path}: tokenizer has no bos token but add_bos=True was asked for"
                )
            out = [[self.bos_id] + ids for ids in out]
        if add_eos:
            out = [ids + [self.eos_id] for ids in out]
        return out

    def text_to_ids_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of ``text`` (no bos/eos) and, per token, the ``[start, end)`` character span of ``text``
        it covers (Python ``str`` indices).

        Ids equal ``text_to_ids(text)``. Spans may be empty (a sentencepiece dummy-prefix piece, the leading
        byte-fallback pieces of a character) or overlap (byte-level BPE pieces of one character). Data code
        uses the spans to mark which tokens of a whole-string tokenization are answer tokens.
        """
        raise NotImplementedError(f"{type(self).__name__} does not report token offsets")

    def ids_to_text(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of ``ids``; ``skip_special`` drops bos/eos/pad ids (``<extra_id_*>`` and the like stay)."""
        ids = [int(i) for i in ids]
        if skip_special:
            drop = {i for i in (self.bos_id, self.eos_id, self._own_pad_id) if i is not None}
            ids = [i for i in ids if i not in drop]
        return self._decode(ids)

    # ---------------------------------------- changes, files
    @abc.abstractmethod
    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Add ``tokens`` (those missing) so each encodes to one id wherever it appears; returns their ids.

        Adding tokens grows ``vocab_size``: the model's embedding must cover the new ids.
        """

    @abc.abstractmethod
    def save(self, directory: str) -> str:
        """Write the files that reload this tokenizer (``load_tokenizer_from_dir``); returns ``directory``."""

    def is_single_token(self, token: str) -> bool:
        """True when ``token`` is one vocabulary entry that encoding extracts whole, alone and inside text."""
        tid = self.token_to_id(token)
        if tid is None:
            return False
        alone, inside = self._encode([token, f"x{token}x"])
        return tid in alone and tid in inside

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(path={self.path!r}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
            f"eos_id={self.eos_id}, pad_id={self.pad_id})"
        )


def require_tokens(
    tokenizer: AlignTokenizer,
    tokens: Sequence[str] = EXTRA_ID_TOKENS,
    add_missing: bool = False,
    purpose: str = "the SteerLM chat template",
) -> dict[str, int]:
    """Ids of ``tokens``, each of which must encode to a single id; ``add_missing`` adds those that do not.

    Raises ``TokenizerError`` (one line naming the tokenizer file and the missing tokens) when some are
    missing and ``add_missing`` is False.
    """
    missing = [t for t in tokens if not tokenizer.is_single_token(t)]
    if missing:
        if not add_missing:
            raise TokenizerError(
                f"{tokenizer.path}: tokenizer has no single-id token for {', '.join(missing)} (needed by "
                f"{purpose}); use a tokenizer that defines them (sentencepiece user_defined_symbols, "
                f"HF added tokens) or add them with add_missing=True (this grows the vocabulary)"
            )
        present = [t for t in missing if tokenizer.token_to_id(t) is not None]
        if present:
            raise TokenizerError(
                f"{tokenizer.path}: {', '.join(present)} exist as ordinary vocabulary entries that encoding "
                f"does not keep whole; use a tokenizer that defines them as special/user-defined symbols"
            )
        tokenizer.add_special_tokens(missing)
        logger.warning(
            "added %s to tokenizer %s; vocab_size is now %d", missing, tokenizer.path, tokenizer.vocab_size
        )
    return {t: tokenizer.token_to_id(t) for t in tokens}
