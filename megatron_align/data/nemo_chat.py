"""NeMo chat SFT records: validation, the extra_id chat template, and which parts of a chat are trained.

Record (NeMo / NeMo-Aligner chat SFT JSONL, e.g. ``dummy-sft.jsonl``; unknown keys are ignored)::

    {"system": str, "mask": "User", "type": "VALUE_TO_TEXT" | "TEXT_TO_VALUE" | null,
     "conversations": [{"from": "User", "value": str, "label": str | null}, {"from": "Assistant", ...}]}

Template, as the SteerLM document writes it (markers from ``model.data.chat_prompt_tokens``; shown with the
defaults ``<extra_id_0/1/2>`` and ``end_of_turn`` = ``end_of_name`` = ``\\n``)::

    <extra_id_0>System\\n{system}\\n
    <extra_id_1>User\\n{user turn}\\n
    <extra_id_1>Assistant\\n<extra_id_2>{label}\\n{assistant turn}\\n
    <extra_id_1>                        <- closes a conversation that ends with an answer

(one string; wrapped here after each turn). The label line ``{label_start}{label}{end_of_name}`` appears only
for a turn whose ``label`` is a string and only when the record's ``type`` is set: before the turn text for
``VALUE_TO_TEXT`` (SteerLM: the answer is conditioned on attribute values), after it for ``TEXT_TO_VALUE``
(the values are predicted from the text). Without ``type`` labels are ignored, as in NeMo.

Trained (target) text, as NeMo-Aligner's chat SFT trains it:

* an answer is a turn whose role is not ``mask`` (the ``Assistant``), except a conversation's first turn
  (``VALUE_TO_TEXT`` / no type), which is context for the rest;
* of an answer, ``{text}{end_of_turn}`` is trained, and the ``turn_start`` marker right after it (the next
  turn's, or the closing one) - that marker is how the model learns to stop (generation ends on
  ``<extra_id_1>``);
* with ``TEXT_TO_VALUE`` and a label, the label ``{label}{end_of_name}`` is trained instead of the text;
* everything else is context: the system turn, user turns, role headers, and the label line of
  ``VALUE_TO_TEXT``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from megatron_align.config.data import ChatPromptTokens
from megatron_align.data.errors import RECORD_FIELD, RecordError
from megatron_align.data.tokenize import Rendered, TextBuilder, encode_rendered

ROLES: tuple[str, ...] = ("User", "Assistant")
"""Roles (``from``) a NeMo chat record may use."""
CHAT_TYPES: tuple[str, ...] = ("VALUE_TO_TEXT", "TEXT_TO_VALUE")
"""Values of a record's ``type`` (null/absent: no labels)."""
SYSTEM_NAME = "System"
"""The role name written in the system turn header."""


def json_type(value: object) -> str:
    """The JSON name of ``value``'s type, with its article (``a string``, ``an array``, ``null``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _choices(options: Sequence[str]) -> str:
    return " or ".join(options) if len(options) <= 2 else ", ".join(options[:-1]) + " or " + options[-1]


@dataclass(frozen=True)
class Turn:
    """One turn of a conversation."""

    role: str
    """``from``: ``User`` or ``Assistant``."""
    value: str
    """The turn's text."""
    label: str | None = None
    """SteerLM attribute string (``quality:4,toxicity:0,...``) or None."""


@dataclass(frozen=True)
class ChatRecord:
    """A validated NeMo chat record."""

    system: str
    """System prompt (may be empty)."""
    turns: tuple[Turn, ...]
    """The conversation, in order."""
    mask: str = "User"
    """The role whose turns are never trained."""
    type: str | None = None
    """``VALUE_TO_TEXT``, ``TEXT_TO_VALUE`` or None (labels ignored)."""

    def answer_turns(self) -> list[int]:
        """Indices of the turns that are answers (trained; see the module docstring)."""
        return [i for i, t in enumerate(self.turns)
                if t.role != self.mask and not (i == 0 and self.type != "TEXT_TO_VALUE")]


def parse_chat_record(obj: object, roles: Sequence[str] = ROLES, lenient: bool = False) -> ChatRecord:
    """Validate a decoded JSON line as a NeMo chat record; ``RecordError(field, problem)`` when it is not.

    ``lenient``: what NeMo-Aligner's ``process_to_regression_format.py`` accepts - empty turn texts and an
    empty conversation, and ``mask`` / ``type`` left unchecked (the regression rows do not use them)."""
    if not isinstance(obj, dict):
        raise RecordError(RECORD_FIELD, f"expected a JSON object, got {json_type(obj)}")
    system = obj.get("system", "")
    if system is None:
        system = ""
    if not isinstance(system, str):
        raise RecordError("system", f"expected a string, got {json_type(system)}")
    mask = obj.get("mask", "User")
    ctype = obj.get("type")
    if lenient:
        mask = mask if mask in roles else "User"
        ctype = ctype if ctype in CHAT_TYPES else None
    if not isinstance(mask, str):
        raise RecordError("mask", f"expected a string, got {json_type(mask)}")
    if mask not in roles:
        raise RecordError("mask", f"unknown role {mask!r} (expected {_choices(roles)})")
    if ctype is not None and ctype not in CHAT_TYPES:
        shown = repr(ctype) if isinstance(ctype, str) else json_type(ctype)
        raise RecordError("type", f"unknown type {shown} (expected {_choices(CHAT_TYPES)} or null)")
    if "conversations" not in obj:
        hint = " (this looks like a prompt/answer record: set model.data.chat=False)" if (
            "input" in obj or "prompt" in obj) else ""
        raise RecordError("conversations",
                          f"missing: a chat record needs a list of {{from, value}} turns{hint}")
    convs = obj["conversations"]
    if not isinstance(convs, list):
        raise RecordError("conversations", f"expected an array of turns, got {json_type(convs)}")
    if not convs and not lenient:
        raise RecordError("conversations", "empty: a conversation needs at least one turn")
    turns = []
    for i, t in enumerate(convs):
        where = f"conversations[{i}]"
        if not isinstance(t, dict):
            raise RecordError(where, f"expected an object with from and value, got {json_type(t)}")
        for key in ("from", "value"):
            if key not in t:
                raise RecordError(f"{where}.{key}", "missing")
            if not isinstance(t[key], str):
                raise RecordError(f"{where}.{key}", f"expected a string, got {json_type(t[key])}")
        if t["from"] not in roles:
            raise RecordError(f"{where}.from", f"unknown role {t['from']!r} (expected {_choices(roles)})")
        if not t["value"].strip() and not lenient:
            raise RecordError(f"{where}.value", "empty turn")
        label = t.get("label")
        if label is not None and not isinstance(label, str):
            raise RecordError(f"{where}.label", f"expected a string or null, got {json_type(label)}")
        turns.append(Turn(t["from"], t["value"], label))
    return ChatRecord(system=system, turns=tuple(turns), mask=mask, type=ctype)


def label_line(label: str, tokens: ChatPromptTokens) -> str:
    """``{label_start}{label}{end_of_name}``: SteerLM's attribute line (``<extra_id_2>quality:4,...\\n``)."""
    return f"{tokens.label_start}{label}{tokens.end_of_name}"


def render_chat(record: ChatRecord, tokens: ChatPromptTokens | None = None) -> Rendered:
    """The record in NeMo's chat template with its trained spans (rules in the module docstring)."""
    t = tokens or ChatPromptTokens()
    out = TextBuilder()
    out.add(f"{t.system_turn_start}{SYSTEM_NAME}{t.end_of_name}{record.system}{t.end_of_turn}")
    answers = set(record.answer_turns())
    for i, turn in enumerate(record.turns):
        out.add(t.turn_start, trained=out.ends_trained())  # closes the previous answer
        out.add(f"{turn.role}{t.end_of_name}")
        has_label = record.type is not None and turn.label is not None
        if has_label and record.type == "VALUE_TO_TEXT":
            out.add(label_line(turn.label, t))
        if has_label and record.type == "TEXT_TO_VALUE":
            out.add(f"{turn.value}{t.end_of_turn}{t.label_start}")
            out.add(f"{turn.label}{t.end_of_name}", trained=i in answers)
        else:
            out.add(f"{turn.value}{t.end_of_turn}", trained=i in answers)
    if record.turns[-1].role != record.mask:
        out.add(t.turn_start, trained=out.ends_trained())
    return out.build()


def chat_prompt(system: str, history: Sequence[Turn], tokens: ChatPromptTokens | None = None,
                label: str | None = None, role: str = "Assistant") -> str:
    """The generation prompt: ``system`` and ``history`` in the template, then the header of ``role``'s turn
    and, with ``label``, the SteerLM label line - the exact text the model continues from.

    ``chat_prompt("...", [Turn("User", q)], label="quality:4,...")`` is the SteerLM document's prompt
    ``<extra_id_0>System\\n...\\n<extra_id_1>User\\n{q}\\n<extra_id_1>Assistant\\n<extra_id_2>quality:4,...\\n``.
    History labels are written as ``VALUE_TO_TEXT`` records write them.
    """
    t = tokens or ChatPromptTokens()
    parts = [f"{t.system_turn_start}{SYSTEM_NAME}{t.end_of_name}{system}{t.end_of_turn}"]
    for turn in history:
        parts.append(f"{t.turn_start}{turn.role}{t.end_of_name}")
        if turn.label is not None:
            parts.append(label_line(turn.label, t))
        parts.append(f"{turn.value}{t.end_of_turn}")
    parts.append(f"{t.turn_start}{role}{t.end_of_name}")
    if label is not None:
        parts.append(label_line(label, t))
    return "".join(parts)


def encode_chat(record: dict | ChatRecord, tokenizer, prompt_tokens: ChatPromptTokens | None = None,
                add_eos: bool = False, add_bos: bool = False) -> tuple[list[int], list[int]]:
    """Token ids and a 0/1 target mask (1 = trained token) of one chat record, tokenized as a whole.

    A convenience for scripts and the demo; datasets use ``megatron_align.data.SFTDataset``.
    """
    rec = record if isinstance(record, ChatRecord) else parse_chat_record(record)
    enc = encode_rendered(render_chat(rec, prompt_tokens), tokenizer, add_bos=add_bos, add_eos=add_eos)
    return enc.ids.tolist(), enc.target_mask.astype(int).tolist()
