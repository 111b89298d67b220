"""Which local files the preprocessing scripts read: they never download (NeMo-Aligner's scripts fetch from
the Hugging Face hub; here the published files are given by flag).

* OASST: ``--input_file`` or, as NeMo-Aligner reuses an earlier download, ``<output_directory>/`` +
  ``2023-04-12_oasst_all.trees.jsonl.gz`` when it is there.
* HelpSteer / HelpSteer2: ``--input_dir`` (a local copy of the dataset repository: ``train.jsonl.gz`` and
  ``validation.jsonl.gz``, or ``.jsonl`` / ``.parquet`` with those names) or ``--train_file`` and
  ``--validation_file``; ``-pref``: ``--input_dir`` (``preference/preference.jsonl.gz``) or
  ``--preference_file``.

Nothing given: a ``UserError`` naming the flag and the published file(s), printed as one line (exit 2).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from megatron_align.config.errors import UserError
from megatron_align.data.steerlm.helpsteer import PREFERENCE_FILES, SPLIT_FILES
from megatron_align.data.steerlm.io import find_input
from megatron_align.data.steerlm.oasst import OASST_FILE


def oasst_input(input_file: str | None, output_directory: str) -> str:
    """The OASST trees file to read (module docstring)."""
    if input_file:
        return input_file
    fallback = os.path.join(output_directory, OASST_FILE)
    if os.path.isfile(fallback):
        return fallback
    raise UserError(f"--input_file is required: download {OASST_FILE} (Hugging Face dataset "
                    f"OpenAssistant/oasst1) and pass --input_file=PATH, or put it at {fallback}; this script "
                    "does not download")


def split_inputs(dataset: str, input_dir: str | None, train_file: Sequence[str] | None,
                 validation_file: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(train files, validation files) of ``dataset`` (``nvidia/HelpSteer`` or ``nvidia/HelpSteer2``)."""
    if train_file or validation_file:
        if not (train_file and validation_file):
            given, missing = ("--train_file", "--validation_file") if train_file else (
                "--validation_file", "--train_file")
            raise UserError(f"{missing} is required with {given}")
        return list(train_file), list(validation_file)
    if not input_dir:
        raise UserError(f"--input_dir is required: download train.jsonl.gz and validation.jsonl.gz of the "
                        f"Hugging Face dataset {dataset} into a folder and pass --input_dir=FOLDER (or "
                        "--train_file and --validation_file); this script does not download")
    found = []
    for split, patterns in SPLIT_FILES.items():
        files = find_input(input_dir, patterns)
        if files is None:
            raise UserError(f"--input_dir={input_dir}: no {split} split ({patterns[0]} of {dataset}, or "
                            f"{', '.join(patterns[1:])})")
        found.append(files)
    return found[0], found[1]


def preference_inputs(input_dir: str | None, preference_file: Sequence[str] | None) -> list[str]:
    """The HelpSteer2-Preference files (``-pref``)."""
    if preference_file:
        return list(preference_file)
    if not input_dir:
        raise UserError("--input_dir is required with -pref: download preference/preference.jsonl.gz of the "
                        "Hugging Face dataset nvidia/HelpSteer2 and pass --input_dir=FOLDER (the folder "
                        "holding preference/), or --preference_file=PATH; this script does not download")
    files = find_input(input_dir, PREFERENCE_FILES)
    if files is None:
        raise UserError(f"--input_dir={input_dir}: no {PREFERENCE_FILES[0]} (of nvidia/HelpSteer2, or "
                        f"{', '.join(PREFERENCE_FILES[1:])})")
    return files
