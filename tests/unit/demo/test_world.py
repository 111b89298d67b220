"""The SteerLM demo data set (``megatron_align.demo.world``): generator and attribute rules.

Checks: the same seed gives the same bytes (records, the four files, the ``python -m`` entry point); every
label equals the rules' reading of its answer (with and without the prompt); each attribute is about uniform
on 0..4 and the attributes are pairwise nearly uncorrelated (Spearman, itself checked against a brute-force
rank count); the rules on hand-written answers; garbage never raises; records render in NeMo's chat template
and fit 192 tokens of a 1k-piece sentencepiece tokenizer trained on them; regression rows match the labels.
"""

from __future__ import annotations

import itertools
import json
import random
import re

import numpy as np
import pytest

from megatron_align.data.nemo_chat import encode_chat, parse_chat_record, render_chat
from megatron_align.data.steerlm.attributes import decode_label, label_vector
from megatron_align.data.steerlm.records import SYSTEM_PROMPT
from megatron_align.demo.world import (
    build_response,
    make_question,
    measure_attributes,
    spearman,
    steering_prompts,
    steerlm_demo_records,
    vocab,
    write_demo_data,
)
from megatron_align.demo.world.__main__ import main as cli_main
from megatron_align.tokenizers.sentencepiece_tokenizer import SentencePieceTokenizer
from megatron_align.tokenizers.training import train_sentencepiece

ATTRS = ["quality", "toxicity", "humor", "creativity",  # NeMo-Aligner's order, written out independently
         "helpfulness", "correctness", "coherence", "complexity", "verbosity"]
N = 2000
MAX_TOKENS = 192


@pytest.fixture(scope="module")
def records():
    return steerlm_demo_records(N, 1234)


def _answers(recs):
    """(prompt, answer, label) of every labelled answer."""
    out = []
    for r in recs:
        convs = r["conversations"]
        for i, t in enumerate(convs):
            if t["from"] == "Assistant" and t.get("label"):
                out.append((convs[i - 1]["value"], t["value"], t["label"]))
    return out


def _dumps(recs):
    return "".join(json.dumps(r) + "\n" for r in recs).encode()


# ---------------------------------------------------------------- determinism and format

def test_same_seed_same_bytes():
    assert _dumps(steerlm_demo_records(300, 7)) == _dumps(steerlm_demo_records(300, 7))
    assert _dumps(steerlm_demo_records(300, 7)) != _dumps(steerlm_demo_records(300, 8))
    assert _dumps(steerlm_demo_records(50, 7, "val")) != _dumps(steerlm_demo_records(50, 7))
    assert steerlm_demo_records(100, 7)[:40] == steerlm_demo_records(40, 7)  # a prefix does not depend on n
    assert steering_prompts(20, 3) == steering_prompts(20, 3) != steering_prompts(20, 4)


def test_files_and_cli_are_deterministic(tmp_path, capsys):
    a = write_demo_data(tmp_path / "a", 60, 10, 5)
    assert cli_main(["--out", str(tmp_path / "b"), "--n", "60", "--n-val", "10", "--seed", "5"]) == 0
    assert "train_reg" in capsys.readouterr().out
    for name, path in a.items():
        assert (tmp_path / "b" / f"{name}.jsonl").read_bytes() == open(path, "rb").read()
    lines = (tmp_path / "a" / "train.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == steerlm_demo_records(60, 5)
    assert len((tmp_path / "a" / "val.jsonl").read_text().splitlines()) == 10


def test_records_are_steerlm_chats(records):
    turns = {1: 0, 2: 0}
    for r in records:
        assert list(r) == ["conversations", "system", "mask", "type"]  # NeMo-Aligner's key order
        assert (r["system"], r["mask"], r["type"]) == (SYSTEM_PROMPT, "User", "VALUE_TO_TEXT")
        rec = parse_chat_record(r)
        roles = [t.role for t in rec.turns]
        assert roles in (["User", "Assistant"], ["User", "Assistant"] * 2)
        turns[len(roles) // 2] += 1
        labels = [t.label for t in rec.turns]
        assert labels[-1] and all(label is None for label in labels[:-1])  # only the last answer is rated
        assert [list(t) for t in r["conversations"]] == [["value", "from", "label"]] * len(roles)
    assert 0.2 < turns[2] / N < 0.4


# ---------------------------------------------------------------- labels are the rules

def test_every_label_is_the_rules_reading(records):
    answers = _answers(records)
    assert len(answers) == N
    for prompt, answer, label in answers:
        values = decode_label(label)
        assert list(values) == ATTRS, label
        assert measure_attributes(answer, prompt) == values, (prompt, answer, label)
        assert measure_attributes(answer) == values, (answer, label)  # the answer restates its question
        assert list(measure_attributes(answer)) == ATTRS


def test_steering_prompts_are_understood_by_the_rules():
    prompts = steering_prompts(200, 11)
    assert len(set(prompts)) > 100
    for prompt in prompts:
        arith = re.search(r"(\d) \w+ (plus|minus) (\d) \w+", prompt)
        if arith:
            a, op, b = int(arith[1]), arith[2], int(arith[3])
            truth, clause = (a + b if op == "plus" else a - b), f"{a} {op} {b} is"
        else:
            word = re.search(r"the word (\w+)", prompt)[1]
            truth, clause = len(word), f"{word} has"
        for wrong in range(3):
            answer = f"Sure, {clause} {truth + wrong} things."
            assert measure_attributes(answer, prompt)["correctness"] == 4 - wrong


# ---------------------------------------------------------------- distribution and independence

def test_attributes_uniform_and_independent(records):
    table = np.array([[decode_label(label)[a] for a in ATTRS] for _, _, label in _answers(records)])  # [N, 9]
    for j, name in enumerate(ATTRS):
        freq = np.bincount(table[:, j], minlength=5) / len(table)
        assert len(freq) == 5 and freq.min() > 0.16 and freq.max() < 0.24, (name, freq)
    for i, j in itertools.combinations(range(len(ATTRS)), 2):
        rho = spearman(table[:, i], table[:, j])
        assert abs(rho) < 0.1, (ATTRS[i], ATTRS[j], rho)
    lengths = [len(answer.split()) for _, answer, _ in _answers(records)]
    assert spearman(table[:, ATTRS.index("verbosity")], lengths) > 0.5  # verbosity is (mostly) length


def _brute_spearman(x, y):
    def ranks(v):  # rank = 1 + number smaller + (number equal - 1) / 2
        return [1 + sum(u < a for u in v) + (sum(u == a for u in v) - 1) / 2 for a in v]
    return float(np.corrcoef(ranks(list(x)), ranks(list(y)))[0, 1])


def test_spearman_against_a_rank_count():
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 - 6*sum(d^2)/(n(n^2-1))
    assert spearman([1, 2, 3], [10, 20, 300]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.integers(0, 5, 40), rng.integers(0, 5, 40)  # many ties
        assert spearman(x, y) == pytest.approx(_brute_spearman(x, y), abs=1e-12)
    with pytest.raises(ValueError):
        spearman([1, 2], [1])


# ---------------------------------------------------------------- the rules on hand-written answers

Q = "What is 3 apples plus 4 apples?"


def test_verbosity_counts_sentences():
    short = "Sure, 3 plus 4 is 7 apples."
    long = short + " Apples are red. I like apples. Apples sit in the park. Apples make me happy. Yes."
    assert measure_attributes(short, Q)["verbosity"] == 0
    assert measure_attributes(long, Q)["verbosity"] == 4
    assert measure_attributes(long + " More apples!", Q)["verbosity"] == 4  # clipped
    assert measure_attributes("Sure. Fine? Yes!", Q)["verbosity"] == 2
    assert measure_attributes("3 plus 4 is 7 ... !!", Q)["verbosity"] == 0  # punctuation alone is no sentence


def test_marker_counts():
    base = "Sure, 3 plus 4 is 7 apples"
    m = measure_attributes
    assert m(base + ".", Q)["humor"] == 0
    assert m(base + " haha.", Q)["humor"] == 1
    assert m(base + " haha lol hehe.", Q)["humor"] == 3
    assert m(base + " haha haha haha haha haha haha.", Q)["humor"] == 4
    assert m("Ugh, dumb " + base + ".", Q)["toxicity"] == 2
    assert m(base + ".", Q)["toxicity"] == 0
    assert m("Sure, 3 plus 4 is 7 shiny shiny shiny apples.", Q)["creativity"] == 1  # distinct words
    assert m("Sure, 3 plus 4 is 7 shiny cosmic jolly apples.", Q)["creativity"] == 3
    assert m("Sure, essentially essentially " + base + ".", Q)["complexity"] == 1
    assert m("Sure, extraordinary wonderfully " + base + ".", Q)["complexity"] == 2  # any 10+ letter word
    assert m(base + " pickle sock.", Q)["coherence"] == 2
    assert m(base + ".", Q)["coherence"] == 4
    assert m(base + " pickle kazoo teapot sock igloo.", Q)["coherence"] == 0
    assert m("Apples are nice.", Q)["coherence"] == 0  # answers nothing


def test_opener_and_closer():
    m = measure_attributes
    assert [m(f"{w}, 3 plus 4 is 7 apples.", Q)["helpfulness"] for w in vocab.OPENERS] == [0, 1, 2, 3, 4]
    assert m("Apples: 3 plus 4 is 7.", Q)["helpfulness"] == 0
    assert m("Sure, 3 plus 4 is 7 apples, great.", Q)["quality"] == 3
    assert m("Sure, 3 plus 4 is 7 apples, perfect!", Q)["quality"] == 4
    assert m("Sure, 3 plus 4 is 7 apples.", Q)["quality"] == 0
    assert m("Perfect, 3 plus 4 is 7 apples.", Q)["quality"] == 0  # only the last word counts


def test_correctness():
    m = measure_attributes
    assert m("Sure, 3 plus 4 is 7 apples.", Q)["correctness"] == 4
    assert m("Sure, 3 plus 4 is 9 apples.", Q)["correctness"] == 2
    assert m("Sure, 3 plus 4 is 20 apples.", Q)["correctness"] == 0
    assert m("Sure, 3 plus 4 is 8 apples.")["correctness"] == 3  # no prompt: checked against its restatement
    assert m("Sure, 3 plus 4 is 7 apples.", "What is 3 apples plus 5 apples?")["correctness"] == 3
    assert m("Sure, 9 minus 2 is 7 apples.", "Tell me 9 apples minus 2 apples.")["correctness"] == 4
    letters = "How many letters are in the word tiger?"
    assert m("Sure, tiger has 5 letters.", letters)["correctness"] == 4
    assert m("Sure, tiger has 3 letters.", letters)["correctness"] == 2
    assert m("Sure, 3 plus 4 is 5 apples.", letters)["correctness"] == 0  # answers another kind of question
    assert m("Sure, apples are nice.", Q)["correctness"] == 0
    first_then_second = "What is 2 apples plus 2 apples? Thanks. What is 3 apples plus 4 apples?"
    assert m("Sure, 3 plus 4 is 7 apples.", first_then_second)["correctness"] == 4  # the last question


def test_generated_answer_example():
    rng = random.Random(1)
    question = make_question(rng)
    targets = dict.fromkeys(ATTRS, 0) | {"verbosity": 4, "humor": 2, "correctness": 4, "helpfulness": 4}
    answer = build_response(question, targets, rng)
    assert answer.startswith("Gladly, ") and len(re.findall(r"\.", answer)) == 5
    assert measure_attributes(answer, question.text) == targets


# ---------------------------------------------------------------- garbage

def test_garbage_never_raises():
    rng = random.Random(0)
    chars = "abcdefghijklmnopqrstuvwxyz0123456789 .,!?'\n\tüß→<>_"
    pool = sorted(vocab.HUMOR_WORDS | vocab.INTRUDER_WORDS) + ["plus", "is", "has", "7", "99999999999", "."]
    inputs = ["", "   ", "...", "!!!?", "<extra_id_1>", "\x00\x01", "9" * 5000 + " plus 1 is 2",
              "1 plus 2 is 99999999999999999999", None, 123, b"bytes", ["x"]]
    inputs += ["".join(rng.choice(chars) for _ in range(rng.randint(1, 300))) for _ in range(300)]
    inputs += [" ".join(rng.choice(pool) for _ in range(rng.randint(1, 60))) for _ in range(300)]
    for text in inputs:
        for prompt in (None, Q, "", 42, text if isinstance(text, str) else None):
            values = measure_attributes(text, prompt)
            assert list(values) == ATTRS
            assert all(isinstance(v, int) and 0 <= v <= 4 for v in values.values()), (text, values)
    assert set(measure_attributes("").values()) == {0}
    assert set(measure_attributes("qzx vbn 12 mmm", Q).values()) == {0}


# ---------------------------------------------------------------- template, tokenizer, regression rows

def test_render_and_length_with_a_trained_tokenizer(records, tmp_path):
    texts = [render_chat(parse_chat_record(r)).text for r in records[:1000]]
    tok = SentencePieceTokenizer(train_sentencepiece(texts, str(tmp_path / "tok"), vocab_size=1000))
    assert tok.vocab_size <= 1000
    val = steerlm_demo_records(300, 1234, "val")
    lengths = []
    for r in records + val:
        ids, mask = encode_chat(r, tok)
        lengths.append(len(ids))
        rendered = render_chat(parse_chat_record(r))
        answer, label = r["conversations"][-1]["value"], r["conversations"][-1]["label"]
        assert f"<extra_id_1>Assistant\n<extra_id_2>{label}\n{answer}\n<extra_id_1>" in rendered.text
        trained = tok.ids_to_text([i for i, m in zip(ids, mask) if m])
        assert answer in trained and label not in trained  # the answer is trained, its label is context
    assert max(lengths) <= MAX_TOKENS, max(lengths)
    one_turn = [n for n, r in zip(lengths, records + val) if len(r["conversations"]) == 2]
    assert max(one_turn) <= 160


def test_regression_rows(tmp_path):
    paths = write_demo_data(tmp_path, 80, 20, 3)
    for split, n in (("train", 80), ("val", 20)):
        recs = [json.loads(line) for line in open(paths[split])]
        rows = [json.loads(line) for line in open(paths[f"{split}_reg"])]
        assert len(recs) == len(rows) == n  # one labelled answer per chat
        for rec, row in zip(recs, rows):
            last = rec["conversations"][-1]
            assert row["label"] == label_vector(last["label"])
            assert all(v in (0.0, 1.0, 2.0, 3.0, 4.0) for v in row["label"])
            assert row["text"].endswith(f"<extra_id_1>Assistant\n{last['value']}\n<extra_id_2>")
            assert last["label"] not in row["text"]


def test_vocabulary_is_small_and_lists_are_disjoint(records):
    lists = [vocab.HUMOR_WORDS, vocab.TOXIC_WORDS, vocab.CREATIVE_WORDS, vocab.INTRUDER_WORDS,
             vocab.flat(vocab.COMPLEXITY_SLOTS), {o.lower() for o in vocab.OPENERS},
             set(vocab.CLOSERS) - {""}]
    for a, b in itertools.combinations(lists, 2):
        assert not a & b
    texts = [t["value"].lower() for r in records for t in r["conversations"]]
    words = {w for text in texts for w in re.findall(r"[a-z]+", text)}
    assert len(words) < 300
    assert {w for w in words if len(w) >= 10} == set(vocab.flat(vocab.COMPLEXITY_SLOTS))
    assert not words & {"hate", "kill", "stupid"}  # toxicity is mild placeholder words only
