"""Over-length samples and samples with nothing to learn: the rules, in one place.

``fit_to_length(ids, target_mask, max_len, method, min_target_tokens)`` applies them, in this order:

1. A sample that fits (``len(ids) <= max_len``) is kept as is.
2. Otherwise, by ``truncation_method`` (``model.data.train_ds.truncation_method``):

   * ``right``: keep the first ``max_len`` tokens (NeMo's chat SFT behaviour). The context stays whole; a
     later answer loses its end (the part kept is still trained: its prompt is intact).
   * ``left``: keep the last ``max_len`` tokens: the oldest context (system prompt, early turns) goes first.
     If the cut falls inside an answer, what is left of that answer is not trained (its prompt is gone).
   * ``drop``: drop the sample.

3. A kept sample must have at least ``min_target_tokens`` trained tokens among positions ``1..T-1`` (the first
   token is never predicted). A sample without any is never emitted: its loss would be 0/0 = NaN or a
   constant (a known NeMo-Aligner failure); it is dropped.

Every outcome other than "fits" is returned so the dataset counts it (``DataReport``).
"""

from __future__ import annotations

import numpy as np

from megatron_align.config.data import TRUNCATION_METHODS

FITS = "fits"
TRUNCATED_LEFT = "truncated_left"
TRUNCATED_RIGHT = "truncated_right"
OVER_LENGTH = "over_length"
NO_TARGET = "no_target"
NO_TARGET_AFTER_TRUNCATION = "no_target_after_truncation"


def trained_tokens(target_mask: np.ndarray) -> int:
    """Trained tokens that can be predicted (positions ``1..T-1``)."""
    return int(np.count_nonzero(target_mask[1:]))


def fit_to_length(ids: np.ndarray, target_mask: np.ndarray, max_len: int, method: str,
                  min_target_tokens: int = 1) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """``(ids, target_mask, outcome)``: the sample fitted to ``max_len`` tokens, or ``(None, None, reason)``
    when it is dropped. ``ids`` / ``target_mask`` are ``[T]``; rules in the module docstring."""
    if method not in TRUNCATION_METHODS:
        raise ValueError(f"truncation_method={method!r} is not one of {'|'.join(TRUNCATION_METHODS)}")
    n = len(ids)
    if n <= max_len:
        if trained_tokens(target_mask) < 1:
            return None, None, NO_TARGET
        return ids, target_mask, FITS
    if trained_tokens(target_mask) < 1:
        return None, None, NO_TARGET
    if method == "drop":
        return None, None, OVER_LENGTH
    if method == "right":
        ids, mask, outcome = ids[:max_len], target_mask[:max_len], TRUNCATED_RIGHT
    else:
        ids, mask, outcome = ids[n - max_len:], target_mask[n - max_len:].copy(), TRUNCATED_LEFT
        if target_mask[n - max_len - 1] and mask[0]:  # the cut is inside an answer: untrain its remainder
            first_context = np.flatnonzero(~mask)
            mask[: first_context[0] if len(first_context) else len(mask)] = False
    if trained_tokens(mask) < min_target_tokens:
        return None, None, NO_TARGET_AFTER_TRUNCATION
    return ids, mask, outcome
