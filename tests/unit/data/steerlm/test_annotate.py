"""SteerLM attribute annotation logic (``megatron_align/data/steerlm/annotate.py``), its output file
(``annotated_file.py``) and the reward-server client's retries (``scoring/remote.py``).

References are written here independently: label strings by hand and by ``decimal``'s ROUND_HALF_EVEN (what
Python's ``round`` does, as NeMo-Aligner's script rounds), the scored text by the literal extra_id template,
and a scorer that remembers every call.
"""

from __future__ import annotations

import json
import random
import threading
from decimal import ROUND_HALF_EVEN, Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from megatron_align.data.errors import DataError, RecordError
from megatron_align.data.steerlm.annotate import (
    annotate_batches,
    annotate_record,
    annotate_records,
    annotation_texts,
    check_annotated,
    rewards_to_label,
)
from megatron_align.data.steerlm.annotated_file import AnnotatedFile
from megatron_align.data.steerlm.regression import regression_rows
from megatron_align.scoring.remote import RewardClient, RewardServerError
from tests.servers_common import free_port

ATTRS = ["quality", "toxicity", "humor", "creativity",
         "helpfulness", "correctness", "coherence", "complexity", "verbosity"]
SYS = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
       "detailed, and polite answers to the user's questions.")


def _ref_label(values):
    out = []
    for name, v in zip(ATTRS, values):
        c = min(max(Decimal(repr(float(v))), Decimal(0)), Decimal(4))
        out.append(f"{name}:{int(c.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))}")
    return ",".join(out)


# ---------------------------------------------------------------- rewards_to_label

@pytest.mark.parametrize("values,expected", [
    ([0.5, 1.5, 2.5, 3.5, 0.49, 0.51, 2.4999, 2.5001, 3.49],
     "quality:0,toxicity:2,humor:2,creativity:4,helpfulness:0,correctness:1,coherence:2,complexity:3,"
     "verbosity:3"),
    ([-3.7, 7.2, float("inf"), float("-inf"), 4.0, 0.0, -0.5, 4.5, 3.999],
     "quality:0,toxicity:4,humor:4,creativity:0,helpfulness:4,correctness:0,coherence:0,complexity:4,"
     "verbosity:4"),
    ([1, 2, 3, 4, 0, 1, 2, 3, 4],
     "quality:1,toxicity:2,humor:3,creativity:4,helpfulness:0,correctness:1,coherence:2,complexity:3,"
     "verbosity:4"),
])
def test_rewards_to_label_rounds_half_to_even_and_clamps(values, expected):
    assert rewards_to_label(values) == expected


def test_rewards_to_label_matches_decimal_reference_on_random_values():
    rng = random.Random(0)
    for _ in range(500):
        values = [rng.choice([rng.uniform(-3, 7), rng.randint(-2, 12) / 2]) for _ in ATTRS]
        assert rewards_to_label(values) == _ref_label(values), values


@pytest.mark.parametrize("values,needle", [([1.0] * 3, "3 reward values"), ([1.0] * 10, "10 reward values"),
                                           ([1.0] * 8 + [float("nan")], "verbosity: the reward model")])
def test_rewards_to_label_refuses_wrong_length_and_nan(values, needle):
    with pytest.raises(ValueError, match=needle):
        rewards_to_label(values)


# ---------------------------------------------------------------- texts and records

def _steerlm_record():
    return {"conversations": [{"value": "Hi ünï", "from": "User", "label": None},
                              {"value": "Hello", "from": "Assistant", "label": "quality:4,toxicity:0"},
                              {"value": "More?", "from": "User", "label": None},
                              {"value": "Sure", "from": "Assistant", "label": "helpfulness:3"}],
            "system": "ignored own system", "mask": "User", "type": "VALUE_TO_TEXT"}


def _plain_record():  # dummy-sft.jsonl style: no labels, no type, an extra key
    return {"system": "", "mask": "User", "dataset": "x", "conversations": [
        {"from": "User", "value": "q1"}, {"from": "Assistant", "value": "a1"},
        {"from": "User", "value": "q2"}, {"from": "Assistant", "value": ""}]}


def test_texts_are_the_regression_training_texts_and_the_literal_template():
    rec = _steerlm_record()
    got = annotation_texts(rec)
    assert [i for i, _ in got] == [1, 3]
    assert [t for _, t in got] == [row["text"] for row in regression_rows(rec)]  # what the RM trained on
    assert got[1][1] == (f"<extra_id_0>System\n{SYS}\n<extra_id_1>User\nHi ünï\n<extra_id_1>Assistant\n"
                         "Hello\n<extra_id_1>User\nMore?\n<extra_id_1>Assistant\nSure\n<extra_id_2>")
    own = annotation_texts(rec, system=None)
    assert own[0][1].startswith("<extra_id_0>System\nignored own system\n<extra_id_1>User\nHi ünï\n")


class Recorder:
    """A scorer: rewards derived from each text (deterministic), every call remembered."""

    def __init__(self):
        self.calls = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        return [[(len(t) * (k + 3) % 11) / 2 - 0.75 for k in range(9)] for t in texts]


def test_annotate_record_rewrites_assistant_labels_only():
    rec, score = _plain_record(), Recorder()
    before = json.dumps(rec)
    out = annotate_record(rec, score)
    assert json.dumps(rec) == before  # input untouched
    assert len(score.calls) == 1 and len(score.calls[0]) == 2
    texts = [t for _, t in annotation_texts(rec)]
    assert score.calls[0] == texts
    for k, i in enumerate([1, 3]):
        assert out["conversations"][i]["label"] == _ref_label(score(texts)[k])
    assert "label" not in out["conversations"][0] and "label" not in out["conversations"][2]
    assert list(out) == list(rec) and out["dataset"] == "x"
    assert list(out["conversations"][1]) == ["from", "value", "label"]


def test_labeled_rule_is_nemo_aligners():
    score = Recorder()
    plain = annotate_record(_plain_record(), score, turns="labeled")
    assert plain == _plain_record() and score.calls == []  # nothing to rate: no call
    rec = _steerlm_record()
    rec["conversations"][3]["label"] = None  # unlabelled answer: not rated under NeMo-Aligner's rule
    rec["conversations"][0]["label"] = ""  # an empty (non-null) label is rated, even on a user turn
    out = annotate_record(rec, score, turns="labeled")
    assert out["conversations"][3]["label"] is None
    assert out["conversations"][0]["label"].startswith("quality:") and out["conversations"][1]["label"] != \
        rec["conversations"][1]["label"]


def test_batches_span_records_and_equal_one_by_one():
    rng = random.Random(1)
    records = []
    for n in [2, 2, 1, 5, 0, 3, 1]:
        conv = []
        for j in range(n):
            conv += [{"from": "User", "value": f"q{j}" * rng.randint(1, 5)},
                     {"from": "Assistant", "value": f"a{j}" * rng.randint(1, 9)}]
        records.append({"conversations": conv or [{"from": "User", "value": "alone"}], "mask": "User"})
    score = Recorder()
    batches = list(annotate_batches(records, score, batch_size=3))
    assert [len(c) for c in score.calls] == [2, 3, 3, 2, 3, 1]  # 2 | 2+1 | 5 split 3+2 | 0+3 | 1
    assert [len(b) for b in batches] == [1, 2, 1, 2, 1]
    assert all(len(c) <= 3 for c in score.calls)
    one_by_one = [annotate_record(r, Recorder()) for r in records]
    assert [r for b in batches for r in b] == one_by_one == list(annotate_records(records, Recorder(), 4))


def test_scorer_returning_too_few_rows_is_an_error():
    with pytest.raises(ValueError, match="1 reward rows for 2 texts"):
        annotate_record(_plain_record(), lambda texts: [[0.0] * 9])


def test_bad_record_names_the_field():
    rec = _plain_record()
    rec["conversations"][2]["from"] = "Bot"
    with pytest.raises(RecordError, match=r"conversations\[2\].from: unknown role 'Bot'"):
        annotation_texts(rec)


def test_check_annotated_accepts_annotation_and_names_differences():
    rec = _steerlm_record()
    out = annotate_record(rec, Recorder())
    check_annotated(rec, out)
    cases = [
        (lambda o: o["conversations"][2].update(value="changed"), r"conversations\[2\]"),
        (lambda o: o.update(system="other"), "system"),
        (lambda o: o.update(extra=1), "extra"),
        (lambda o: o["conversations"][1].update(label="quality:4"), r"conversations\[1\].label"),
        (lambda o: o["conversations"][3].update(label="quality:5," + out["conversations"][3]["label"][10:]),
         r"conversations\[3\].label"),
        (lambda o: o["conversations"].pop(), "conversations"),
    ]
    for mutate, field in cases:
        bad = json.loads(json.dumps(out))
        mutate(bad)
        with pytest.raises(RecordError) as e:
            check_annotated(rec, bad)
        assert e.value.field.startswith(field.replace("\\", "")), (field, e.value)


# ---------------------------------------------------------------- the output file

def _rows(records):
    return iter(list(enumerate(records, start=1)))


def test_annotated_file_resume_drops_torn_tail_and_checks_prefix(tmp_path):
    records = [_plain_record(), _steerlm_record(), _plain_record()]
    annotated = list(annotate_records(records, Recorder()))
    path = tmp_path / "out.jsonl"
    with AnnotatedFile(path, "in.jsonl") as f:
        assert f.resume(_rows(records), "assistant") == 0
        f.append(annotated[:2])
    lines = path.read_bytes()
    assert lines == b"".join(json.dumps(r).encode() + b"\n" for r in annotated[:2])
    assert b"\\u00fc" in lines  # non-ASCII escaped, as json.dumps writes by default
    path.write_bytes(lines + b'{"conversations": [{"va')  # a write cut short
    rows = _rows(records)
    with AnnotatedFile(path, "in.jsonl") as f:
        assert f.resume(rows, "assistant") == 2
        assert path.read_bytes() == lines
        assert next(rows) == (3, records[2])  # the resumed run continues with record 3
        f.append(annotated[2:])
    assert path.read_bytes() == b"".join(json.dumps(r).encode() + b"\n" for r in annotated)
    with AnnotatedFile(path, "in.jsonl") as f, pytest.raises(DataError, match=r"out.jsonl:3: .*more records"):
        f.resume(_rows(records[:2]), "assistant")
    swapped = [records[1], records[0], records[2]]
    with AnnotatedFile(path, "in.jsonl") as f, pytest.raises(DataError) as e:
        f.resume(_rows(swapped), "assistant")
    assert str(e.value).startswith(f"{path}:1: ") and "not in.jsonl:1 annotated" in str(e.value)


def test_annotated_file_refuses_a_second_writer(tmp_path):
    with AnnotatedFile(tmp_path / "o.jsonl", "in.jsonl"):
        with pytest.raises(DataError, match="another attribute_annotate.py is writing"):
            AnnotatedFile(tmp_path / "o.jsonl", "in.jsonl")


# ---------------------------------------------------------------- the HTTP client

class _Server:
    """A stub /infer answering from a list of (status, body), one per request."""

    def __init__(self, answers):
        self.answers, self.bodies = list(answers), []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self):
                owner.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                status, body = owner.answers.pop(0)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_client_retries_5xx_then_succeeds_and_counts_exceeded():
    ok = {"rewards": [[1.0] * 9, [2.0] * 9], "exceeded": [False, True]}
    srv = _Server([(503, {"error": "server is shutting down"}), (500, {"error": "boom"}), (200, ok)])
    waits = []
    try:
        client = RewardClient("127.0.0.1", srv.port, retries=2, backoff=0.5, add_eos=True, sleep=waits.append)
        assert client.score(["a", "b"]) == ok["rewards"]
    finally:
        srv.close()
    assert waits == [0.5, 1.0] and client.exceeded == 1
    assert srv.bodies == [{"sentences": ["a", "b"], "add_EOS": True}] * 3


@pytest.mark.parametrize("answers,needle", [
    ([(422, {"error": "sentences: 9 sequences; at most 8", "field": "sentences"})],
     "answered HTTP 422 to PUT /infer: sentences: 9 sequences; at most 8"),
    ([(503, {"error": "closing"})] * 3,
     r"answered HTTP 503 to PUT /infer: closing \(gave up after 3 tries\)"),
    ([(200, {"rewards": [[1.0] * 9]})], "without 2 rows"),
    ([(200, {"rewards": [[1.0] * 9, [None] * 9]})], "without 2 rows"),
])
def test_client_errors_are_one_line(answers, needle):
    srv = _Server(answers)
    try:
        with pytest.raises(RewardServerError, match=needle) as e:
            RewardClient("127.0.0.1", srv.port, retries=2, sleep=lambda s: None).score(["a", "b"])
    finally:
        srv.close()
    assert "\n" not in e.value.user_line() and e.value.user_line().startswith("reward server error: ")
    assert len(srv.bodies) == (3 if "503" in needle else 1)  # only 5xx were retried


def test_client_unreachable_names_host_and_port():
    port = free_port()
    waits = []
    with pytest.raises(RewardServerError) as e:
        RewardClient("127.0.0.1", port, retries=3, backoff=0.01, sleep=waits.append).score(["a"])
    assert f"reward server unreachable at 127.0.0.1:{port}" in str(e.value) and "4 tries" in str(e.value)
    assert waits == [0.01, 0.02, 0.04]
