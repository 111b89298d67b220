"""From rendered text to token ids and a per-token target mask, by tokenizing the whole string once.

Templates (``nemo_chat``, ``hf_chat``, ``prompt_template``) produce a ``Rendered``: the full text and the
character spans that are trained (answers, and what closes them). ``encode_rendered`` tokenizes the full text
in one call, exactly as generation tokenizes a prompt, and marks a token as a target when the characters it
covers include a target character (``AlignTokenizer.text_to_ids_with_offsets`` gives each token's span).

Why not tokenize piece by piece: sentencepiece adds a dummy-prefix ``▁`` at the start of every encoded string
and BPE merges differ at piece edges, so concatenated piece ids are not the ids of the concatenated text -
the model would be trained on token sequences it never sees at inference.

A token that covers both context and target characters (a merge across a prompt/answer boundary) is a target
and is counted in ``Encoded.boundary_merges``: at such a boundary the prompt given to generation tokenizes
differently from training. The extra_id template avoids it (special markers and newlines at every boundary).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Rendered:
    """A sample as text: ``text`` and the ``[start, end)`` character spans of it that are trained."""

    text: str
    """The whole sample, as the model reads it."""
    targets: tuple[tuple[int, int], ...]
    """Sorted, non-overlapping character spans of ``text`` that are training targets."""

    def target_text(self) -> list[str]:
        """The trained pieces of text (for tests and debugging)."""
        return [self.text[a:b] for a, b in self.targets]


class TextBuilder:
    """Appends pieces of text, each trained or not, and yields a ``Rendered`` (adjacent spans merged)."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._len = 0
        self._spans: list[list[int]] = []

    def add(self, text: str, trained: bool = False) -> None:
        """Append ``text``; ``trained`` marks it as a target."""
        if not text:
            return
        start, self._len = self._len, self._len + len(text)
        self._parts.append(text)
        if trained:
            if self._spans and self._spans[-1][1] == start:
                self._spans[-1][1] = self._len
            else:
                self._spans.append([start, self._len])

    def ends_trained(self) -> bool:
        """Whether the text so far ends with a trained character."""
        return bool(self._spans) and self._spans[-1][1] == self._len

    def build(self) -> Rendered:
        """The text and its target spans."""
        return Rendered("".join(self._parts), tuple((a, b) for a, b in self._spans))


@dataclass
class Encoded:
    """Token ids of a rendered sample and which of them are trained."""

    ids: np.ndarray
    """``int64 [T]`` token ids."""
    target_mask: np.ndarray
    """``bool [T]``: token ``t`` is a training target (its prediction from tokens ``< t`` is scored)."""
    boundary_merges: int = 0
    """Tokens covering both context and target characters (see the module docstring)."""


def encode_rendered(rendered: Rendered, tokenizer, add_bos: bool = False, add_eos: bool = False) -> Encoded:
    """Tokenize ``rendered.text`` once; a token is a target when any character it covers is one.

    ``add_bos`` prepends bos (context); ``add_eos`` appends eos, trained when the text ends with a target.
    """
    text = rendered.text
    ids, offsets = tokenizer.text_to_ids_with_offsets(text)
    n_chars = len(text)
    char_target = np.zeros(n_chars, dtype=np.int64)  # [C]
    for a, b in rendered.targets:
        char_target[a:b] = 1
    cum = np.concatenate(([0], np.cumsum(char_target)))  # [C + 1]
    span = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)  # [T, 2]
    start = np.clip(span[:, 0], 0, max(n_chars - 1, 0))
    end = np.clip(np.maximum(span[:, 1], start + 1), 0, n_chars)  # an empty span belongs to its next char
    covered = cum[end] - cum[start]  # [T] target characters under each token
    mask = covered > 0
    merges = int(np.count_nonzero(mask & (covered < end - start)))
    ids_arr = np.asarray(ids, dtype=np.int64)
    if add_bos:
        if tokenizer.bos_id is None:
            raise ValueError(f"{tokenizer.path}: add_bos=True but the tokenizer has no bos token")
        ids_arr = np.concatenate(([tokenizer.bos_id], ids_arr))
        mask = np.concatenate(([False], mask))
    if add_eos:
        ends_trained = n_chars > 0 and bool(char_target[-1])
        ids_arr = np.concatenate((ids_arr, [tokenizer.eos_id]))
        mask = np.concatenate((mask, [ends_trained]))
    return Encoded(ids_arr.astype(np.int64, copy=False), mask.astype(bool, copy=False), merges)
