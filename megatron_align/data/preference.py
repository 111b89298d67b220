"""Preference records, parsed and checked: NeMo-Aligner's DPO pairs and the EXO repository's four formats.

NeMo-Aligner (``DPOModelDataset``; docs/preference_research.md B.1), one JSON object per line:
    {"prompt": str | [messages], "chosen_response": str | message, "rejected_response": str | message,
     "chosen_reward": number?, "rejected_reward": number?}
missing rewards take ``model.data.default_chosen_reward`` / ``default_rejected_reward`` (1 and 0). A chat
prompt is a list of ``{"role": system|user|assistant, "content": str}`` with at most one system message; a
chat response is one assistant message (or a plain string).

EXO (its ``src/utils/data``; B.2): ``{prompt, chosen}`` (SFT), ``{prompt, chosen, rejected}`` (preference),
``{prompt, completions}`` (samples) and ``{prompt, completions, rewards}`` (reward-labelled); ``pref_to_rw``
turns a preference record into completions ``[chosen, rejected]`` with rewards ``[1, 0]``, as the
repository's ``pref_to_rw.py`` does. ``check_contrastive`` applies its rule for K contrastive samples:
N <= K, N divides K, N = 2 for the ``*-pref`` losses.

Every problem is a ``RecordError`` naming the field; the readers turn it into ``file:line: field: problem`` or
a counted skip (``on_bad_record``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

from megatron_align.data.errors import RecordError
from megatron_align.data.nemo_chat import json_type

Message = dict
Prompt = Union[str, list]
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PreferencePair:
    """One DPO pair; ``prompt`` a string or a list of messages, responses as strings."""

    prompt: Prompt
    chosen: str
    rejected: str
    chosen_reward: float
    rejected_reward: float


@dataclass(frozen=True)
class CompletionGroup:
    """One prompt and its K completions, with rewards (None for unlabelled samples)."""

    prompt: str
    completions: list
    rewards: Optional[list] = None


def _number(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(field, f"expected a number, got {json_type(value)}")
    if not math.isfinite(value):
        raise RecordError(field, f"{value} is not a finite number")
    return float(value)


def _text(obj: dict, field: str) -> str:
    if field not in obj:
        raise RecordError(field, "missing")
    value = obj[field]
    if not isinstance(value, str):
        raise RecordError(field, f"expected a string, got {json_type(value)}")
    return value


def _messages(value: list, field: str) -> list:
    systems = 0
    for i, msg in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(msg, dict):
            raise RecordError(where, f"expected a message object, got {json_type(msg)}")
        role = msg.get("role")
        if role not in ROLES:
            raise RecordError(f"{where}.role", f"expected one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(msg.get("content"), str):
            raise RecordError(f"{where}.content", f"expected a string, got {json_type(msg.get('content'))}")
        systems += role == "system"
    if systems > 1:
        raise RecordError(field, f"{systems} system messages; at most one")
    if not value:
        raise RecordError(field, "an empty message list")
    return value


def _prompt(obj: dict) -> Prompt:
    if "prompt" not in obj:
        raise RecordError("prompt", "missing")
    value = obj["prompt"]
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _messages(value, "prompt")
    raise RecordError("prompt", f"expected a string or a list of messages, got {json_type(value)}")


def _response(obj: dict, field: str) -> str:
    if field not in obj:
        raise RecordError(field, "missing")
    value = obj[field]
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if value.get("role", "assistant") != "assistant":
            raise RecordError(f"{field}.role", f"expected assistant, got {value.get('role')!r}")
        if not isinstance(value.get("content"), str):
            raise RecordError(f"{field}.content", f"expected a string, got {json_type(value.get('content'))}")
        return value["content"]
    raise RecordError(field, f"expected a string or an assistant message, got {json_type(value)}")


def parse_dpo_record(obj: object, default_chosen_reward: float = 1.0,
                     default_rejected_reward: float = 0.0) -> PreferencePair:
    """A NeMo-Aligner DPO line -> ``PreferencePair`` (``RecordError`` for the first problem)."""
    if not isinstance(obj, dict):
        raise RecordError("(record)", f"expected a JSON object, got {json_type(obj)}")
    prompt = _prompt(obj)
    chosen, rejected = _response(obj, "chosen_response"), _response(obj, "rejected_response")
    rc = obj.get("chosen_reward", default_chosen_reward)
    rr = obj.get("rejected_reward", default_rejected_reward)
    return PreferencePair(prompt, chosen, rejected, _number(rc, "chosen_reward"),
                          _number(rr, "rejected_reward"))


def parse_exo_record(obj: object) -> CompletionGroup:
    """Any of the EXO repository's four record kinds -> ``CompletionGroup`` (a preference record through
    ``pref_to_rw``; an SFT record is one completion without rewards)."""
    if not isinstance(obj, dict):
        raise RecordError("(record)", f"expected a JSON object, got {json_type(obj)}")
    prompt = _text(obj, "prompt")
    if "completions" in obj:
        completions = obj["completions"]
        if not isinstance(completions, list):
            raise RecordError("completions", f"expected an array, got {json_type(completions)}")
        if not completions:
            raise RecordError("completions", "empty: a prompt needs at least one completion")
        for i, c in enumerate(completions):
            if not isinstance(c, str):
                raise RecordError(f"completions[{i}]", f"expected a string, got {json_type(c)}")
        rewards = None
        if "rewards" in obj:
            raw = obj["rewards"]
            if not isinstance(raw, list):
                raise RecordError("rewards", f"expected an array, got {json_type(raw)}")
            if len(raw) != len(completions):
                raise RecordError("rewards", f"{len(raw)} rewards for {len(completions)} completions")
            rewards = [_number(r, f"rewards[{i}]") for i, r in enumerate(raw)]
        return CompletionGroup(prompt, list(completions), rewards)
    chosen = _text(obj, "chosen")
    if "rejected" in obj:
        return CompletionGroup(prompt, [chosen, _text(obj, "rejected")], [1.0, 0.0])
    return CompletionGroup(prompt, [chosen], None)


def pref_to_rw(obj: dict) -> dict:
    """The EXO repository's conversion: ``{prompt, chosen, rejected}`` -> ``{prompt, completions,
    rewards}``."""
    group = parse_exo_record({k: obj[k] for k in ("prompt", "chosen", "rejected") if k in obj})
    if group.rewards is None:
        raise RecordError("rejected", "missing (a preference record has chosen and rejected)")
    return {"prompt": group.prompt, "completions": group.completions, "rewards": group.rewards}


def check_contrastive(group: CompletionGroup, num_contrastive: int, loss: str) -> None:
    """The EXO rule for this row: rewards present, N <= K, N divides K, N = 2 for ``exo-pref`` /
    ``dpo-pref``."""
    k = len(group.completions)
    if group.rewards is None:
        raise RecordError("rewards", f"missing: preference_loss={loss} needs rewarded completions")
    if num_contrastive > k:
        raise RecordError("completions", f"{k} completions, fewer than num_contrastive={num_contrastive}")
    if k % num_contrastive:
        raise RecordError("completions", f"{k} completions do not split into groups of "
                                         f"num_contrastive={num_contrastive}")
    if loss.endswith("-pref") and num_contrastive != 2:
        raise RecordError("completions", f"preference_loss={loss} compares pairs: num_contrastive must be 2")
