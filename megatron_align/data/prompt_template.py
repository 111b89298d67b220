"""Prompt/answer records rendered with a prompt template: NeMo's ``{input, output}`` and EXO's
``{prompt, chosen}``.

NeMo SFT (``model.data.chat=False``): ``model.data.train_ds.prompt_template`` (default
``"{input} {output}"``) names record fields in braces and must end with ``{label_key}`` (default ``output``),
the answer. EXO's SFT data ``{"prompt": ..., "chosen": ...}`` is the same thing with the template
``"{prompt}{chosen}"`` (its prompts already carry their own formatting) and ``label_key="chosen"``; other
keys of a record (EXO preference data's ``rejected``) are ignored.

Fields are substituted literally (braces inside values are safe). The answer and the whitespace that
separates it from the prompt are trained; everything before is context. The separating spaces belong to the
answer because BPE tokenizers attach a leading space to the next word (``▁The``/``ĠThe``): the generation
prompt (``PromptTemplate.prompt``) therefore ends before them, and the model produces them as it would in
training.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from megatron_align.data.errors import RECORD_FIELD, RecordError
from megatron_align.data.nemo_chat import json_type
from megatron_align.data.tokenize import Rendered, TextBuilder

PLACEHOLDER = re.compile(r"\{(\w+)\}")
"""A field reference in a prompt template."""

INPUT_OUTPUT = ("{input} {output}", "output")
"""NeMo's default prompt template and label key."""
PROMPT_CHOSEN = ("{prompt}{chosen}", "chosen")
"""EXO's SFT format: the prompt text followed by the chosen response."""


def default_template(record: object) -> tuple[str, str]:
    """``(prompt_template, label_key)`` for a record when none is configured: EXO's for
    ``{prompt, chosen}`` records, NeMo's default otherwise."""
    if isinstance(record, dict) and "prompt" in record and "chosen" in record and "input" not in record:
        return PROMPT_CHOSEN
    return INPUT_OUTPUT


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt template such as ``"Q: {input}\\nA: {output}"``; its last field, ``label_key``, is the
    answer."""

    template: str
    """Text with ``{field}`` references; ends with ``{label_key}``."""
    label_key: str = "output"
    """The field holding the answer."""

    def __post_init__(self) -> None:
        names = PLACEHOLDER.findall(self.template)
        if not self.template.endswith("{" + self.label_key + "}") or names.count(self.label_key) != 1:
            raise ValueError(f"prompt_template {self.template!r} must end with {{{self.label_key}}} (the "
                             "answer, label_key) and contain it once")

    @property
    def fields(self) -> tuple[str, ...]:
        """The record fields the template uses, in order of first use."""
        return tuple(dict.fromkeys(PLACEHOLDER.findall(self.template)))

    def parse(self, obj: object) -> dict[str, str]:
        """The template's fields of a decoded JSON line; ``RecordError(field, problem)`` when unusable."""
        if not isinstance(obj, dict):
            raise RecordError(RECORD_FIELD, f"expected a JSON object, got {json_type(obj)}")
        values = {}
        for name in self.fields:
            if name not in obj:
                hint = (" (this looks like a chat record: set model.data.chat=True)"
                        if "conversations" in obj else "")
                raise RecordError(name, f"missing (prompt_template {self.template!r} uses it){hint}")
            value = obj[name]
            if not isinstance(value, str):
                raise RecordError(name, f"expected a string, got {json_type(value)}")
            values[name] = value
        if not values[self.label_key].strip():
            raise RecordError(self.label_key, "empty answer")
        return values

    def prompt(self, values: Mapping[str, str]) -> str:
        """The generation prompt: the template up to the answer, fields filled, trailing spaces dropped."""
        return self._fill_head(values).rstrip(" ")

    def _fill_head(self, values: Mapping[str, str]) -> str:
        head = self.template[: -len("{" + self.label_key + "}")]
        return PLACEHOLDER.sub(lambda m: values[m.group(1)], head)

    def render(self, values: Mapping[str, str]) -> Rendered:
        """The sample text; the answer and the spaces before it are the target."""
        head = self._fill_head(values)
        prompt = head.rstrip(" ")
        out = TextBuilder()
        out.add(prompt)
        out.add(head[len(prompt):] + values[self.label_key], trained=True)
        return out.build()
