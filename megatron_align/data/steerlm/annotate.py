"""SteerLM attribute annotation: a regression reward model's predictions -> each answer's ``label`` string.

What NeMo-Aligner's ``attribute_annotate.py`` does, as reusable logic (the script over HTTP is
``examples/nlp/data/steerlm/attribute_annotate.py``; an in-process scorer works the same way):

* **which turns**: ``turns="assistant"`` (default) rates every ``Assistant`` turn, labelled or not;
  ``turns="labeled"`` is NeMo-Aligner's rule, every turn whose ``label`` is present and not ``null`` (a
  record without labels is then copied unchanged).
* **what is scored**: for rated turn ``i``, the text the regression reward model was trained on
  (``regression.regression_text``): the system turn (NeMo-Aligner's ``SYSTEM_PROMPT`` unless ``system=None``),
  turns ``0..i`` without their labels, then the label marker ``<extra_id_2>``.
* **the label**: ``rewards_to_label``: each of the nine predictions clamped to ``[0, 4]`` and rounded with
  Python's ``round`` (half to even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4), written
  ``quality:q,toxicity:t,...,verbosity:v`` in ``attributes.STEERLM_ATTRIBUTES`` order.

``score(texts) -> rewards`` is any callable returning one list of nine floats per text (an HTTP client of
``serve_reward_model.py``, or a model forward in-process). ``annotate_batches`` calls it with at most
``batch_size`` texts at a time, records grouped so that a batch spans several records; records come back as
new dicts (the input is not modified), keys in their original order, only rated turns' ``label`` changed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Sequence

from megatron_align.config.data import ChatPromptTokens
from megatron_align.data.errors import RecordError
from megatron_align.data.steerlm.attributes import LIKERT_MAX, STEERLM_ATTRIBUTES, LabelError, decode_label
from megatron_align.data.steerlm.records import ASSISTANT, SYSTEM_PROMPT
from megatron_align.data.steerlm.regression import _turns, regression_text

Scorer = Callable[[list[str]], Sequence[Sequence[float]]]
"""``score(texts)``: one row of ``len(STEERLM_ATTRIBUTES)`` predictions per text."""
TURN_RULES: tuple[str, ...] = ("assistant", "labeled")
"""Which turns are rated (module docstring)."""


def rewards_to_label(values: Sequence[float]) -> str:
    """Nine predictions -> ``quality:4,toxicity:0,...`` (each clamped to 0..4, rounded half to even)."""
    if len(values) != len(STEERLM_ATTRIBUTES):
        raise ValueError(f"{len(values)} reward values; a SteerLM label needs {len(STEERLM_ATTRIBUTES)} "
                         f"({', '.join(STEERLM_ATTRIBUTES)}): is this a 9-attribute regression reward model?")
    out = []
    for name, v in zip(STEERLM_ATTRIBUTES, values):
        v = float(v)
        if math.isnan(v):
            raise ValueError(f"{name}: the reward model predicted NaN")
        out.append(f"{name}:{round(min(max(v, 0.0), float(LIKERT_MAX)))}")
    return ",".join(out)


def rated_turns(record: object, turns: str = "assistant") -> list[int]:
    """Indices of the turns ``record`` gets labels for (validates the record: ``RecordError``)."""
    if turns not in TURN_RULES:
        raise ValueError(f"turns={turns!r} is not one of {' | '.join(TURN_RULES)}")
    parsed, _ = _turns(record)
    if turns == "assistant":
        return [i for i, t in enumerate(parsed) if t.role == ASSISTANT]
    return [i for i, t in enumerate(parsed) if t.label is not None]


def annotation_texts(record: object, turns: str = "assistant", system: str | None = SYSTEM_PROMPT,
                     tokens: ChatPromptTokens | None = None) -> list[tuple[int, str]]:
    """``(turn index, text to score)`` per rated turn of ``record`` (``system=None``: the record's own)."""
    indices = rated_turns(record, turns)
    parsed, own_system = _turns(record)
    sys_text = own_system if system is None else system
    return [(i, regression_text(sys_text, parsed, i, tokens)) for i in indices]


def with_labels(record: dict, labels: dict[int, str]) -> dict:
    """A copy of ``record`` whose turn ``i`` has ``label`` ``labels[i]``."""
    out = copy.deepcopy(record)
    for i, label in labels.items():
        out["conversations"][i]["label"] = label
    return out


def _group(records: Iterable[dict], batch_size: int, turns: str, system, tokens) -> Iterator[list]:
    """Consecutive ``(record, [(turn, text), ...])`` groups holding at most ``batch_size`` texts (a record
    with more texts forms a group alone)."""
    group, n = [], 0
    for record in records:
        texts = annotation_texts(record, turns, system, tokens)
        if group and n + len(texts) > batch_size:
            yield group
            group, n = [], 0
        group.append((record, texts))
        n += len(texts)
    if group:
        yield group


def annotate_batches(records: Iterable[dict], score: Scorer, batch_size: int = 64, turns: str = "assistant",
                     system: str | None = SYSTEM_PROMPT,
                     tokens: ChatPromptTokens | None = None) -> Iterator[list[dict]]:
    """Annotated records, one list per group of records scored together (module docstring)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for group in _group(records, batch_size, turns, system, tokens):
        texts = [text for _, items in group for _, text in items]
        rewards: list = []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            got = list(score(chunk))
            if len(got) != len(chunk):
                raise ValueError(f"the scorer returned {len(got)} reward rows for {len(chunk)} texts")
            rewards += got
        labels = iter(rewards_to_label(r) for r in rewards)
        yield [with_labels(record, {i: next(labels) for i, _ in items}) for record, items in group]


def annotate_records(records: Iterable[dict], score: Scorer, batch_size: int = 64, turns: str = "assistant",
                     system: str | None = SYSTEM_PROMPT,
                     tokens: ChatPromptTokens | None = None) -> Iterator[dict]:
    """``annotate_batches`` flattened: one annotated record per input record, in order."""
    for batch in annotate_batches(records, score, batch_size, turns, system, tokens):
        yield from batch


def annotate_record(record: dict, score: Scorer, turns: str = "assistant",
                    system: str | None = SYSTEM_PROMPT) -> dict:
    """One record, its rated turns scored in one call."""
    return next(annotate_records([record], score, batch_size=1 << 30, turns=turns, system=system))


def _label_problem(label: object) -> str | None:
    """Why ``label`` is not a label ``rewards_to_label`` writes (None if it is one)."""
    if not isinstance(label, str):
        return "missing or not a string"
    try:
        values = decode_label(label)
    except LabelError as e:
        return str(e)
    if list(values) != list(STEERLM_ATTRIBUTES) or min(values.values()) < 0:
        return f"{label!r} does not give all nine attributes 0..4 in order"
    return None


def check_annotated(source: object, annotated: object, turns: str = "assistant") -> None:
    """``RecordError`` unless ``annotated`` is ``source`` annotated: equal but for the rated turns'
    labels, each of which a label ``rewards_to_label`` writes."""
    indices = rated_turns(source, turns)
    if not isinstance(annotated, dict) or not isinstance(annotated.get("conversations"), list) or \
            len(annotated["conversations"]) != len(source["conversations"]):
        raise RecordError("conversations", "not the input record's conversation")
    for i in indices:
        turn = annotated["conversations"][i]
        problem = _label_problem(turn.get("label") if isinstance(turn, dict) else None)
        if problem:
            raise RecordError(f"conversations[{i}].label", problem)
    expected = with_labels(source, {i: annotated["conversations"][i]["label"] for i in indices})
    if expected == annotated:
        return
    for key in list(expected) + [k for k in annotated if k not in expected]:
        if key != "conversations" and expected.get(key, ...) != annotated.get(key, ...):
            raise RecordError(key, "differs from the input record")
    for i, (a, b) in enumerate(zip(expected["conversations"], annotated["conversations"])):
        if a != b:
            raise RecordError(f"conversations[{i}]", "differs from the input record")
    raise RecordError("(record)", "differs from the input record")
