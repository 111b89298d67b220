"""The demo's "human annotators": rules that rate a response on the nine SteerLM attributes, 0..4 each.

``measure_attributes(response, prompt)`` reads the response as lowercase words (``[a-z]+`` / ``[0-9]+``)
and sentences (text between ``.``, ``!``, ``?`` holding a letter), with the word lists of ``vocab``:

===========  =====================================================================================
quality      the last word is a closing word: ``fine`` 1, ``good`` 2, ``great`` 3, ``perfect`` 4; else 0
toxicity     number of mild rude words (``ugh``, ``meh``, ``duh``, ``dumb``, ...), at most 4
humor        number of joke words (``haha``, ``lol``, ``heh``, ...), at most 4
creativity   number of distinct colorful adjectives (``shiny``, ``cosmic``, ``dreamy``, ...), at most 4
helpfulness  the first word is an opener: ``hmm`` 0, ``well`` 1, ``okay`` 2, ``sure`` 3, ``gladly`` 4; else 0
correctness  the stated answer's distance ``d`` from the true one: ``max(0, 4 - d)``; 0 with no answer
coherence    ``4 -`` number of off-topic words (``pickle``, ``walrus``, ...), floored at 0; 0 with no answer
complexity   number of distinct long words (10+ letters), at most 4
verbosity    number of sentences minus 1, between 0 and 4
===========  =====================================================================================

The answer is the first ``A plus|minus B is S`` or ``W has S`` in the response's words. Its true value comes
from the question: the last ``A [noun] plus|minus B`` or ``the word W`` in ``prompt_text`` when given (an
answer of the other kind than the question scores 0), else the response's own restatement (``A + B``,
``A - B``, ``len(W)``). Any input is rated without raising: garbage scores 0 on most attributes.
"""

from __future__ import annotations

import re

from megatron_align.data.steerlm.attributes import LIKERT_MAX, STEERLM_ATTRIBUTES
from megatron_align.demo.world import vocab

_WORD = re.compile(r"[a-z]+|[0-9]+")
_SENTENCE_END = re.compile(r"[.!?]+")
_LETTER = re.compile(r"[a-zA-Z]")
_ARITH_ANSWER = re.compile(r"\b([0-9]{1,6}) (plus|minus) ([0-9]{1,6}) is ([0-9]{1,6})\b")
_LETTER_ANSWER = re.compile(r"\b([a-z]+) has ([0-9]{1,6})\b")
_ARITH_QUESTION = re.compile(r"\b([0-9]{1,6}) (?:[a-z]+ )?(plus|minus) ([0-9]{1,6})\b")
_LETTER_QUESTION = re.compile(r"\bthe word ([a-z]+)\b")
_OPENER_LEVEL = {word.lower(): level for level, word in enumerate(vocab.OPENERS)}
_CLOSER_LEVEL = {word: level for level, word in enumerate(vocab.CLOSERS) if word}


def words(text: str) -> list[str]:
    """Lowercase words and numbers of ``text``, punctuation dropped."""
    return _WORD.findall(text.lower())


def sentences(text: str) -> list[str]:
    """Pieces of ``text`` between sentence ends (``.``, ``!``, ``?``) that hold at least one letter."""
    return [s for s in _SENTENCE_END.split(text) if _LETTER.search(s)]


def _clip(n: int) -> int:
    return max(0, min(LIKERT_MAX, n))


def _truth(match: re.Match) -> tuple[str, int]:
    """``(kind, true value)`` of a question or restated answer match."""
    if match.re in (_ARITH_ANSWER, _ARITH_QUESTION):
        a, op, b = int(match.group(1)), match.group(2), int(match.group(3))
        return "arith", a + b if op == "plus" else a - b
    return "letters", len(match.group(1))


def _first(text: str, patterns: tuple[re.Pattern, ...]) -> re.Match | None:
    found = [m for p in patterns if (m := p.search(text))]
    return min(found, key=lambda m: m.start(), default=None)


def _last(text: str, patterns: tuple[re.Pattern, ...]) -> re.Match | None:
    found = [m for p in patterns for m in p.finditer(text)]
    return max(found, key=lambda m: m.start(), default=None)


def correctness(response_words: list[str], prompt_text: str | None) -> tuple[int, bool]:
    """(correctness score, whether the response states an answer) - see the module docstring."""
    text = " ".join(response_words)
    answer = _first(text, (_ARITH_ANSWER, _LETTER_ANSWER))
    if answer is None:
        return 0, False
    kind, truth = _truth(answer)
    stated = int(answer.group(answer.lastindex))
    question = _last(" ".join(words(prompt_text or "")), (_ARITH_QUESTION, _LETTER_QUESTION))
    if question is not None:
        asked, truth = _truth(question)
        if asked != kind:
            return 0, True
    return max(0, LIKERT_MAX - abs(stated - truth)), True


def measure_attributes(response_text: str, prompt_text: str | None = None) -> dict[str, int]:
    """The nine attribute values (0..4, ``STEERLM_ATTRIBUTES`` order) the rules give ``response_text``."""
    text = response_text if isinstance(response_text, str) else ""
    prompt = prompt_text if isinstance(prompt_text, str) else None
    ws = words(text)
    first, last = (ws[0], ws[-1]) if ws else ("", "")
    correct, answered = correctness(ws, prompt)
    intruders = sum(w in vocab.INTRUDER_WORDS for w in ws)
    values = {
        "quality": _CLOSER_LEVEL.get(last, 0),
        "toxicity": _clip(sum(w in vocab.TOXIC_WORDS for w in ws)),
        "humor": _clip(sum(w in vocab.HUMOR_WORDS for w in ws)),
        "creativity": _clip(len(vocab.CREATIVE_WORDS.intersection(ws))),
        "helpfulness": _OPENER_LEVEL.get(first, 0),
        "correctness": correct,
        "coherence": _clip(LIKERT_MAX - intruders) if answered else 0,
        "complexity": _clip(len({w for w in ws if w.isalpha() and len(w) >= vocab.LONG_WORD})),
        "verbosity": _clip(len(sentences(text)) - 1),
    }
    return {name: values[name] for name in STEERLM_ATTRIBUTES}

