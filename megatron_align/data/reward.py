"""Reward-model data: NeMo-Aligner's regression rows and preference pairs, read lazily, validated, tokenized.

Formats (one JSON object per line):

* regression (``model.reward_model_type=regression``): ``{"text": str, "label": [A numbers]}``, the output of
  NeMo-Aligner's ``process_to_regression_format.py`` (``-100`` = attribute missing). With a ``*_bt`` loss,
  rows ``2k`` and ``2k + 1`` are pair ``k`` (HelpSteer2-Preference's ``-pref`` rows: both responses to one
  prompt, both carrying the preference strength in label column 0); the file must have an even row count.
* binary ranking: ``{"prompt", "chosen", "rejected"}`` (seed 004's preference format),
  ``{"prompt", "chosen_response", "rejected_response"}`` (NeMo-Aligner's DPO files), or NeMo-Aligner's own
  comparison format - consecutive lines ``{"text": prompt + chosen}`` then ``{"text": prompt + rejected}``.
  The response is appended to the prompt as it is (no separator), which is how both projects build the text.

Text is tokenized whole, without bos (NeMo-Aligner's ``text_to_ids``), with eos appended when
``model.data.append_eod``. A row longer than ``seq_length`` (or malformed, with ``on_bad_record=skip``) is
counted and replaced by the next record (pair) of the file, as NeMo-Aligner's ``RegressionRewardModelDataset``
does; malformed records stop the run with ``file:line: field: problem`` under ``on_bad_record=error``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from megatron_align.data.blending import BlendedIndex
from megatron_align.data.errors import RECORD_FIELD, DataError, DataReport, RecordError, check_on_bad_record
from megatron_align.data.jsonl import JsonlFile

logger = logging.getLogger(__name__)


@dataclass
class RMRules:
    """How records become reward-model rows."""

    seq_length: int
    """Longest row in tokens; longer rows are replaced by the next record (counted)."""
    num_attributes: int = 1
    """Label values per regression row."""
    mask_val: float = -100.0
    """A missing attribute."""
    append_eod: bool = False
    """Append the eos token to every text."""
    on_bad_record: str = "error"
    """``error`` | ``skip``."""
    pairs: bool = False
    """Regression rows are read as consecutive pairs (a ``*_bt`` loss)."""


@dataclass
class RMRow:
    """One tokenized text with its labels."""

    input_ids: np.ndarray
    """``int64 [T]``."""
    labels: np.ndarray
    """``float32 [A]`` (zeros for binary-ranking rows, which have none)."""
    source: str = ""
    """``file:line``."""


@dataclass
class RMPair:
    """Two responses to one prompt; ``preference < 0``: ``first`` is preferred, ``>= 0``: ``second``."""

    first: RMRow
    second: RMRow
    preference: float


def _text(obj: dict, key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise RecordError(key, "missing" if value is None
                          else f"expected a string, got {type(value).__name__}")
    return value


def _labels(obj: dict, rules: RMRules) -> np.ndarray:
    value = obj.get("label")
    if not isinstance(value, list):
        raise RecordError("label", "missing" if value is None else
                          f"expected a list of numbers, got {type(value).__name__}")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise RecordError(f"label[{i}]", f"{v!r} is not a finite number")
    if len(value) != rules.num_attributes:
        raise RecordError("label", f"has {len(value)} values but model.regression.num_attributes="
                          f"{rules.num_attributes} (use {rules.mask_val:g} for a missing attribute)")
    return np.asarray(value, dtype=np.float32)


class _RMFile:
    """Shared reading, tokenizing and reporting of one JSONL file."""

    def __init__(self, path: str | os.PathLike, tokenizer, rules: RMRules, index_dir: str | None = None):
        check_on_bad_record(rules.on_bad_record)
        self.rules, self.tokenizer = rules, tokenizer
        self.file = JsonlFile(path, index_dir=index_dir)
        self.path = self.file.path
        self.report = DataReport(self.path)
        """What was skipped or replaced, by reason."""
        if len(self.file) == 0:
            raise DataError(self.path, None, None, "no records (the file is empty or has only blank lines)")

    def _bad(self, err: DataError) -> None:
        if self.rules.on_bad_record == "error":
            raise err
        self.report.add("bad_record", str(err), key=err.line)

    def _object(self, k: int) -> dict | None:
        try:
            obj = self.file.record(k)
        except DataError as err:
            self._bad(err)
            return None
        if not isinstance(obj, dict):
            self._bad(DataError(self.path, self.file.line_number(k), RECORD_FIELD,
                                f"expected a JSON object, got {type(obj).__name__}"))
            return None
        return obj

    def _encode(self, k: int, text: str, labels: np.ndarray) -> RMRow | None:
        """Tokenize; None (counted) when the text is over-length or empty."""
        ids = list(self.tokenizer.text_to_ids(text))
        if self.rules.append_eod:
            ids.append(self.tokenizer.eos_id)
        where = self.file.where(k)
        if not ids:
            self._bad(DataError(self.path, self.file.line_number(k), "text", "tokenizes to no tokens"))
            return None
        if len(ids) > self.rules.seq_length:
            self.report.add("over_length", f"{where}: {len(ids)} tokens > model.data.seq_length="
                            f"{self.rules.seq_length} (replaced by the next record)")
            return None
        return RMRow(np.asarray(ids, dtype=np.int64), labels, where)

    def _record_error(self, k: int, e: RecordError) -> None:
        self._bad(DataError(self.path, self.file.line_number(k), e.field, e.problem))


class RegressionFile(_RMFile):
    """``{"text", "label"}`` rows; ``item(k)`` is row ``k``, or pair ``k`` (rows 2k, 2k+1) with ``pairs``."""

    def __init__(self, path, tokenizer, rules: RMRules, index_dir: str | None = None):
        super().__init__(path, tokenizer, rules, index_dir)
        if rules.pairs and len(self.file) % 2:
            raise DataError(self.path, None, None, f"{len(self.file)} rows, an odd number: a Bradley-Terry "
                            "loss reads consecutive rows (2k, 2k+1) as the two responses of one prompt")

    def __len__(self) -> int:
        return len(self.file) // 2 if self.rules.pairs else len(self.file)

    def row(self, k: int) -> RMRow | None:
        """Row ``k`` validated and tokenized; None when skipped or over-length (counted)."""
        obj = self._object(k)
        if obj is None:
            return None
        try:
            text, labels = _text(obj, "text"), _labels(obj, self.rules)
        except RecordError as e:
            self._record_error(k, e)
            return None
        if self.rules.pairs:
            return self._encode(k, text, labels)
        if not np.any(labels != self.rules.mask_val):
            self.report.add("all_labels_missing", f"{self.file.where(k)}: every label is "
                            f"{self.rules.mask_val:g}: the row contributes nothing to the loss",
                            level=logging.INFO)
        return self._encode(k, text, labels)

    def item(self, k: int) -> RMRow | RMPair | None:
        """Row ``k`` (regression) or pair ``k`` (``pairs``); None when skipped or dropped."""
        if not self.rules.pairs:
            return self.row(k)
        first, second = self.row(2 * k), self.row(2 * k + 1)
        if first is None or second is None:
            return None
        pref, other = float(first.labels[0]), float(second.labels[0])
        if pref == self.rules.mask_val:
            self._record_error(2 * k, RecordError(
                "label[0]", f"the pair's preference is missing ({self.rules.mask_val:g}); Bradley-Terry rows "
                "carry it in label column 0"))
            return None
        if other != pref:
            self._record_error(2 * k + 1, RecordError(
                "label[0]", f"{other:g} differs from the preference {pref:g} of the first row of its pair "
                f"({first.source})"))
            return None
        return RMPair(first, second, pref)


PAIR_FORMATS = {"chosen": ("prompt", "chosen", "rejected"),
                "chosen_response": ("prompt", "chosen_response", "rejected_response")}


class ComparisonFile(_RMFile):
    """Binary-ranking pairs; ``item(k)`` is pair ``k`` with the chosen response first (preference -1)."""

    def __init__(self, path, tokenizer, rules: RMRules, index_dir: str | None = None):
        super().__init__(path, tokenizer, rules, index_dir)
        self.keys: tuple[str, ...] | None = None  # None: consecutive {"text"} lines
        first = None
        for k in range(min(len(self.file), 16)):
            try:
                first = self.file.record(k)
                break
            except DataError:
                continue
        if isinstance(first, dict) and "text" not in first:
            for marker, keys in PAIR_FORMATS.items():
                if marker in first:
                    self.keys = keys
                    break
            else:
                raise DataError(self.path, self.file.line_number(k), RECORD_FIELD,
                                "unknown pair format: expected {prompt, chosen, rejected}, {prompt, "
                                "chosen_response, rejected_response}, or consecutive {text} lines "
                                "(chosen, then rejected)")
        if self.keys is None and len(self.file) % 2:
            raise DataError(self.path, None, None, f"{len(self.file)} lines, an odd number: NeMo-Aligner's "
                            "comparison format pairs consecutive {text} lines (chosen, then rejected)")

    def __len__(self) -> int:
        return len(self.file) if self.keys is not None else len(self.file) // 2

    def _texts(self, k: int) -> tuple[str, str] | None:
        obj = self._object(k)
        if obj is None:
            return None
        prompt_key, chosen_key, rejected_key = self.keys
        try:
            prompt = _text(obj, prompt_key)
            return prompt + _text(obj, chosen_key), prompt + _text(obj, rejected_key)
        except RecordError as e:
            self._record_error(k, e)
            return None

    def _line_text(self, k: int) -> str | None:
        obj = self._object(k)
        if obj is None:
            return None
        try:
            return _text(obj, "text")
        except RecordError as e:
            self._record_error(k, e)
            return None

    def item(self, k: int) -> RMPair | None:
        """Pair ``k`` (chosen first); None when skipped or dropped (counted)."""
        none = np.zeros(self.rules.num_attributes, dtype=np.float32)
        if self.keys is not None:
            texts = self._texts(k)
            if texts is None:
                return None
            chosen, rejected = self._encode(k, texts[0], none), self._encode(k, texts[1], none)
        else:
            a, b = self._line_text(2 * k), self._line_text(2 * k + 1)
            if a is None or b is None:
                return None
            chosen, rejected = self._encode(2 * k, a, none), self._encode(2 * k + 1, b, none)
        if chosen is None or rejected is None:
            return None
        return RMPair(chosen, rejected, -1.0)


class RMDataset:
    """Items (rows or pairs) of one or more files; ``ds[i]`` is position ``i`` of a deterministic stream.

    Several files are interleaved by ``weights`` (``BlendedIndex``, evenly spread; shuffling is the sampler's
    job). A position whose item is skipped or over-length takes the next item of the same file.
    """

    def __init__(self, files: Sequence[_RMFile], weights: Sequence[float] | None = None, seed: int = 1234,
                 max_replacements: int = 1000):
        self.files = list(files)
        self.index = BlendedIndex([len(f) for f in self.files], weights, seed, shuffle=False)
        self.max_replacements = max_replacements

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> RMRow | RMPair:
        d, ordinal = self.index.locate(i)
        f = self.files[d]
        for attempt in range(self.max_replacements):
            item = f.item(self.index.record_of(d, ordinal + attempt))
            if item is not None:
                return item
        raise DataError(f.path, None, None, f"{self.max_replacements} records in a row were skipped or over "
                        "length; check model.data.seq_length and on_bad_record (see the warnings above)")

    def report(self, log: logging.Logger | None = None) -> dict[str, dict[str, int]]:
        """Log each file's counts of skipped / replaced records; returns them by file."""
        return {f.path: f.report.report(log) for f in self.files}


def collate_rm(items: Sequence, pad_id: int, seq_length: int | None = None, pad_to_multiple_of: int = 16,
               ) -> dict:
    """Rows (or pairs, flattened to rows ``2i``, ``2i + 1``) -> a right-padded micro-batch.

    Keys: ``tokens`` / ``position_ids`` ``int64 [B, S]``, ``lengths`` ``int64 [B]``, ``labels``
    ``float32 [B, A]``, and for pairs ``preference`` ``float32 [B / 2]``. ``S`` is ``seq_length`` when given
    (pipeline parallelism needs a fixed shape), else the longest row rounded up to ``pad_to_multiple_of``.
    """
    if not items:
        raise ValueError("cannot collate an empty list of items")
    pairs = isinstance(items[0], RMPair)
    rows = [r for p in items for r in (p.first, p.second)] if pairs else list(items)
    longest = max(len(r.input_ids) for r in rows)
    m = max(1, pad_to_multiple_of)
    width = seq_length if seq_length is not None else max(m, -(-longest // m) * m)
    if longest > width:
        raise ValueError(f"a row of {longest} tokens does not fit seq_length={width}")
    tokens = np.full((len(rows), width), pad_id, dtype=np.int64)  # [B, S]
    for i, r in enumerate(rows):
        tokens[i, :len(r.input_ids)] = r.input_ids
    positions = torch.arange(width, dtype=torch.int64).unsqueeze(0).expand(len(rows), -1)  # [B, S]
    batch = {
        "tokens": torch.from_numpy(tokens),
        "position_ids": positions.contiguous(),
        "lengths": torch.tensor([len(r.input_ids) for r in rows], dtype=torch.int64),  # [B]
        "labels": torch.from_numpy(np.stack([r.labels for r in rows])),  # [B, A]
    }
    if pairs:
        batch["preference"] = torch.tensor([p.preference for p in items], dtype=torch.float32)  # [B / 2]
    return batch
