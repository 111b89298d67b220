"""Shared helpers of the tests/unit/data/ files: tiny tokenizers trained once per process on the
NeMo-Aligner fixtures in tests/data, and a JSONL writer."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

from tests.helpers import ROOT

DATA = ROOT / "tests" / "data"
SFT_FIXTURE = DATA / "dummy-sft.jsonl"
KD_FIXTURE = DATA / "synthetic-kd.jsonl"

SEED_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
               "The assistant gives helpful, detailed, and polite answers to the user's questions.")
"""The system prompt of the SteerLM document's inference example."""
SEED_VALUES = ("quality:4,toxicity:0,humor:0,creativity:0,helpfulness:4,correctness:4,coherence:4,"
               "complexity:4,verbosity:4")
"""``encode_labels(values)`` of the SteerLM document's example."""


def _corpus() -> list[str]:
    texts = []
    for line in SFT_FIXTURE.read_text().splitlines():
        rec = json.loads(line)
        texts += [t["value"] for t in rec["conversations"]]
    for line in KD_FIXTURE.read_text().splitlines():
        rec = json.loads(line)
        texts += [rec["input"], rec["output"]]
    texts += [SEED_SYSTEM, SEED_VALUES, "System\nUser\nAssistant\n", "héllo wörld ✓ 日本語 — naïve café"]
    return texts


@functools.cache
def sp_tokenizer():
    """A sentencepiece BPE (Llama-2 style: dummy prefix, byte fallback, ``<extra_id_0..2>`` user symbols)."""
    from megatron_align.tokenizers import load_tokenizer, train_sentencepiece

    out = tempfile.mkdtemp(prefix="ma_data_sp_")
    path = train_sentencepiece(_corpus(), out, vocab_size=1200)
    return load_tokenizer("sentencepiece", path)


@functools.cache
def hf_tokenizer():
    """A byte-level BPE in an HF directory whose tokenizer_config.json carries the SteerLM Jinja template."""
    from megatron_align.tokenizers import load_tokenizer, train_hf_bpe

    out = tempfile.mkdtemp(prefix="ma_data_hf_")
    return load_tokenizer("huggingface", train_hf_bpe(_corpus(), out, vocab_size=1200))


def write_jsonl(path: Path, lines: list) -> Path:
    """Write ``lines`` (dicts are JSON-encoded, strings written as they are) one per line."""
    with open(path, "w", encoding="utf-8") as f:
        for x in lines:
            f.write((x if isinstance(x, str) else json.dumps(x)) + "\n")
    return path
