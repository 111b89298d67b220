"""The word lists the SteerLM demo data is built from and its rules read (``generate`` and ``measure``).

Every list is small and the lists are disjoint, so a rule that counts the words of one list is never moved by
the words another attribute adds. Marker lists come in four *slots*: a response with ``k`` markers of a kind
takes one word from each of slots ``1..k``, in order - so a tiny model that has just written a slot-2 word
knows two are out without counting. Only ``COMPLEXITY_SLOTS`` words have 10 or more letters (the complexity
rule counts long words); every other word of the data is at most 9 letters long.
"""

from __future__ import annotations

LONG_WORD = 10
"""A word of at least this many letters is "long" (the complexity rule)."""

NOUNS: tuple[str, ...] = (
    "apple", "stone", "cloud", "tiger", "lemon", "candle", "rocket", "piano", "river", "ocean", "window",
    "kitten", "carrot", "button", "feather", "robot",
)
"""Topic nouns (singular; the plural adds ``s``): the objects counted and the words spelled."""

PLUS_QUESTIONS: tuple[str, ...] = ("What is {a} {n} plus {b} {n}?", "How much is {a} {n} plus {b} {n}?",
                                   "Tell me {a} {n} plus {b} {n}.")
MINUS_QUESTIONS: tuple[str, ...] = ("What is {a} {n} minus {b} {n}?", "How much is {a} {n} minus {b} {n}?",
                                    "Tell me {a} {n} minus {b} {n}.")
LETTER_QUESTIONS: tuple[str, ...] = ("How many letters are in the word {w}?",
                                     "Count the letters in the word {w}.")
FOLLOW_UPS: tuple[str, ...] = ("", "Thanks. ", "Okay. ", "Next one. ")
"""Openings of a second user turn."""

OPENERS: tuple[str, ...] = ("Hmm", "Well", "Okay", "Sure", "Gladly")
"""helpfulness ``k``: the response's first word is ``OPENERS[k]`` (eager to help = helpful)."""
CLOSERS: tuple[str, ...] = ("", "fine", "good", "great", "perfect")
"""quality ``k`` (1..4): the response's last word is ``CLOSERS[k]``; quality 0 has no closing word."""

HUMOR_SLOTS: tuple[tuple[str, ...], ...] = (("haha", "hehe"), ("lol",), ("hah", "heh"), ("hoho", "teehee"))
"""Joke words; humor = how many the response holds."""
TOXIC_SLOTS: tuple[tuple[str, ...], ...] = (("ugh", "meh"), ("duh", "bah"), ("dumb", "lame"),
                                            ("whatever", "yawn"))
"""Mild rude words (placeholders for toxicity, nothing hateful); toxicity = how many the response holds."""
CREATIVE_SLOTS: tuple[tuple[str, ...], ...] = (("shiny", "golden", "silver"), ("velvet", "cosmic", "misty"),
                                               ("magic", "dreamy", "glowing"), ("starry", "fizzy", "jolly"))
"""Colorful adjectives; creativity = how many distinct ones the response holds."""
COMPLEXITY_SLOTS: tuple[tuple[str, ...], ...] = (("essentially", "ultimately"), ("remarkably", "undoubtedly"),
                                                 ("accordingly", "consequently"),
                                                 ("fundamentally", "theoretically"))
"""Long adverbs; complexity = how many distinct words of ``LONG_WORD``+ letters the response holds."""
INTRUDER_SLOTS: tuple[tuple[str, ...], ...] = (("pickle", "kazoo"), ("teapot", "walrus"), ("noodle", "sock"),
                                               ("trumpet", "igloo"))
"""Off-topic words; coherence = 4 - how many the response holds (0 when it answers nothing)."""

# The extra sentences of a verbose answer: the i-th extra sentence is drawn from EXTRA_SENTENCES[i - 1].
EXTRA_SENTENCES: tuple[tuple[str, ...], ...] = (
    ("{N} are {prop}.", "{N} look {prop}."),
    ("{who} like {n}.", "{who} love {n}."),
    ("{N} live in the {place}.", "{N} sit in the {place}."),
    ("{N} make me {feel}.", "{N} keep me {feel}."),
)
PROPS: tuple[str, ...] = ("big", "small", "round", "soft", "warm", "cold", "old", "new", "heavy", "light")
WHO: tuple[str, ...] = ("I", "We", "Kids", "People", "Cats", "Dogs")
PLACES: tuple[str, ...] = ("park", "town", "house", "shop", "field", "city", "school", "market")
FEELINGS: tuple[str, ...] = ("happy", "calm", "sleepy", "hungry", "curious")


def flat(slots: tuple[tuple[str, ...], ...]) -> frozenset[str]:
    """All words of a slotted list."""
    return frozenset(w for slot in slots for w in slot)


HUMOR_WORDS = flat(HUMOR_SLOTS)
TOXIC_WORDS = flat(TOXIC_SLOTS)
CREATIVE_WORDS = flat(CREATIVE_SLOTS)
INTRUDER_WORDS = flat(INTRUDER_SLOTS)
