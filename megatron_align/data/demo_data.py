"""The built-in demo dataset: small multi-turn-free chats in NeMo's chat SFT JSONL format.

Generated deterministically from a seed (no download, no file shipped): a user asks a short arithmetic or
word question and the assistant answers in one fixed sentence pattern. A tiny model learns the pattern within
a minute of CPU training, which is what the demo shows.

Record format (as NeMo-Aligner's SFT files, e.g. ../shared/fixtures/nemo_aligner/dummy-sft.jsonl):
``{"system": str, "mask": "User", "type": "TEXT_TO_VALUE", "conversations": [{"from": "User", "value": ...},
{"from": "Assistant", "value": ...}]}``.
"""

from __future__ import annotations

import random

SYSTEM = "A chat between a curious user and an artificial intelligence assistant."
_WORDS = ["apple", "river", "stone", "cloud", "tiger", "maple", "ocean", "piano", "lemon", "candle", "forest",
          "rocket", "garden", "silver", "window", "yellow"]


def _qa(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randrange(10), rng.randrange(10)
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    if kind == 1:
        w = rng.choice(_WORDS)
        return f"Spell the word {w}.", f"The word {w} is spelled {' '.join(w)}."
    w = rng.choice(_WORDS)
    return f"How many letters are in {w}?", f"The word {w} has {len(w)} letters."


def demo_records(n: int, seed: int) -> list[dict]:
    """``n`` chat records in NeMo chat SFT format."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q, a = _qa(rng)
        out.append({
            "system": SYSTEM,
            "mask": "User",
            "type": "TEXT_TO_VALUE",
            "conversations": [{"from": "User", "value": q, "label": None},
                              {"from": "Assistant", "value": a, "label": None}],
        })
    return out
