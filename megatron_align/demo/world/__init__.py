"""The SteerLM demo data set: rule-labelled chats that stand in for human attribute annotations.

Chats are generated at run time from a seed (``generate``: a few milliseconds per thousand, the same bytes
everywhere), so nothing is shipped and the demo can ask for any size. Each answer is built to hit nine
independent, uniform target values 0..4 and labelled by the rules of ``measure`` (``measure_attributes``),
which also rate the demo's steered generations. ``vocab`` holds the word lists (a few hundred words:
a ~1k-piece tokenizer and a tiny model suffice); ``files`` writes train/val SFT and regression-RM JSONL
(``python -m megatron_align.demo.world --out DIR``); ``stats.spearman`` scores the steering.
"""

from megatron_align.demo.world.files import write_demo_data
from megatron_align.demo.world.generate import (
    Question,
    build_response,
    make_question,
    random_targets,
    steering_prompts,
    steerlm_demo_records,
)
from megatron_align.demo.world.measure import measure_attributes
from megatron_align.demo.world.stats import spearman

__all__ = [
    "Question",
    "build_response",
    "make_question",
    "measure_attributes",
    "random_targets",
    "spearman",
    "steering_prompts",
    "steerlm_demo_records",
    "write_demo_data",
]
