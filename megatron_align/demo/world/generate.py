"""Seeded generation of the SteerLM demo chats: questions, responses built to hit target attribute values, and
records labelled by the rules (``measure.measure_attributes``), as if annotated by people.

A user asks a small counting question (``What is 3 apples plus 4 apples?``, ``How many letters are in the word
tiger?``); for every answer nine target values are drawn independently and uniformly from 0..4 and the answer
is composed to hit them, in a fixed layout (``vocab`` has the lists)::

    {Opener}, {rude words} {long words} {A plus B | W has} {answer} {adjectives} {nouns | letters}
    {off-topic words} {joke words}. {extra sentence 1}. ... {extra sentence v}, {closing word}.

    "Sure, ugh essentially 3 plus 4 is 7 shiny velvet apples pickle haha lol. Apples are round. Kids like
     apples, great."  -> quality:3,toxicity:1,humor:2,creativity:2,helpfulness:3,correctness:4,coherence:3,
                         complexity:1,verbosity:2

(an answer off by ``d`` gets correctness ``4 - d``). The label written is ``measure_attributes`` of the
answer, which equals the targets (checked for every answer). In ``TWO_TURN_FRACTION`` of the chats the
labelled exchange follows a plain one (``Sure, 3 plus 4 is 7 apples.``) that, as the earlier turns of
HelpSteer2's multi-turn prompts, carries no label - keeping a chat within ~170 tokens of a 1k-piece
tokenizer (a label line alone is ~38). Everything comes from one ``random.Random`` seeded with a string of
``split`` and ``seed`` (string seeding, ``randint`` and ``choice`` are stable across CPython 3 releases): the
same ``n``, ``seed`` and ``split`` give the same records on every machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from megatron_align.data.steerlm.attributes import LIKERT_MAX, STEERLM_ATTRIBUTES, encode_label
from megatron_align.data.steerlm.records import ASSISTANT, USER, sft_record, turn
from megatron_align.demo.world import vocab
from megatron_align.demo.world.measure import measure_attributes

TWO_TURN_FRACTION = 0.3
"""Share of chats with two user questions (only the second answer is labelled)."""


@dataclass(frozen=True)
class Question:
    """A user question and what answering it needs."""

    text: str
    """The user turn."""
    noun: str
    """Topic noun, singular."""
    kind: str
    """``plus``, ``minus`` or ``letters``."""
    a: int = 0
    b: int = 0
    """Operands of ``plus`` / ``minus``."""

    @property
    def truth(self) -> int:
        """The right answer."""
        if self.kind == "letters":
            return len(self.noun)
        return self.a + self.b if self.kind == "plus" else self.a - self.b


def random_targets(rng: random.Random) -> dict[str, int]:
    """Nine independent uniform values 0..4, in ``STEERLM_ATTRIBUTES`` order."""
    return {name: rng.randint(0, LIKERT_MAX) for name in STEERLM_ATTRIBUTES}


def make_question(rng: random.Random, noun: str | None = None, prefix: str = "") -> Question:
    """A random question about ``noun`` (random when None), its text after ``prefix``."""
    noun = noun or rng.choice(vocab.NOUNS)
    kind = rng.choice(("plus", "minus", "letters"))
    if kind == "letters":
        text = rng.choice(vocab.LETTER_QUESTIONS).format(w=noun)
        return Question(prefix + text, noun, kind)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    if kind == "minus" and b > a:
        a, b = b, a
    pattern = rng.choice(vocab.PLUS_QUESTIONS if kind == "plus" else vocab.MINUS_QUESTIONS)
    return Question(prefix + pattern.format(a=a, b=b, n=noun + "s"), noun, kind, a, b)


def _stated(question: Question, correctness: int, rng: random.Random) -> int:
    """An answer ``4 - correctness`` away from the truth (4..6 away for correctness 0), never negative."""
    truth = question.truth
    d = LIKERT_MAX - correctness if correctness else rng.randint(LIKERT_MAX, LIKERT_MAX + 2)
    if d and rng.random() < 0.5 and truth - d >= 0:
        return truth - d
    return truth + d


def _markers(slots: tuple[tuple[str, ...], ...], k: int, rng: random.Random) -> list[str]:
    """One word from each of the first ``k`` slots."""
    return [rng.choice(slot) for slot in slots[:k]]


def _extra_sentence(i: int, noun: str, rng: random.Random) -> str:
    """The ``i``-th (1-based) extra sentence about ``noun``."""
    plural = noun + "s"
    text = rng.choice(vocab.EXTRA_SENTENCES[i - 1]).format(
        N=plural.capitalize(), n=plural, prop=rng.choice(vocab.PROPS), who=rng.choice(vocab.WHO),
        place=rng.choice(vocab.PLACES), feel=rng.choice(vocab.FEELINGS))
    return text[0].upper() + text[1:]


def _clause(question: Question, stated: int, adjectives: list[str]) -> list[str]:
    """``A plus B is S <adjectives> <nouns>`` or ``W has S <adjectives> letters``."""
    if question.kind == "letters":
        return [question.noun, "has", str(stated), *adjectives, "letters"]
    plural = question.noun + "s"
    return [str(question.a), question.kind, str(question.b), "is", str(stated), *adjectives, plural]


def plain_answer(question: Question) -> str:
    """The short, correct, unmarked answer given to the first question of a two-question chat."""
    return f"{vocab.OPENERS[3]}, {' '.join(_clause(question, question.truth, []))}."


def build_response(question: Question, targets: dict[str, int], rng: random.Random) -> str:
    """An answer to ``question`` whose rule-measured attributes are ``targets`` (layout: module docstring)."""
    t = targets
    adjectives = _markers(vocab.CREATIVE_SLOTS, t["creativity"], rng)
    stated = _stated(question, t["correctness"], rng)
    clause = _clause(question, stated, adjectives)
    first = [vocab.OPENERS[t["helpfulness"]] + ",",
             *_markers(vocab.TOXIC_SLOTS, t["toxicity"], rng),
             *_markers(vocab.COMPLEXITY_SLOTS, t["complexity"], rng),
             *clause,
             *_markers(vocab.INTRUDER_SLOTS, LIKERT_MAX - t["coherence"], rng),
             *_markers(vocab.HUMOR_SLOTS, t["humor"], rng)]
    sents = [" ".join(first)] + [_extra_sentence(i, question.noun, rng) for i in range(1, t["verbosity"] + 1)]
    sents = [s.removesuffix(".") for s in sents]
    if t["quality"]:
        sents[-1] += ", " + vocab.CLOSERS[t["quality"]]
    return ". ".join(sents) + "."


def labelled_answer(question: Question, rng: random.Random) -> tuple[str, str]:
    """A response to ``question`` with random targets, and its label (the rules' reading of it)."""
    targets = random_targets(rng)
    response = build_response(question, targets, rng)
    measured = measure_attributes(response, question.text)
    if measured != targets:  # the layout and the rules disagree: a bug in this package
        raise AssertionError(f"response {response!r} measures {measured}, built for {targets}")
    return response, encode_label(measured)


def demo_chat(rng: random.Random) -> dict:
    """One SteerLM SFT record (NeMo-Aligner key order): a labelled exchange, after one plain unlabelled
    exchange about the same noun in ``TWO_TURN_FRACTION`` of the chats."""
    question = make_question(rng)
    conversation = []
    if rng.random() < TWO_TURN_FRACTION:
        conversation += [turn(USER, question.text), turn(ASSISTANT, plain_answer(question))]
        question = make_question(rng, question.noun, prefix=rng.choice(vocab.FOLLOW_UPS))
    response, label = labelled_answer(question, rng)
    return sft_record(conversation + [turn(USER, question.text), turn(ASSISTANT, response, label)])


def steerlm_demo_records(n: int, seed: int, split: str = "train") -> list[dict]:
    """``n`` labelled SteerLM SFT records of ``split`` (``train``, ``val``: separate streams) of ``seed``."""
    rng = random.Random(f"steerlm-demo-{split}-{seed}")
    return [demo_chat(rng) for _ in range(n)]


def steering_prompts(n: int, seed: int) -> list[str]:
    """``n`` single user questions for steering at inference (use a seed the training data did not)."""
    rng = random.Random(f"steerlm-demo-steering-{seed}")
    return [make_question(rng).text for _ in range(n)]
