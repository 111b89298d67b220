"""SteerLM 2.0 records (seed 000's format): rendering in NeMo's template, trained tokens, numeric strings,
one-line errors for every malformed kind, over-length rules, and the collated groups."""

import json

import numpy as np
import pytest

from megatron_align.config.data import ChatPromptTokens
from megatron_align.data.errors import DataError
from megatron_align.data.reward import RMDataset
from megatron_align.data.steerlm2 import SteerLM2File, SteerLM2Rules, collate_steerlm2
from tests.unit.data.test_preference_dataset import TOK, _ids

T = ChatPromptTokens()


def _resp(value, a="-1.5", y="-20", q="-18.25"):
    return {"from": "Assistant", "value": value, "log(P(a|x,y))": a, "log(P(y|x))": y, "log(Q(y|a,x))": q}


def _rec(**kw):
    rec = {"system": "S", "prompt_turns": [{"from": "User", "value": "hi"}], "label": "quality:4,toxicity:0",
           "responses": [_resp("yo"), _resp("hey", -2.0, -21.0, -19.0)]}
    rec.update(kw)
    return rec


def _file(tmp_path, records, **rules):
    path = tmp_path / "s2.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return SteerLM2File(path, TOK, SteerLM2Rules(max_seq_length=rules.pop("max_seq_length", 512), **rules))


def test_seed_record_renders_nemo_template_and_trains_the_response(tmp_path):
    item = _file(tmp_path, [_rec()]).item(0)
    prompt = (f"{T.system_turn_start}System{T.end_of_name}S{T.end_of_turn}{T.turn_start}User{T.end_of_name}hi"
              f"{T.end_of_turn}{T.turn_start}Assistant{T.end_of_name}{T.label_start}quality:4,toxicity:0"
              f"{T.end_of_name}")
    answer = f"yo{T.end_of_turn}{T.turn_start}"
    assert item.sequences[0].tolist() == _ids(prompt + answer)
    assert int(item.targets[0].sum()) == len(answer) and not item.targets[0][:len(prompt)].any()
    assert item.log_p_a.tolist() == [-1.5, -2.0] and item.log_p_y.tolist() == [-20.0, -21.0]
    assert item.log_q_prime.dtype == np.float64 and item.log_q_prime.tolist() == [-18.25, -19.0]
    unlabelled = _file(tmp_path, [_rec(label=None)]).item(0)
    label_line = f"{T.label_start}quality:4,toxicity:0{T.end_of_name}"
    assert len(unlabelled.sequences[0]) == len(item.sequences[0]) - len(label_line)


@pytest.mark.parametrize("record, message", [
    (_rec(responses=[{"from": "Assistant", "value": "a", "log(P(a|x,y))": 1, "log(P(y|x))": 2}]),
     r"responses\[0\]\.log\(Q\(y\|a,x\)\): missing"),
    (_rec(responses=[_resp("a", a="v1")]), r"responses\[0\]\.log\(P\(a\|x,y\)\): 'v1' is not a number"),
    (_rec(responses=[_resp("a", y=True)]), r"responses\[0\]\.log\(P\(y\|x\)\): expected a number, got a b"),
    (_rec(responses=[_resp("a", q="nan")]), r"responses\[0\]\.log\(Q\(y\|a,x\)\): nan is not a finite"),
    (_rec(responses=[]), "responses: expected a non-empty list"),
    (_rec(label="quality:9"), "label: "),
    (_rec(label="quality"), "label: "),
    (_rec(prompt_turns=[{"from": "User", "value": "a"}, {"from": "Assistant", "value": "b"}]),
     "prompt_turns: 2 turns"),
    (_rec(responses=[_resp("a"), {**_resp("b"), "from": "User"}]), "responses: responses from several roles"),
    (_rec(responses=[{**_resp("a"), "value": 3}]), r"responses\[0\]\.value: expected a string"),
    ({"prompt_turns": [], "responses": []}, "system: missing"),
])
def test_malformed_records_name_file_line_field(tmp_path, record, message):
    f = _file(tmp_path, [_rec(), record])
    with pytest.raises(DataError, match=r"s2\.jsonl:2: " + message):
        f.item(1)
    skip = _file(tmp_path, [_rec(), record], on_bad_record="skip")
    assert skip.item(1) is None and skip.report.count("bad_record") == 1


def test_overlong_dropped_and_counted_or_error(tmp_path):
    records = [_rec(responses=[_resp("x" * 200)]), _rec()]
    f = _file(tmp_path, records, max_seq_length=150)
    assert len(RMDataset([f])[0].sequences) == 2 and f.report.count("over_length_dropped") == 1
    with pytest.raises(DataError, match="s2.jsonl:1: responses: .* > max_seq_length=150"):
        _file(tmp_path, records, max_seq_length=150, overlong="error").item(0)


def test_collate_ragged_groups(tmp_path):
    f = _file(tmp_path, [_rec(), _rec(responses=[_resp("a")]), _rec(responses=[_resp(c) for c in "abcde"])])
    batch = collate_steerlm2([f.item(0), f.item(1), f.item(2)], pad_id=0)
    assert batch["offsets"].tolist() == [0, 2, 3, 8] and batch["tokens"].shape[0] == 8
    assert batch["log_q_prime"].tolist()[:2] == [-18.25, -19.0]
    assert batch["loss_mask"].sum(-1).tolist()[2] == len("a\n<extra_id_1>")
