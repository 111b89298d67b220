"""Malformed lines: each kind stops with exactly one line ``file:line: field: what is wrong`` (error mode) or
is skipped, counted and reported (skip mode)."""

import logging

import pytest

from megatron_align.data import DataError, SampleRules, SFTFile
from tests.unit.data_common import sp_tokenizer, write_jsonl

GOOD_CHAT = {"system": "", "mask": "User", "conversations": [{"from": "User", "value": "Q"},
                                                             {"from": "Assistant", "value": "A"}]}


def _chat(**kw):
    rec = {"system": "", "mask": "User", "conversations": [{"from": "User", "value": "Q"},
                                                           {"from": "Assistant", "value": "A"}]}
    rec.update(kw)
    return rec


def _turns(*turns):
    return _chat(conversations=list(turns))


CHAT_CASES = [
    ('{"system": "", "conversations": [', "(record)", "invalid JSON: Expecting value (column 34)"),
    ("[1, 2]", "(record)", "expected a JSON object, got an array"),
    ({"system": "", "mask": "User"}, "conversations",
     "missing: a chat record needs a list of {from, value} turns"),
    ({"input": "x", "output": "y"}, "conversations",
     "missing: a chat record needs a list of {from, value} turns (this looks like a prompt/answer record: "
     "set model.data.chat=False)"),
    (_chat(conversations="hello"), "conversations", "expected an array of turns, got a string"),
    (_chat(conversations=[]), "conversations", "empty: a conversation needs at least one turn"),
    (_turns({"from": "User", "value": "Q"}, "A"), "conversations[1]",
     "expected an object with from and value, got a string"),
    (_turns({"from": "User", "value": "Q"}, {"value": "A"}), "conversations[1].from", "missing"),
    (_turns({"from": "User", "value": "Q"}, {"from": 3, "value": "A"}), "conversations[1].from",
     "expected a string, got a number"),
    (_turns({"from": "User", "value": "Q"}, {"from": "Assistant", "value": "A"},
            {"from": "Bot", "value": "x"}),
     "conversations[2].from", "unknown role 'Bot' (expected User or Assistant)"),
    (_turns({"from": "User", "value": "Q"}, {"from": "Assistant"}), "conversations[1].value", "missing"),
    (_turns({"from": "User", "value": "Q"}, {"from": "Assistant", "value": None}), "conversations[1].value",
     "expected a string, got null"),
    (_turns({"from": "User", "value": "Q"}, {"from": "Assistant", "value": "  \n"}), "conversations[1].value",
     "empty turn"),
    (_turns({"from": "User", "value": "Q"}, {"from": "Assistant", "value": "A", "label": 4}),
     "conversations[1].label", "expected a string or null, got a number"),
    (_chat(mask="Human"), "mask", "unknown role 'Human' (expected User or Assistant)"),
    (_chat(type="SOMETHING"), "type",
     "unknown type 'SOMETHING' (expected VALUE_TO_TEXT or TEXT_TO_VALUE or null)"),
    (_chat(system=["a"]), "system", "expected a string, got an array"),
]


def _file(tmp_path, bad):
    # a good record, a blank line, then the bad one: the bad record is line 3
    return write_jsonl(tmp_path / "data.jsonl", [GOOD_CHAT, "   ", bad, GOOD_CHAT])


@pytest.mark.parametrize("bad, field, problem", CHAT_CASES)
def test_chat_record_errors_are_one_line(tmp_path, bad, field, problem):
    path = _file(tmp_path, bad)
    f = SFTFile(path, sp_tokenizer(), SampleRules(chat=True))
    assert f.sample(0) is not None
    with pytest.raises(DataError) as info:
        f.sample(1)
    assert str(info.value) == f"{path}:3: {field}: {problem}"
    assert "\n" not in str(info.value)
    assert (info.value.line, info.value.field) == (3, field)


@pytest.mark.parametrize("bad, field, problem", CHAT_CASES)
def test_chat_record_errors_are_skipped_and_counted(tmp_path, bad, field, problem, caplog):
    path = _file(tmp_path, bad)
    f = SFTFile(path, sp_tokenizer(), SampleRules(chat=True, on_bad_record="skip"))
    with caplog.at_level(logging.WARNING):
        assert [s is not None for s in (f.sample(0), f.sample(1), f.sample(2), f.sample(1))] == [
            True, False, True, False]
    assert f.report.count("bad_record") == 1  # one bad line, read twice: counted once (issue 12)
    assert f.report.examples["bad_record"][0] == f"{path}:3: {field}: {problem}"
    logged = [r.getMessage() for r in caplog.records if "bad_record" in r.getMessage()]
    assert len(logged) == 1 and f"{path}:3: {field}: {problem}" in logged[0]  # logged once
    assert len(f.samples()) == 2


PROMPT_CASES = [
    ({"output": "y"}, "input", "missing (prompt_template '{input} {output}' uses it)"),
    ({"conversations": [], "output": "y"}, "input",
     "missing (prompt_template '{input} {output}' uses it) (this looks like a chat record: "
     "set model.data.chat=True)"),
    ({"input": "x", "output": 5}, "output", "expected a string, got a number"),
    ({"input": "x", "output": ""}, "output", "empty answer"),
    ("not json", "(record)", "invalid JSON: Expecting value (column 1)"),
]


@pytest.mark.parametrize("bad, field, problem", PROMPT_CASES)
def test_prompt_record_errors(tmp_path, bad, field, problem):
    path = write_jsonl(tmp_path / "kd.jsonl", [{"input": "1 2", "output": "2 1"}, "", bad])
    f = SFTFile(path, sp_tokenizer(), SampleRules(chat=False, prompt_template="{input} {output}"))
    with pytest.raises(DataError) as info:
        f.sample(1)
    assert str(info.value) == f"{path}:3: {field}: {problem}"
    skip = SFTFile(path, sp_tokenizer(), SampleRules(chat=False, on_bad_record="skip"))
    assert skip.sample(1) is None and skip.report.count("bad_record") == 1


def test_invalid_utf8_and_report_summary(tmp_path, caplog):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b'{"input": "a", "output": "b"}\n{"input": "\xff", "output": "b"}\n')
    f = SFTFile(path, sp_tokenizer(), SampleRules(chat=False))
    with pytest.raises(DataError, match=r"bytes\.jsonl:2: \(record\): not valid UTF-8 \(byte 0xff at byte"):
        f.sample(1)
    f = SFTFile(path, sp_tokenizer(), SampleRules(chat=False, on_bad_record="skip"))
    f.sample(1)
    with caplog.at_level(logging.WARNING):
        assert f.report.report() == {"bad_record": 1}
    assert "1 x bad_record" in caplog.text


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match=r"missing\.jsonl: cannot read the data file"):
        SFTFile(tmp_path / "missing.jsonl", sp_tokenizer())
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(DataError, match=r"empty\.jsonl: no records"):
        SFTFile(empty, sp_tokenizer())
    with pytest.raises(ValueError, match="on_bad_record"):
        SFTFile(empty, sp_tokenizer(), SampleRules(on_bad_record="ignore"))


# ----------------------------------------------------------------------------------------------------------
# issue 12, section 4: nesting, one pass before step 1, skip counts lines
# ----------------------------------------------------------------------------------------------------------
DEEP = "[" * 50_000 + "]" * 50_000


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_deeply_nested_line_is_one_line_error_or_counted_skip(tmp_path, mode):
    path = write_jsonl(tmp_path / "deep.jsonl", [GOOD_CHAT, DEEP, GOOD_CHAT])
    f = SFTFile(path, sp_tokenizer(), SampleRules(chat=True, on_bad_record=mode))
    if mode == "error":
        with pytest.raises(DataError) as info:
            f.sample(1)
        assert str(info.value).startswith(f"{path}:2: (record): nesting too deep")
    else:
        assert f.sample(1) is None and f.report.count("bad_record") == 1


def test_validate_reports_the_first_bad_line_and_the_count(tmp_path):
    rows = [GOOD_CHAT] * 5 + ["{not json"] + [GOOD_CHAT] * 3 + [DEEP, '{"conversations": 3}']
    path = write_jsonl(tmp_path / "many.jsonl", rows)
    f = SFTFile(path, sp_tokenizer(), SampleRules(chat=True))
    with pytest.raises(DataError) as info:
        f.validate()
    assert info.value.line == 6 and "invalid JSON" in str(info.value)
    assert "the first of 3 bad lines" in str(info.value) and "\n" not in str(info.value)
    skip = SFTFile(path, sp_tokenizer(), SampleRules(chat=True, on_bad_record="skip"))
    assert skip.validate() == 3 and skip.report.count("bad_record") == 3
    for _ in range(2):  # two epochs over the file: still three bad lines
        skip.samples()
    assert skip.report.count("bad_record") == 3
    good_path = write_jsonl(tmp_path / "good.jsonl", [GOOD_CHAT] * 3)
    good = SFTFile(good_path, sp_tokenizer(), SampleRules(chat=True))
    assert good.validate() == 0


def test_build_sft_dataset_validates_every_line_before_training(tmp_path):
    from megatron_align.config.data import DataConfig
    from megatron_align.data.builder import build_sft_dataset

    path = write_jsonl(tmp_path / "late.jsonl", [GOOD_CHAT] * 50 + ["{late bad line"])
    data = DataConfig()
    data.chat = True
    data.train_ds.file_path = str(path)
    with pytest.raises(DataError, match=r"late\.jsonl:51: .*first of 1 bad line in this file"):
        build_sft_dataset(data, "train_ds", sp_tokenizer(), seed=1)
