"""SteerLM 2.0 training records (seed 000's JSON lines), validated and tokenized into groups of responses.

Record, one JSON object per line (extra keys such as ``provenance`` are ignored)::

    {"system": str, "prompt_turns": [{"from": "User", "value": str}, ...], "label": str | null,
     "responses": [{"from": "Assistant", "value": str, "log(P(a|x,y))": number,
                    "log(P(y|x))": number, "log(Q(y|a,x))": number}, ...]}

``prompt_turns`` has an odd number of turns and ends with a ``User`` turn; every response has the same
``from``; the label is a SteerLM attribute string (``quality:4,toxicity:0,...``, parsed strictly). The three
log values are numbers or numeric strings (the seed's example writes strings); anything else (``"v1"``,
booleans, NaN, infinities) is an error naming the field, e.g. ``responses[1].log(P(y|x))``.

Each response is tokenized whole with its prompt, as NeMo-Aligner's ``SteerLM2Dataset`` renders it::

    {system_turn_start}System{end_of_name}{system}{end_of_turn}
    {turn_start}{from}{end_of_name}{value}{end_of_turn}        (each prompt turn)
    {turn_start}{response from}{end_of_name}{label_start}{label}{end_of_name}
    {response value}{end_of_turn}{turn_start}                   <- trained

(the label line is left out when ``label`` is null). A record whose longest response does not fit
``max_seq_length`` is dropped and counted (``overlong=drop``) or stops the run (``error``): it is never cut,
since the stored log Q'(y|a,x) covers the whole response.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from megatron_align.config.data import ChatPromptTokens
from megatron_align.data.errors import RecordError
from megatron_align.data.nemo_chat import SYSTEM_NAME, json_type
from megatron_align.data.preference_dataset import collate_rows
from megatron_align.data.record_file import RecordFile
from megatron_align.data.steerlm.attributes import LabelError, decode_label
from megatron_align.data.tokenize import Rendered, encode_rendered

LOG_FIELDS = ("log(P(a|x,y))", "log(P(y|x))", "log(Q(y|a,x))")
"""The three per-response log values of the seed's format, in this order."""
OVERLONG = ("drop", "error")
"""``model.steerlm2.overlong`` values."""


@dataclass
class SteerLM2Rules:
    """How records become items."""

    max_seq_length: int
    chat_prompt_tokens: ChatPromptTokens = field(default_factory=ChatPromptTokens)
    overlong: str = "drop"
    on_bad_record: str = "error"


@dataclass
class SteerLM2Item:
    """One prompt's n responses: token rows and the three log values per response (float64)."""

    sequences: list  # int64 [T_i] per response
    targets: list  # bool [T_i]: the response's tokens
    log_p_a: np.ndarray  # float64 [n] log P(a|x,y_i)
    log_p_y: np.ndarray  # float64 [n] log P(y_i|x)
    log_q_prime: np.ndarray  # float64 [n] log Q'(y_i|a,x)
    source: str = ""


def log_value(value: object, where: str) -> float:
    """A log value given as a number or a numeric string; ``RecordError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RecordError(where, f"expected a number, got {json_type(value)}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise RecordError(where, f"{value!r} is not a number") from None
    if not math.isfinite(value):
        raise RecordError(where, f"{value} is not a finite number")
    return float(value)


def _string(obj: dict, key: str, where: Optional[str] = None) -> str:
    where = where or key
    if key not in obj:
        raise RecordError(where, "missing")
    if not isinstance(obj[key], str):
        raise RecordError(where, f"expected a string, got {json_type(obj[key])}")
    return obj[key]


def steerlm2_prompt(system: str, turns: Sequence[tuple[str, str]], role: str, label: Optional[str],
                    t: ChatPromptTokens) -> str:
    """The text a response follows: the system turn, the ``(role, value)`` turns, the responder's header and,
    with ``label``, the label line (module docstring)."""
    parts = [f"{t.system_turn_start}{SYSTEM_NAME}{t.end_of_name}{system}{t.end_of_turn}"]
    parts += [f"{t.turn_start}{r}{t.end_of_name}{v}{t.end_of_turn}" for r, v in turns]
    parts.append(f"{t.turn_start}{role}{t.end_of_name}")
    if label is not None:
        parts.append(f"{t.label_start}{label}{t.end_of_name}")
    return "".join(parts)


def response_text(value: str, t: ChatPromptTokens) -> str:
    """What a response adds after its prompt (and what is trained): ``{value}{end_of_turn}{turn_start}``."""
    return f"{value}{t.end_of_turn}{t.turn_start}"


def render_prompt(obj: dict, t: ChatPromptTokens) -> tuple[str, str, list[dict]]:
    """(prompt text up to the response, the responses' role, the responses) of a record; ``RecordError``."""
    if not isinstance(obj, dict):
        raise RecordError("(record)", f"expected a JSON object, got {json_type(obj)}")
    system = _string(obj, "system")
    turns = obj.get("prompt_turns")
    if not isinstance(turns, list) or not turns:
        raise RecordError("prompt_turns", "missing" if turns is None else "expected a non-empty list")
    if len(turns) % 2 == 0:
        raise RecordError("prompt_turns", f"{len(turns)} turns: the prompt ends with a User turn (an odd "
                          "number of turns)")
    pairs = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"prompt_turns[{i}]", f"expected an object, got {json_type(turn)}")
        pairs.append((_string(turn, "from", f"prompt_turns[{i}].from"),
                      _string(turn, "value", f"prompt_turns[{i}].value")))
    responses = obj.get("responses")
    if not isinstance(responses, list) or not responses:
        raise RecordError("responses", "missing" if responses is None else "expected a non-empty list")
    roles = set()
    for i, r in enumerate(responses):
        if not isinstance(r, dict):
            raise RecordError(f"responses[{i}]", f"expected an object, got {json_type(r)}")
        roles.add(_string(r, "from", f"responses[{i}].from"))
    if len(roles) > 1:
        raise RecordError("responses", f"responses from several roles {sorted(roles)}; one role answers")
    role = roles.pop()
    label = obj.get("label")
    if label is not None:
        if not isinstance(label, str):
            raise RecordError("label", f"expected a string or null, got {json_type(label)}")
        try:
            decode_label(label)
        except LabelError as e:
            raise RecordError("label", str(e)) from None
    return steerlm2_prompt(system, pairs, role, label, t), role, responses


class SteerLM2File(RecordFile):
    """One file of SteerLM 2.0 records; ``item(k)`` is record ``k`` tokenized, or None (counted)."""

    def __init__(self, path, tokenizer, rules: SteerLM2Rules, index_dir: Optional[str] = None):
        if rules.overlong not in OVERLONG:
            raise ValueError(f"overlong={rules.overlong!r} is not one of {'|'.join(OVERLONG)}")
        super().__init__(path, rules.on_bad_record, index_dir)
        self.rules, self.tokenizer = rules, tokenizer

    def parse(self, obj: object, k: int) -> Optional[SteerLM2Item]:
        t = self.rules.chat_prompt_tokens
        prompt, _, responses = render_prompt(obj, t)
        seqs, targets, logs = [], [], []
        for i, r in enumerate(responses):
            value = _string(r, "value", f"responses[{i}].value")
            row = []
            for key in LOG_FIELDS:
                if key not in r:
                    raise RecordError(f"responses[{i}].{key}", "missing")
                row.append(log_value(r[key], f"responses[{i}].{key}"))
            logs.append(row)
            answer = response_text(value, t)
            enc = encode_rendered(Rendered(prompt + answer, ((len(prompt), len(prompt) + len(answer)),)),
                                  self.tokenizer)
            if enc.boundary_merges:
                self.report.add("boundary_merge", f"{self.file.where(k)}: responses[{i}]: a token spans the "
                                "prompt's end and the response's start (trained)", key=(k, i))
            seqs.append(enc.ids)
            targets.append(enc.target_mask)
        longest = max(len(s) for s in seqs)
        if longest > self.rules.max_seq_length:
            what = (f"{self.file.where(k)}: {longest} tokens > max_seq_length={self.rules.max_seq_length} "
                    "(a response is never cut: its log Q' covers all of it)")
            if self.rules.overlong == "error":
                raise RecordError("responses", what.split(": ", 1)[1])
            self.report.add("over_length_dropped", f"{what}; replaced by the next record", key=k)
            return None
        arr = np.asarray(logs, dtype=np.float64)  # [n, 3]
        return SteerLM2Item(seqs, targets, arr[:, 0], arr[:, 1], arr[:, 2], source=self.file.where(k))


def collate_steerlm2(items: Sequence[SteerLM2Item], pad_id: int, seq_length: Optional[int] = None,
                     pad_to_multiple_of: int = 16) -> dict:
    """Items -> all their responses as rows (``collate_rows``), plus ``offsets`` ``int64 [G + 1]`` and the
    log values ``log_p_a`` / ``log_p_y`` / ``log_q_prime`` ``float64 [R]``."""
    if not items:
        raise ValueError("cannot collate an empty list of items")
    batch = collate_rows([s for it in items for s in it.sequences], [t for it in items for t in it.targets],
                         pad_id, seq_length, pad_to_multiple_of)
    offsets = np.concatenate(([0], np.cumsum([len(it.sequences) for it in items])))
    batch["offsets"] = torch.from_numpy(offsets.astype(np.int64))
    for key in ("log_p_a", "log_p_y", "log_q_prime"):
        batch[key] = torch.from_numpy(np.concatenate([getattr(it, key) for it in items]))
    return batch
