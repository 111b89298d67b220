"""SteerLM SFT records -> regression reward model rows ``{"text": ..., "label": [9 floats]}``.

Every turn with a non-empty label gives one row (a conversation rated at several turns gives several): the
conversation up to and including that turn in the extra_id chat template, then the label marker; the label is
the turn's attribute vector (``attributes.label_vector``: nine floats, -100.0 where unrated)::

    <extra_id_0>System\\n{system}\\n<extra_id_1>User\\n{prompt}\\n<extra_id_1>Assistant\\n{answer}\\n<extra_id_2>

The text is built with ``nemo_chat.chat_prompt`` (the template SFT training renders): the generation prompt
of the rated turn's role, the turn's text and ``end_of_turn``, then ``label_start`` - the point where a
``TEXT_TO_VALUE`` record's label begins. Labels of earlier turns are not written into the text. Role headers
are the turns' own ``from`` (NeMo-Aligner writes ``User`` for the ``mask`` role and ``Assistant`` for any
other: the same text for every record whose ``mask`` is ``User``, as all SteerLM records are).

As in NeMo-Aligner the system turn holds ``SYSTEM_PROMPT``, whatever the record's ``system`` says (the reward
model is served and annotates with that same prompt); pass ``system=None`` to use each record's own. Turns
with a ``null``, ``""`` or absent label give no row (NeMo-Aligner's rule); a malformed label, which
NeMo-Aligner would silently read as -100 or crash on, is a ``file:line: conversations[i].label: ...`` error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from megatron_align.config.data import ChatPromptTokens
from megatron_align.data.errors import RecordError
from megatron_align.data.nemo_chat import Turn, chat_prompt, parse_chat_record
from megatron_align.data.steerlm.attributes import LabelError, label_vector
from megatron_align.data.steerlm.io import read_rows, record_error, write_jsonl
from megatron_align.data.steerlm.records import SYSTEM_PROMPT


def regression_text(system: str, turns: list[Turn], index: int,
                    tokens: ChatPromptTokens | None = None) -> str:
    """The text the reward model rates for turn ``index``: system, ``turns[:index + 1]`` without labels, and
    the label marker (module docstring)."""
    t = tokens or ChatPromptTokens()
    history = [Turn(turn.role, turn.value) for turn in turns[:index]]
    rated = turns[index]
    return chat_prompt(system, history, t, role=rated.role) + f"{rated.value}{t.end_of_turn}{t.label_start}"


def _turns(record: object) -> tuple[list[Turn], str]:
    """Validated turns and system of an SFT record, as leniently as NeMo-Aligner reads them (empty turn
    texts allowed; ``nemo_chat.parse_chat_record(lenient=True)``)."""
    parsed = parse_chat_record(record, lenient=True)
    return list(parsed.turns), parsed.system


def regression_rows(record: object, system: str | None = SYSTEM_PROMPT,
                    tokens: ChatPromptTokens | None = None) -> list[dict]:
    """The regression rows of one SFT record (``system=None``: the record's own system prompt)."""
    turns, own_system = _turns(record)
    rows = []
    for i, turn in enumerate(turns):
        if not turn.label:
            continue
        try:
            label = label_vector(turn.label)
        except LabelError as e:
            raise RecordError(f"conversations[{i}].label", str(e)) from None
        text = regression_text(own_system if system is None else system, turns, i, tokens)
        rows.append({"text": text, "label": label})
    return rows


def convert_file(input_file: str | os.PathLike, output_file: str | os.PathLike,
                 system: str | None = SYSTEM_PROMPT) -> int:
    """``process_to_regression_format.py``: the records of ``input_file`` -> ``output_file``; returns rows."""

    def rows() -> Iterator[dict]:
        for number, record in read_rows(input_file):
            try:
                yield from regression_rows(record, system)
            except RecordError as e:
                raise record_error(input_file, number, e) from None

    return write_jsonl(output_file, rows())
