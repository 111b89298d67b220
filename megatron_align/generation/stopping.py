"""When a sequence stops: eos (always, as in NeMo), or an end string completed by the token just generated.

NeMo's convention: ``end_strings`` may name ``"<|endoftext|>"`` (NeMo's ``END_OF_SEQ``), which means "the
eos token" whatever the tokenizer calls it; the tokenizer's own eos text means the same. Every other end
string is matched on text: after each new token the prompt + response ids are decoded and the sequence
stops at the first token whose text completes an occurrence that reaches into the response (an occurrence
wholly inside the prompt does not count; one that starts in the prompt and ends in the response does; one
that ends inside a token counts at that token). The stopping token is kept, so the response ends exactly at
the token that completes the string.
"""

from __future__ import annotations

from collections.abc import Sequence

END_OF_SEQ = "<|endoftext|>"
"""NeMo's name for "stop at eos" in ``end_strings``."""


class StopStrings:
    """Text end strings of one ``generate`` call (eos-like entries removed)."""

    def __init__(self, end_strings: Sequence[str], tokenizer=None):
        eos_like = {END_OF_SEQ}
        if tokenizer is not None:
            eos_like.add(tokenizer.eos_token)
        self.strings = [s for s in end_strings if s and s not in eos_like]
        if self.strings and tokenizer is None:
            raise ValueError(f"end_strings {self.strings}: matching text needs a tokenizer attached to the "
                             "backend (or stop on eos only)")
        self.tokenizer = tokenizer
        self._prompt_chars: dict[int, int] = {}

    def __bool__(self) -> bool:
        return bool(self.strings)

    def set_prompts(self, prompts: Sequence[Sequence[int]]) -> None:
        """Remember each prompt's decoded length (occurrences must end beyond it)."""
        self._prompt_chars = {i: len(self.tokenizer.ids_to_text(p)) for i, p in enumerate(prompts)}

    def completed(self, row: int, ids: Sequence[int]) -> bool:
        """True when the text of ``ids`` (prompt + response so far) holds an end string ending in the
        response."""
        text = self.tokenizer.ids_to_text(ids)
        cut = self._prompt_chars.get(row, 0)
        return any(text.find(s, max(0, cut - len(s) + 1)) >= 0 for s in self.strings)

