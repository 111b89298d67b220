"""OpenAssistant (oasst1) message trees -> SteerLM SFT records, split into train / val as NeMo-Aligner does.

Input: ``2023-04-12_oasst_all.trees.jsonl.gz`` (all trees, low-quality ones included), one tree per line::

    {"message_tree_id": ..., "prompt": {"role": "prompter", "text": ..., "labels": {...},
                                        "replies": [{"role": "assistant", "text": ..., "replies": [...]}]}}

Flattening: every path from the root prompt to a leaf message is one conversation (depth-first, replies in
file order), so a tree with ``k`` leaves gives ``k`` conversations sharing their prefixes; a one-message
path (a prompt nobody answered) is dropped. ``prompter`` -> ``User`` (label ``null``), ``assistant`` ->
``Assistant``.

Labels: OASST gives each message ``labels: {name: {"value": v in [0, 1], "count": n}}``. Of the names only
``quality``, ``toxicity``, ``humor`` and ``creativity`` are kept (``spam``, ``helpfulness``, ``violence``,
``fails_task``... are dropped), each scaled to the 0..4 Likert scale as ``round(v * 4)`` - Python's ``round``,
so halves go to the even value (0.625 -> 2.5 -> 2). An assistant message without ``labels`` has no ``label``
key; one whose labels hold none of the four gets ``""``.

Split: the trees (not the conversations) are shuffled with ``random.seed(10)`` and the first
``int(0.95 * n_trees)`` are train, the rest val - NeMo-Aligner's own split of the full dump, not the Hugging
Face train/validation files.
"""

from __future__ import annotations

import math
import os
import random

from megatron_align.data.errors import RecordError
from megatron_align.data.nemo_chat import json_type
from megatron_align.data.steerlm.attributes import LIKERT_MAX, OASST_ATTRIBUTES, LabelError, encode_label
from megatron_align.data.steerlm.io import read_rows, record_error, write_jsonl
from megatron_align.data.steerlm.records import ASSISTANT, USER, sft_record

OASST_FILE = "2023-04-12_oasst_all.trees.jsonl.gz"
"""The published dump (Hugging Face dataset ``OpenAssistant/oasst1``) NeMo-Aligner's script reads."""
TRAIN_PROPORTION = 0.95
SPLIT_SEED = 10
ROLES = {"prompter": USER, "assistant": ASSISTANT}
"""OASST role -> SteerLM role."""


def oasst_label(labels: object, field: str) -> str:
    """The label string of an OASST ``labels`` object (module docstring: which names, how scaled)."""
    if not isinstance(labels, dict):
        raise RecordError(field, f"expected an object of {{name: {{value, count}}}}, got {json_type(labels)}")
    values = {}
    for name in OASST_ATTRIBUTES:
        if name not in labels:
            continue
        entry = labels[name]
        value = entry.get("value") if isinstance(entry, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RecordError(f"{field}.{name}.value", f"expected a number in [0, 1], got {json_type(value)}")
        if not 0.0 <= value <= 1.0:
            raise RecordError(f"{field}.{name}.value", f"{value} is outside [0, 1]")
        # SteerLM (Dong et al. 2023, arXiv:2310.05344): attributes on a 0..4 scale; v in [0, 1] -> round(4 v)
        values[name] = round(value * LIKERT_MAX)
    try:
        return encode_label(values)
    except LabelError as e:  # pragma: no cover - values are in range by construction
        raise RecordError(field, str(e)) from None


def _turn(node: object, where: str) -> dict:
    if not isinstance(node, dict):
        raise RecordError(where, f"expected a message object, got {json_type(node)}")
    role = node.get("role")
    if role not in ROLES:
        shown = repr(role) if isinstance(role, str) else json_type(role)
        raise RecordError(f"{where}.role", f"unknown role {shown} (expected prompter or assistant)")
    text = node.get("text")
    if not isinstance(text, str):
        raise RecordError(f"{where}.text", f"expected a string, got {json_type(text)}")
    out = {"value": text, "from": ROLES[role]}
    if node.get("labels") is not None:
        out["label"] = oasst_label(node["labels"], f"{where}.labels")
    if out["from"] == USER:
        out["label"] = None  # user turns are never conditioned on
    return out


def _threads(node: object, where: str) -> list[list[dict]]:
    """Every root-to-leaf path below ``node`` (inclusive), depth-first."""
    head = _turn(node, where)
    replies = node.get("replies", [])
    if not isinstance(replies, list):
        raise RecordError(f"{where}.replies", f"expected an array of messages, got {json_type(replies)}")
    threads = []
    for i, reply in enumerate(replies):
        for tail in _threads(reply, f"{where}.replies[{i}]"):
            threads.append([dict(head), *tail])
    return threads or [[head]]


def tree_conversations(tree: object) -> list[list[dict]]:
    """The conversations (two turns or more) of one OASST tree, as SteerLM turn dicts."""
    if isinstance(tree, dict) and "prompt" in tree:
        root, where = tree["prompt"], "prompt"
    elif isinstance(tree, dict) and "role" in tree and "text" in tree:
        root, where = tree, "(message)"
    else:
        raise RecordError("prompt", "missing: expected a message tree ({message_tree_id, prompt: {...}})")
    return [conv for conv in _threads(root, where) if len(conv) > 1]


def split_trees(items: list, proportion: float = TRAIN_PROPORTION, seed: int = SPLIT_SEED,
                ) -> tuple[list, list]:
    """Shuffle ``items`` (one per tree, file order) as ``random.seed(seed); random.shuffle`` does and cut at
    ``int(proportion * len)``: (train, val)."""
    items = list(items)
    random.Random(seed).shuffle(items)
    cut = int(len(items) * proportion)
    return items[:cut], items[cut:]


def preprocess_oasst(input_file: str | os.PathLike, output_directory: str | os.PathLike) -> dict[str, int]:
    """Write ``train.jsonl`` and ``val.jsonl`` of ``output_directory`` from the trees file; returns counts."""
    per_tree = []
    for number, tree in read_rows(input_file):
        try:
            per_tree.append(tree_conversations(tree))
        except RecordError as e:
            raise record_error(input_file, number, e) from None
    train, val = split_trees(per_tree)
    os.makedirs(output_directory, exist_ok=True)
    counts = {"trees": len(per_tree)}
    for name, trees in (("train", train), ("val", val)):
        records = (sft_record(conv) for convs in trees for conv in convs)
        counts[name] = write_jsonl(os.path.join(output_directory, f"{name}.jsonl"), records)
    return counts
