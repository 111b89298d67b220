"""Writing the SteerLM demo data set to a directory: SFT chats and regression reward model rows.

``write_demo_data(out_dir, n_train, n_val, seed)`` writes, with NeMo-Aligner's JSONL bytes (``steerlm.io``)::

    train.jsonl / val.jsonl          attribute-conditioned SFT records (VALUE_TO_TEXT, labelled answers)
    train_reg.jsonl / val_reg.jsonl  {"text": <chat up to the answer>, "label": [9 floats]}, one row per
                                     labelled answer (``steerlm.regression``: process_to_regression_format)
"""

from __future__ import annotations

import os

from megatron_align.data.steerlm.io import write_jsonl
from megatron_align.data.steerlm.regression import regression_rows
from megatron_align.demo.world.generate import steerlm_demo_records

SPLITS = ("train", "val")


def write_demo_data(out_dir: str | os.PathLike, n_train: int, n_val: int, seed: int) -> dict[str, str]:
    """Write the four files into ``out_dir`` (created); returns ``{"train": path, "train_reg": ...}``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for split, n in zip(SPLITS, (n_train, n_val)):
        records = steerlm_demo_records(n, seed, split)
        paths[split] = os.path.join(out_dir, f"{split}.jsonl")
        paths[f"{split}_reg"] = os.path.join(out_dir, f"{split}_reg.jsonl")
        write_jsonl(paths[split], records)
        write_jsonl(paths[f"{split}_reg"], (row for r in records for row in regression_rows(r)))
    return paths
