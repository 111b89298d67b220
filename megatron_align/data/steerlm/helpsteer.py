"""HelpSteer, HelpSteer2 and HelpSteer2-Preference rows -> SteerLM SFT records (NeMo-Aligner's conversion).

Published files (Hugging Face datasets ``nvidia/HelpSteer`` and ``nvidia/HelpSteer2``; JSONL, gzipped, or the
same rows as parquet):

* ratings, ``train.jsonl.gz`` / ``validation.jsonl.gz``: ``{"prompt", "response", "helpfulness",
  "correctness", "coherence", "complexity", "verbosity"}`` (integers 0..4). In HelpSteer2 each prompt comes
  twice in a row, with two responses; rows are converted one by one, in file order, so the pairs stay
  adjacent. A multi-turn HelpSteer2 prompt keeps its ``<extra_id_1>`` separators inside the user turn, as
  NeMo-Aligner leaves it.
* preferences, ``preference/preference.jsonl.gz`` (``-pref``): ``{"split", "prompt", "response_1",
  "response_2", "preference_strength", ...}``; ``preference_strength`` is -3..3, negative when response 1 is
  better. Each row gives two records, response 1 then response 2, both labelled ``quality:<strength>``
  (the scaled Bradley-Terry loss reads adjacent rows as a pair); ``split == "train"`` goes to train, any
  other split to val.

Labels (``attributes.encode_label`` order): HelpSteer: the five ratings. HelpSteer2: every one of the nine
attributes the row has (the five ratings; ``quality`` in preference rows); ``only_helpfulness``: helpfulness
alone. With ``-pref`` and ``only_helpfulness`` together every label is ``""`` (preference rows have no
helpfulness), as in NeMo-Aligner; the regression conversion then skips every row, so a warning is logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

from megatron_align.data.errors import RECORD_FIELD, RecordError
from megatron_align.data.nemo_chat import json_type
from megatron_align.data.steerlm.attributes import (
    HELPSTEER_ATTRIBUTES,
    PREFERENCE_STRENGTH,
    STEERLM_ATTRIBUTES,
    LabelError,
    check_value,
    encode_label,
)
from megatron_align.data.steerlm.io import read_rows, record_error, write_jsonl
from megatron_align.data.steerlm.records import prompt_response_record

logger = logging.getLogger(__name__)

SPLIT_FILES = {
    "train": ("train.jsonl.gz", "train.jsonl", "train.parquet", "data/train-*.parquet"),
    "validation": ("validation.jsonl.gz", "validation.jsonl", "validation.parquet",
                   "data/validation-*.parquet"),
}
"""Where a local copy of ``nvidia/HelpSteer`` / ``nvidia/HelpSteer2`` keeps each split (first match wins)."""
PREFERENCE_FILES = ("preference/preference.jsonl.gz", "preference.jsonl.gz", "preference/preference.jsonl",
                    "preference.jsonl", "preference/*.parquet", "preference.parquet")
"""Where a local copy of ``nvidia/HelpSteer2`` keeps the preference annotations (first match wins)."""


def _object(row: object) -> dict:
    if not isinstance(row, dict):
        raise RecordError(RECORD_FIELD, f"expected a JSON object, got {json_type(row)}")
    return row


def _text(row: dict, key: str) -> str:
    if key not in row:
        raise RecordError(key, "missing")
    if not isinstance(row[key], str):
        raise RecordError(key, f"expected a string, got {json_type(row[key])}")
    return row[key]


def rating_label(row: dict, names: Sequence[str]) -> str:
    """The label string of ``row``'s ratings ``names`` (each must be present and valid)."""
    values = {}
    for name in names:
        if name not in row:
            raise RecordError(name, "missing")
        try:
            values[name] = check_value(name, row[name])
        except LabelError as e:
            raise RecordError(name, str(e).removeprefix(f"{name}: ")) from None
    return encode_label(values)


def helpsteer_record(row: object) -> dict:
    """One HelpSteer (v1) row: its five ratings."""
    row = _object(row)
    label = rating_label(row, HELPSTEER_ATTRIBUTES)
    return prompt_response_record(_text(row, "prompt"), _text(row, "response"), label)


def helpsteer2_record(row: object, only_helpfulness: bool = False) -> dict:
    """One HelpSteer2 row: every attribute it rates (the five must be there), or helpfulness alone."""
    row = _object(row)
    rating_label(row, HELPSTEER_ATTRIBUTES)  # all five present and valid
    names = ["helpfulness"] if only_helpfulness else [n for n in STEERLM_ATTRIBUTES if n in row]
    return prompt_response_record(_text(row, "prompt"), _text(row, "response"), rating_label(row, names))


def preference_records(row: object, only_helpfulness: bool = False) -> tuple[bool, list[dict]]:
    """One HelpSteer2-Preference row -> (is train, [record of response 1, record of response 2])."""
    row = _object(row)
    split = _text(row, "split")
    strength = row.get("preference_strength")
    low, high = PREFERENCE_STRENGTH
    if isinstance(strength, bool) or not isinstance(strength, int):
        raise RecordError("preference_strength",
                          f"expected an integer {low}..{high}, got {json_type(strength)}")
    if not low <= strength <= high:
        raise RecordError("preference_strength", f"value {strength} is out of range {low}..{high}")
    label = "" if only_helpfulness else encode_label({"quality": strength})
    prompt = _text(row, "prompt")
    pair = [prompt_response_record(prompt, _text(row, key), label) for key in ("response_1", "response_2")]
    return split == "train", pair


def _convert(files: Sequence[str], convert: Callable[[object], dict]) -> list[dict]:
    out = []
    for path in files:
        for number, row in read_rows(path):
            try:
                out.append(convert(row))
            except RecordError as e:
                raise record_error(path, number, e) from None
    return out


def _write(output_directory: str | os.PathLike, train: list[dict], val: list[dict]) -> dict[str, int]:
    os.makedirs(output_directory, exist_ok=True)
    return {"train": write_jsonl(os.path.join(output_directory, "train.jsonl"), train),
            "val": write_jsonl(os.path.join(output_directory, "val.jsonl"), val)}


def preprocess_helpsteer(train_files: Sequence[str], validation_files: Sequence[str],
                         output_directory: str | os.PathLike) -> dict[str, int]:
    """HelpSteer's train / validation files -> ``train.jsonl`` / ``val.jsonl``; returns line counts."""
    return _write(output_directory, _convert(train_files, helpsteer_record),
                  _convert(validation_files, helpsteer_record))


def preprocess_helpsteer2(train_files: Sequence[str], validation_files: Sequence[str],
                          output_directory: str | os.PathLike, only_helpfulness: bool = False,
                          ) -> dict[str, int]:
    """HelpSteer2's train / validation files -> ``train.jsonl`` / ``val.jsonl``; returns line counts."""
    def convert(row: object) -> dict:
        return helpsteer2_record(row, only_helpfulness)

    return _write(output_directory, _convert(train_files, convert), _convert(validation_files, convert))


def preprocess_helpsteer2_preference(preference_files: Sequence[str], output_directory: str | os.PathLike,
                                     only_helpfulness: bool = False) -> dict[str, int]:
    """HelpSteer2-Preference rows -> ``train.jsonl`` / ``val.jsonl`` (two records per row, by ``split``)."""
    if only_helpfulness:
        logger.warning("--only_helpfulness with -pref: preference rows rate no helpfulness, so every "
                       "label is empty (as NeMo-Aligner writes it) and the regression conversion skips them")
    train: list[dict] = []
    val: list[dict] = []
    for path in preference_files:
        for number, row in read_rows(path):
            try:
                is_train, pair = preference_records(row, only_helpfulness)
            except RecordError as e:
                raise record_error(path, number, e) from None
            (train if is_train else val).extend(pair)
    return _write(output_directory, train, val)
