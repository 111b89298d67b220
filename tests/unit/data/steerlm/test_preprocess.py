"""SteerLM data preparation, run as the SteerLM document runs it (plus an input flag: nothing is downloaded).

Tiny raw files in each published schema (an OASST trees .jsonl.gz, HelpSteer / HelpSteer2 .jsonl.gz and
parquet, HelpSteer2-Preference rows) go through the seed's commands: the preprocessing scripts, the cat/awk
merge, and process_to_regression_format.py. Outputs are checked against records and lines written by hand
here, byte for byte; regression rows also against the NeMo-Aligner fixture test-rm.jsonl (every row
round-trips). Also: the attribute label encoding and its errors, and the one-line
``file:line: field: problem`` errors (exit 2).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import runpy
import subprocess
import sys

import pytest

from megatron_align.data.nemo_chat import parse_chat_record, render_chat
from megatron_align.data.steerlm.attributes import LabelError, decode_label, encode_label, label_vector
from megatron_align.data.steerlm.oasst import preprocess_oasst
from megatron_align.data.steerlm.regression import convert_file
from tests.helpers import ROOT

SCRIPTS = ROOT / "examples" / "nlp" / "data" / "steerlm"
FIXTURE_RM = ROOT / "tests" / "data" / "test-rm.jsonl"
SYS = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
       "detailed, and polite answers to the user's questions.")
ATTRS = ["quality", "toxicity", "humor", "creativity",  # NeMo-Aligner's order
         "helpfulness", "correctness", "coherence", "complexity", "verbosity"]
M = -100.0
OASST = "2023-04-12_oasst_all.trees.jsonl.gz"
MERGE_CMDS = [  # the SteerLM document's merge step, verbatim
    "cat data/oasst/train.jsonl data/helpsteer/train.jsonl | awk '{for(i=1;i<=4;i++) print}' > "
    "data/merge_train.jsonl",
    "cat data/oasst/val.jsonl data/helpsteer/val.jsonl > data/merge_val.jsonl",
]


# ---------------------------------------------------------------- raw inputs, in the published schemas

def _msg(role, text, labels=None, replies=()):
    node = {"message_id": f"id-{text}", "role": role, "text": text, "lang": "en", "review_result": True}
    if labels is not None:
        node["labels"] = {k: {"value": v, "count": 3} for k, v in labels.items()}
    node["replies"] = list(replies)
    return node


TREES = [
    {"message_tree_id": "t1", "tree_state": "ready_for_export", "prompt": _msg(
        "prompter", "Hi ünï", {"quality": 0.75, "spam": 0.0}, [
            _msg("assistant", "Hello", {"quality": 0.625, "toxicity": 0.125, "humor": 0.375,
                                        "creativity": 0.875, "helpfulness": 1.0, "violence": 0.5}, [
                _msg("prompter", "More?", None, [_msg("assistant", "Sure")])]),
            _msg("assistant", "Yo", {"spam": 0.0, "fails_task": 1.0})])},
    {"message_tree_id": "t2", "tree_state": "aborted_low_grade", "prompt": _msg(
        "prompter", "Q2", None, [
            _msg("assistant", "A2", {"quality": 1.0, "toxicity": 0.0}, [_msg("prompter", "Follow")]),
            _msg("assistant", "A3", {"humor": 0.5})])},
]


def U(value):
    return {"value": value, "from": "User", "label": None}


def A(value, label=...):
    return {"value": value, "from": "Assistant"} if label is ... else {"value": value, "from": "Assistant",
                                                                         "label": label}


def rec(*turns):
    return {"conversations": list(turns), "system": SYS, "mask": "User", "type": "VALUE_TO_TEXT"}


# Per tree: one conversation per root-to-leaf path. round(v * 4), halves to even: .625->2, .125->0, .375->2,
# .875->4; helpfulness / violence / spam / fails_task are not SteerLM's OASST attributes; user labels -> null.
OASST_CONVS = [
    [rec(U("Hi ünï"), A("Hello", "quality:2,toxicity:0,humor:2,creativity:4"), U("More?"), A("Sure")),
     rec(U("Hi ünï"), A("Yo", ""))],
    [rec(U("Q2"), A("A2", "quality:4,toxicity:0"), U("Follow")),
     rec(U("Q2"), A("A3", "humor:2"))],
]
HS_TRAIN = [
    {"prompt": "What is 2+2?", "response": "4.", "helpfulness": 3, "correctness": 4, "coherence": 4,
     "complexity": 0, "verbosity": 1},
    {"prompt": "Say hi in French", "response": "Bonjour — salut !", "helpfulness": 4, "correctness": 4,
     "coherence": 4, "complexity": 1, "verbosity": 2},
]
HS_VAL = [{"prompt": "Name a colour", "response": "Blue", "helpfulness": 2, "correctness": 3, "coherence": 4,
           "complexity": 0, "verbosity": 0}]
HS_TRAIN_LINE1 = (  # written by hand: NeMo-Aligner's key order and json.dumps(ensure_ascii=False) separators
    '{"conversations": [{"value": "What is 2+2?", "from": "User", "label": null}, {"value": "4.", "from": '
    '"Assistant", "label": "helpfulness:3,correctness:4,coherence:4,complexity:0,verbosity:1"}], "system": "'
    + SYS + '", "mask": "User", "type": "VALUE_TO_TEXT"}\n')
MULTI = "Hi<extra_id_1>Assistant\nHello!<extra_id_1>User\nTell me a joke"  # HelpSteer2's multi-turn prompts


def _hs2(prompt, response, h, c, co, cx, v):
    return {"prompt": prompt, "response": response, "helpfulness": h, "correctness": c, "coherence": co,
            "complexity": cx, "verbosity": v}


HS2_TRAIN = [  # two responses per prompt, in adjacent rows
    _hs2("Haiku on rain", "Rain taps the window", 4, 4, 4, 2, 2),
    _hs2("Haiku on rain", "Rain.", 1, 2, 4, 0, 0),
    _hs2(MULTI, "Why did the cat...", 3, 3, 4, 1, 1), _hs2(MULTI, "No.", 0, 1, 3, 0, 0)]
HS2_VAL = [_hs2("Capital of France?", "Paris", 4, 4, 4, 0, 0),
           _hs2("Capital of France?", "Lyon", 0, 0, 4, 0, 0)]


def _pref(split, prompt, r1, r2, strength):
    return {"split": split, "prompt": prompt, "response_1": r1, "response_2": r2,
            "preference_strength": strength, "preference_statement": "@Response 1 is better.",
            "preference_elaboration": "...",
            "three_most_similar_preferences": [], "all_preferences_unprocessed": []}


PREFS = [_pref("train", "P1", "R1a", "R1b", -2), _pref("validation", "P2", "R2a", "R2b", 3),
         _pref("train", "P3", "R3a", "R3b", 0)]


def _write_jsonl_gz(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _start(script, *args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(SCRIPTS / script), *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _finish(*procs):
    """Wait for ``procs`` (started together: each spends ~2 s importing torch) and check they succeeded."""
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, (proc.args, out, err)


def _run(script, *args, cwd):
    proc = _start(script, *args, cwd=cwd)
    out, err = proc.communicate(timeout=180)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _main(script):
    """A script's ``main(argv)``, loaded without running it (for the cheap in-process runs)."""
    return runpy.run_path(str(SCRIPTS / script))["main"]


def _lines(path):
    with open(path, encoding="utf-8", newline="") as f:
        return f.read().split("\n")[:-1]


def _records(path):
    return [json.loads(line) for line in _lines(path)]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Raw files in ``raw/``, then the SteerLM document's commands, run in this folder (outputs: data/)."""
    d = tmp_path_factory.mktemp("steerlm")
    _write_jsonl_gz(d / "raw" / OASST, TREES)
    for name, rows in (("train", HS_TRAIN), ("validation", HS_VAL)):
        _write_jsonl_gz(d / "raw" / "helpsteer" / f"{name}.jsonl.gz", rows)
    for name, rows in (("train", HS2_TRAIN), ("validation", HS2_VAL)):
        _write_jsonl_gz(d / "raw" / "helpsteer2" / f"{name}.jsonl.gz", rows)
    _write_jsonl_gz(d / "raw" / "helpsteer2" / "preference" / "preference.jsonl.gz", PREFS)
    _finish(  # the SteerLM document's preprocessing commands, plus the input flag
        _start("preprocess_openassistant_data.py", "--output_directory=data/oasst",
               f"--input_file=raw/{OASST}", cwd=d),
        _start("preprocess_helpsteer_data.py", "--output_directory=data/helpsteer",
               "--input_dir=raw/helpsteer", cwd=d),
        _start("preprocess_helpsteer2_data.py", "--output_directory=data/helpsteer2",
               "--input_dir=raw/helpsteer2", cwd=d),
        _start("preprocess_helpsteer2_data.py", "--output_directory=data/helpsteer2-pref", "-pref",
               "--input_dir=raw/helpsteer2", cwd=d))
    for cmd in MERGE_CMDS:
        subprocess.run(["bash", "-c", cmd], cwd=d, check=True)
    _finish(
        _start("process_to_regression_format.py", "--input-file=data/merge_train.jsonl",
               "--output-file=data/merge_train_reg.jsonl", cwd=d),
        _start("process_to_regression_format.py", "--input-file=data/helpsteer2-pref/train.jsonl",
               "--output-file=data/helpsteer2-pref/train_reg.jsonl", cwd=d))
    return d


# ---------------------------------------------------------------- OpenAssistant

def test_oasst_trees_flattened_labelled_and_split(work):
    order = [0, 1]
    random.seed(10)  # NeMo-Aligner: random.seed(10); random.shuffle(trees); first int(0.95 * n) are train
    random.shuffle(order)
    cut = int(len(order) * 0.95)
    want_train = [r for t in order[:cut] for r in OASST_CONVS[t]]
    want_val = [r for t in order[cut:] for r in OASST_CONVS[t]]
    train, val = _records(work / "data/oasst/train.jsonl"), _records(work / "data/oasst/val.jsonl")
    assert (train, val) == (want_train, want_val)
    for record in train + val:  # key order is part of the byte format
        assert list(record) == ["conversations", "system", "mask", "type"]
        for turn in record["conversations"]:
            assert list(turn) == ["value", "from", "label"][:len(turn)]
        parse_chat_record(record)  # SFT training reads them
    line = next(s for s in _lines(work / "data/oasst/train.jsonl") + _lines(work / "data/oasst/val.jsonl")
                if '"Yo"' in s)
    assert line == ('{"conversations": [{"value": "Hi ünï", "from": "User", "label": null}, {"value": "Yo", '
                    '"from": "Assistant", "label": ""}], "system": "' + SYS + '", "mask": "User", "type": '
                    '"VALUE_TO_TEXT"}')


def test_oasst_reads_the_dump_from_the_output_directory_as_nemo_does(work, tmp_path, capsys):
    out = tmp_path / "oasst"
    out.mkdir()
    (out / OASST).write_bytes((work / "raw" / OASST).read_bytes())
    assert _main("preprocess_openassistant_data.py")([f"--output_directory={out}"]) == 0
    for name in ("train.jsonl", "val.jsonl"):
        assert (out / name).read_bytes() == (work / "data/oasst" / name).read_bytes()


def test_oasst_split_is_seeded_by_tree(tmp_path):
    trees = [{"prompt": _msg("prompter", f"q{i}", None, [_msg("assistant", f"a{i}", {"quality": 1.0})])}
             for i in range(40)]
    _write_jsonl_gz(tmp_path / "t.jsonl.gz", trees)
    counts = preprocess_oasst(tmp_path / "t.jsonl.gz", tmp_path / "out")
    order = list(range(40))
    random.seed(10)
    random.shuffle(order)
    assert counts == {"trees": 40, "train": 38, "val": 2}
    got = [r["conversations"][0]["value"] for r in _records(tmp_path / "out/train.jsonl")]
    got += [r["conversations"][0]["value"] for r in _records(tmp_path / "out/val.jsonl")]
    assert got == [f"q{i}" for i in order]


# ---------------------------------------------------------------- HelpSteer / HelpSteer2

def _hs_record(row, names):
    return rec(U(row["prompt"]), A(row["response"], ",".join(f"{n}:{row[n]}" for n in names)))


def test_helpsteer_records(work):
    five = ATTRS[4:]
    assert _lines(work / "data/helpsteer/train.jsonl")[0] == HS_TRAIN_LINE1.rstrip("\n")
    assert _records(work / "data/helpsteer/train.jsonl") == [_hs_record(r, five) for r in HS_TRAIN]
    assert _records(work / "data/helpsteer/val.jsonl") == [_hs_record(r, five) for r in HS_VAL]
    assert "Bonjour — salut !" in _lines(work / "data/helpsteer/train.jsonl")[1]  # ensure_ascii=False


def test_helpsteer_reads_parquet_the_same(work, tmp_path):
    import pyarrow as pa  # the [test] extra installs it ([parquet] for users)
    import pyarrow.parquet as pq

    for name, rows in (("train", HS_TRAIN), ("validation", HS_VAL)):
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / f"{name}.parquet")
    out = tmp_path / "out"
    main = _main("preprocess_helpsteer_data.py")
    assert main([f"--output_directory={out}", f"--train_file={tmp_path / 'train.parquet'}",
                 "--validation_file", str(tmp_path / "validation.parquet")]) == 0
    for name in ("train.jsonl", "val.jsonl"):
        assert (out / name).read_bytes() == (work / "data/helpsteer" / name).read_bytes()


def test_helpsteer2_pairs_and_only_helpfulness(work, tmp_path):
    five = ATTRS[4:]
    assert _records(work / "data/helpsteer2/train.jsonl") == [_hs_record(r, five) for r in HS2_TRAIN]
    assert _records(work / "data/helpsteer2/val.jsonl") == [_hs_record(r, five) for r in HS2_VAL]
    out = tmp_path / "oh"
    assert _main("preprocess_helpsteer2_data.py")([f"--output_directory={out}", "--only_helpfulness",
                                                   f"--input_dir={work / 'raw/helpsteer2'}"]) == 0
    assert _records(out / "train.jsonl") == [_hs_record(r, ["helpfulness"]) for r in HS2_TRAIN]
    assert _records(out / "val.jsonl") == [_hs_record(r, ["helpfulness"]) for r in HS2_VAL]


def test_helpsteer2_preference_pairs(work):
    def pair(p):
        label = f"quality:{p['preference_strength']}"
        return [rec(U(p["prompt"]), A(p[key], label)) for key in ("response_1", "response_2")]

    assert _records(work / "data/helpsteer2-pref/train.jsonl") == pair(PREFS[0]) + pair(PREFS[2])
    assert _records(work / "data/helpsteer2-pref/val.jsonl") == pair(PREFS[1])
    # scaled Bradley-Terry reads adjacent rows as (response 1, response 2); the strength sits in quality
    reg = _records(work / "data/helpsteer2-pref/train_reg.jsonl")
    assert [r["label"] for r in reg] == [[-2.0] + [M] * 8] * 2 + [[0.0] + [M] * 8] * 2
    assert [r["text"].endswith(f"\n<extra_id_1>Assistant\n{resp}\n<extra_id_2>") for r, resp in
            zip(reg, ["R1a", "R1b", "R3a", "R3b"])] == [True] * 4


def test_preference_with_only_helpfulness_leaves_empty_labels(work, tmp_path, caplog):
    out = tmp_path / "prefoh"
    assert _main("preprocess_helpsteer2_data.py")([f"--output_directory={out}", "-pref", "-oh",
                                                   f"--input_dir={work / 'raw/helpsteer2'}"]) == 0
    assert "only_helpfulness" in caplog.text
    labels = [r["conversations"][1]["label"] for r in _records(out / "train.jsonl")]
    assert labels == ["", "", "", ""]  # NeMo-Aligner's behaviour; the regression step then writes nothing
    assert convert_file(out / "train.jsonl", out / "train_reg.jsonl") == 0


# ---------------------------------------------------------------- merge + regression format

def _reg_text(*turns):
    body = "".join(f"<extra_id_1>{role}\n{value}\n" for role, value in turns)
    return f"<extra_id_0>System\n{SYS}\n{body}<extra_id_2>"


def test_merge_and_regression_rows(work):
    oasst_train = _records(work / "data/oasst/train.jsonl")
    merged = _lines(work / "data/merge_train.jsonl")
    sources = _lines(work / "data/oasst/train.jsonl") + _lines(work / "data/helpsteer/train.jsonl")
    assert merged == [line for line in sources for _ in range(4)]
    assert _lines(work / "data/merge_val.jsonl") == (_lines(work / "data/oasst/val.jsonl")
                                                     + _lines(work / "data/helpsteer/val.jsonl"))

    per_record = {  # rows of each record written by hand: every turn with a non-empty label gives one
        "Hello": [(_reg_text(("User", "Hi ünï"), ("Assistant", "Hello")), [2.0, 0.0, 2.0, 4.0] + [M] * 5)],
        "Yo": [],
        "A2": [(_reg_text(("User", "Q2"), ("Assistant", "A2")), [4.0, 0.0] + [M] * 7)],
        "A3": [(_reg_text(("User", "Q2"), ("Assistant", "A3")), [M, M, 2.0] + [M] * 6)],
    }
    want = []
    for record in oasst_train:
        want += per_record[record["conversations"][1]["value"]] * 4
    want += [(_reg_text(("User", "What is 2+2?"), ("Assistant", "4.")),
              [M] * 4 + [3.0, 4.0, 4.0, 0.0, 1.0])] * 4
    want += [(_reg_text(("User", "Say hi in French"), ("Assistant", "Bonjour — salut !")),
              [M] * 4 + [4.0, 4.0, 4.0, 1.0, 2.0])] * 4
    got = _records(work / "data/merge_train_reg.jsonl")
    assert [(r["text"], r["label"]) for r in got] == want
    assert all(list(r) == ["text", "label"] for r in got)
    assert _lines(work / "data/merge_train_reg.jsonl")[-1] == (
        '{"text": "<extra_id_0>System\\n' + SYS + '\\n<extra_id_1>User\\nSay hi in French\\n'
        '<extra_id_1>Assistant\\nBonjour — salut !\\n<extra_id_2>", '
        '"label": [-100.0, -100.0, -100.0, -100.0, 4.0, 4.0, 4.0, 1.0, 2.0]}')


def test_regression_text_rates_each_labelled_turn_with_plain_history(tmp_path):
    record = rec(U("q1"), A("a1", "helpfulness:1"), U("q2"), A("a2", None), U("q3"), A("a3", "quality:-3"))
    (tmp_path / "in.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    assert convert_file(tmp_path / "in.jsonl", tmp_path / "out.jsonl") == 2
    rows = _records(tmp_path / "out.jsonl")
    assert rows[0] == {"text": _reg_text(("User", "q1"), ("Assistant", "a1")),
                       "label": [M] * 4 + [1.0] + [M] * 4}
    assert rows[1]["text"] == _reg_text(("User", "q1"), ("Assistant", "a1"), ("User", "q2"),
                                        ("Assistant", "a2"), ("User", "q3"), ("Assistant", "a3"))
    assert rows[1]["label"] == [-3.0] + [M] * 8


def _parse_rm_text(text):
    """Invert the chat template of a fixture row: (system, [(role, value)])."""
    head, tail = "<extra_id_0>System\n", "\n<extra_id_2>"
    assert text.startswith(head) and text.endswith(tail)
    system, *turns = text[len(head):-len("<extra_id_2>")].split("<extra_id_1>")
    return system[:-1], [(t.split("\n", 1)[0], t.split("\n", 1)[1][:-1]) for t in turns]


def test_regression_round_trips_the_nemo_aligner_fixture(tmp_path):
    lines = _lines(FIXTURE_RM)
    records = []
    for line in lines:
        row = json.loads(line)
        system, turns = _parse_rm_text(row["text"])
        assert system == SYS
        label = ",".join(f"{n}:{int(v)}" for n, v in zip(ATTRS, row["label"]) if v != M)
        convs = [{"from": role, "value": value} for role, value in turns]
        convs[-1]["label"] = label
        records.append({"system": system, "mask": "User", "type": "VALUE_TO_TEXT", "conversations": convs})
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    assert convert_file(tmp_path / "sft.jsonl", tmp_path / "reg.jsonl") == len(lines)
    assert (tmp_path / "reg.jsonl").read_bytes() == FIXTURE_RM.read_bytes()
    # the same text SFT training renders, up to where a TEXT_TO_VALUE record's label starts
    for record, line in zip(records, lines):
        text, label = json.loads(line)["text"], record["conversations"][-1]["label"]
        rendered = render_chat(parse_chat_record(dict(record, type="TEXT_TO_VALUE"))).text
        assert rendered == f"{text}{label}\n<extra_id_1>"


# ---------------------------------------------------------------- attribute labels

def test_label_encode_decode():
    got = encode_label({"verbosity": 2, "quality": 4, "helpfulness": 3})
    assert got == "quality:4,helpfulness:3,verbosity:2"
    assert encode_label({}) == ""
    full = "quality:4,toxicity:0,humor:1,creativity:2,helpfulness:4,correctness:3,coherence:4,complexity:2," \
           "verbosity:0"
    assert decode_label(full) == dict(zip(ATTRS, [4, 0, 1, 2, 4, 3, 4, 2, 0]))
    assert label_vector(full) == [4.0, 0.0, 1.0, 2.0, 4.0, 3.0, 4.0, 2.0, 0.0]
    assert label_vector("coherence:1,humor:0") == [M, M, 0.0, M, M, M, 1.0, M, M]
    assert decode_label("quality:-3") == {"quality": -3}  # HelpSteer2-Preference strength


@pytest.mark.parametrize("text, problem", [
    ("funny:3", "unknown attribute 'funny'"),
    ("quality:4, toxicity:0", "unknown attribute ' toxicity'"),
    ("helpfulness:5", "helpfulness: value 5 is out of range 0..4"),
    ("toxicity:-1", "toxicity: value -1 is out of range 0..4"),
    ("quality:-4", "quality: value -4 is out of range -3..4"),
    ("quality:3.5", "quality: '3.5' is not an integer"),
    ("quality:4,quality:3", "attribute 'quality' appears twice"),
    ("quality", "'quality' is not name:value"),
    ("", "empty label"),
])
def test_label_errors(text, problem):
    with pytest.raises(LabelError) as err:
        decode_label(text)
    assert problem in str(err.value)
    with pytest.raises(LabelError):
        encode_label({"helpfulness": 7})
    with pytest.raises(LabelError, match="unknown attribute 'spam'"):
        encode_label({"spam": 1})


# ---------------------------------------------------------------- errors: one line, exit 2

def test_regression_script_reports_a_bad_label_as_one_line(tmp_path):
    good = rec(U("q"), A("a", "quality:4"))
    bad = rec(U("q"), A("a", "quality:4,toxicity:9"))
    (tmp_path / "sft.jsonl").write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n", encoding="utf-8")
    proc = _run("process_to_regression_format.py", "--input-file=sft.jsonl", "--output-file=reg.jsonl",
                cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "data error: sft.jsonl:3: conversations[1].label: toxicity: value 9 is out of range 0..4"]
    assert not (tmp_path / "reg.jsonl").exists()  # no half-written output


@pytest.mark.parametrize("script, rows, line", [
    ("preprocess_openassistant_data.py",
     [TREES[0], {"prompt": _msg("prompter", "x", None, [_msg("bot", "y")])}],
     "data error: {raw}:2: prompt.replies[0].role: unknown role 'bot' (expected prompter or assistant)"),
    ("preprocess_openassistant_data.py", [{"prompt": _msg("prompter", "x", {"quality": 1.5})}],
     "data error: {raw}:1: prompt.labels.quality.value: 1.5 is outside [0, 1]"),
    ("preprocess_helpsteer_data.py", [HS_TRAIN[0], dict(HS_TRAIN[1], helpfulness=5)],
     "data error: {raw}:2: helpfulness: value 5 is out of range 0..4"),
    ("preprocess_helpsteer2_data.py", [{k: v for k, v in HS2_TRAIN[0].items() if k != "verbosity"}],
     "data error: {raw}:1: verbosity: missing"),
    ("preprocess_helpsteer2_data.py", [dict(PREFS[0], preference_strength=4)],
     "data error: {raw}:1: preference_strength: value 4 is out of range -3..3"),
])
def test_bad_input_rows_are_one_line_errors(tmp_path, capsys, script, rows, line):
    raw = tmp_path / "in.jsonl.gz"
    _write_jsonl_gz(raw, rows)
    if script == "preprocess_openassistant_data.py":
        args = [f"--input_file={raw}"]
    elif "preference_strength" in rows[0]:
        args = ["-pref", f"--preference_file={raw}"]
    else:
        args = [f"--train_file={raw}", f"--validation_file={raw}"]
    with pytest.raises(SystemExit) as ex:
        _main(script)([f"--output_directory={tmp_path / 'out'}", *args])
    assert ex.value.code == 2
    assert capsys.readouterr().err.splitlines() == [line.format(raw=raw)]


@pytest.mark.parametrize("script, args, names", [
    ("preprocess_openassistant_data.py", [], ["--input_file", OASST]),
    ("preprocess_helpsteer_data.py", [], ["--input_dir", "train.jsonl.gz", "validation.jsonl.gz",
                                          "nvidia/HelpSteer "]),
    ("preprocess_helpsteer2_data.py", ["--only_helpfulness"],
     ["--input_dir", "train.jsonl.gz", "nvidia/HelpSteer2"]),
    ("preprocess_helpsteer2_data.py", ["-pref"], ["--input_dir", "preference/preference.jsonl.gz"]),
])
def test_seed_command_without_an_input_names_the_flag_and_file(tmp_path, capsys, script, args, names):
    with pytest.raises(SystemExit) as ex:
        _main(script)([f"--output_directory={tmp_path / 'data'}", *args])
    assert ex.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    for name in names:
        assert name in err[0]


def test_regression_conversion_validates_records_with_the_chat_reader():
    """process_to_regression_format reads records through nemo_chat.parse_chat_record (one validator),
    leniently as NeMo-Aligner does: an empty turn text and an unknown mask pass, a bad role does not."""
    from megatron_align.data.errors import RecordError
    from megatron_align.data.steerlm.regression import regression_rows

    lenient = {"system": "", "mask": "Human", "conversations": [
        {"from": "User", "value": ""}, {"from": "Assistant", "value": "ok", "label": "helpfulness:2"}]}
    assert [r["label"][4] for r in regression_rows(lenient)] == [2.0]
    bad = {"conversations": [{"from": "Bot", "value": "x"}]}
    with pytest.raises(RecordError) as err:
        regression_rows(bad)
    assert (err.value.field, err.value.problem) == (
        "conversations[0].from", "unknown role 'Bot' (expected User or Assistant)")
