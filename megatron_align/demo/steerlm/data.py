"""The files of the SteerLM demo's run directory before any training: data splits and the tokenizer.

``prepare_demo_data(cfg, run_dir)`` writes (rank 0 only; every rank gets the paths) under ``run_dir/data``::

    train.jsonl, val.jsonl             rule-labelled SteerLM SFT chats ("human" labels, ``demo.world``)
    train_reg.jsonl, val_reg.jsonl     the same answers as regression reward model rows (step 1's data)
    base_train.jsonl, base_val.jsonl   train / val chats without labels (``type`` null): the base LM's data
    ac_sft_chats.jsonl                 fresh chats the reward model re-annotates for AC-SFT (step 2; their
                                       rule labels only serve to score the annotation)

and trains a sentencepiece tokenizer (``<extra_id_0..2>`` markers) on the training chats into
``run_dir/tokenizer``. Every split is a separate seeded stream of ``steerlm_demo_records``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from megatron_align.data.steerlm.io import write_jsonl
from megatron_align.data.steerlm.records import SYSTEM_PROMPT
from megatron_align.demo.world import steerlm_demo_records, write_demo_data


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo's data and tokenizer are."""

    data: Path
    tokenizer: Path

    def file(self, name: str) -> Path:
        """``data/<name>.jsonl`` (names in the module docstring)."""
        return self.data / f"{name}.jsonl"


def unlabelled(record: dict) -> dict:
    """A copy of ``record`` with every turn's label removed and ``type`` null (a plain chat)."""
    out = copy.deepcopy(record)
    for turn in out["conversations"]:
        turn["label"] = None
    out["type"] = None
    return out


def tokenizer_texts(records: list[dict]) -> list[str]:
    """The corpus the tokenizer is trained on: the system prompt, role names, every turn and label."""
    texts = [SYSTEM_PROMPT, "System", "User", "Assistant"]
    for r in records:
        for t in r["conversations"]:
            texts.append(t["value"])
            if t.get("label"):
                texts.append(t["label"])
    return texts


def prepare_demo_data(cfg, run_dir: Path, write: bool) -> DemoPaths:
    """Write the files of the module docstring when ``write`` (rank 0); return their paths."""
    from megatron_align.tokenizers.training import train_sentencepiece

    d = cfg.data
    paths = DemoPaths(run_dir / "data", run_dir / "tokenizer")
    if not write:
        return paths
    write_demo_data(paths.data, d.num_train, d.num_val, d.seed)
    train = steerlm_demo_records(d.num_train, d.seed, "train")
    val = steerlm_demo_records(d.num_val, d.seed, "val")
    write_jsonl(paths.file("base_train"), (unlabelled(r) for r in train))
    write_jsonl(paths.file("base_val"), (unlabelled(r) for r in val))
    write_jsonl(paths.file("ac_sft_chats"), steerlm_demo_records(d.num_ac_sft, d.seed, "ac_sft"))
    train_sentencepiece(tokenizer_texts(train), str(paths.tokenizer), vocab_size=d.tokenizer_vocab_size,
                        seed=d.seed)
    return paths
