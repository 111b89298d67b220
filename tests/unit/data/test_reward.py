"""Reward-model data: NeMo-Aligner's regression rows, -pref row pairs, the three binary pair formats, one-line
errors, over-length replacement, and collation."""

import json

import pytest

from megatron_align.data.errors import DataError
from megatron_align.data.reward import (
    ComparisonFile,
    RegressionFile,
    RMDataset,
    RMPair,
    RMRules,
    collate_rm,
)
from tests.helpers import ROOT


class CharTokenizer:
    """One id per character (ids 3..), eos 2, pad 0."""

    eos_id, pad_id = 2, 0

    def text_to_ids(self, text):
        return [3 + (ord(c) % 250) for c in text]


TOK = CharTokenizer()
M = -100.0


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_regression_rows_of_nemo_fixture():
    f = RegressionFile(ROOT / "tests" / "data" / "test-rm.jsonl", TOK, RMRules(seq_length=10_000,
                                                                                num_attributes=9))
    assert len(f) == 8
    row = f.item(0)
    assert row.labels.tolist() == [-100.0] * 4 + [4.0, 4.0, 4.0, 3.0, 2.0]
    assert row.input_ids.tolist()[:2] == TOK.text_to_ids("<e")
    assert row.source.endswith("test-rm.jsonl:1")


def test_label_count_and_type_errors_name_file_and_line(tmp_path):
    p = _write(tmp_path / "rm.jsonl", [{"text": "a", "label": [1, 2]}, {"text": "b", "label": [1, "x", 3]}])
    f = RegressionFile(p, TOK, RMRules(seq_length=100, num_attributes=3))
    with pytest.raises(DataError) as e:
        f.item(0)
    assert str(e.value) == (f"{p}:1: label: has 2 values but model.regression.num_attributes=3 (use -100 for "
                            "a missing attribute)")
    with pytest.raises(DataError, match=r":2: label\[1\]: 'x' is not a finite number"):
        f.item(1)
    skip = RegressionFile(p, TOK, RMRules(seq_length=100, num_attributes=3, on_bad_record="skip"))
    assert skip.item(0) is None and skip.report.count("bad_record") == 1


def test_pref_rows_pair_up_and_must_agree(tmp_path):
    rows = [{"text": "p r1", "label": [-2] + [M] * 8}, {"text": "p r2", "label": [-2] + [M] * 8},
            {"text": "q r1", "label": [1] + [M] * 8}, {"text": "q r2", "label": [3] + [M] * 8}]
    p = _write(tmp_path / "pref.jsonl", rows)
    f = RegressionFile(p, TOK, RMRules(seq_length=100, num_attributes=9, pairs=True))
    assert len(f) == 2
    pair = f.item(0)
    assert isinstance(pair, RMPair) and pair.preference == -2.0
    assert pair.first.source.endswith(":1") and pair.second.source.endswith(":2")
    with pytest.raises(DataError, match=r":4: label\[0\]: 3 differs from the preference 1"):
        f.item(1)
    _write(p, rows[:3])
    with pytest.raises(DataError, match="odd number"):
        RegressionFile(p, TOK, RMRules(seq_length=100, num_attributes=9, pairs=True))


@pytest.mark.parametrize("fmt", ["exo", "nemo_dpo", "nemo_text"])
def test_binary_pair_formats_give_the_same_pairs(tmp_path, fmt):
    pairs = [("Q1 ", "good", "bad"), ("Q2 ", "fine", "poor answer")]
    if fmt == "exo":
        recs = [{"prompt": q, "chosen": c, "rejected": r} for q, c, r in pairs]
    elif fmt == "nemo_dpo":
        recs = [{"prompt": q, "chosen_response": c, "rejected_response": r} for q, c, r in pairs]
    else:
        recs = [x for q, c, r in pairs for x in ({"text": q + c}, {"text": q + r})]
    f = ComparisonFile(_write(tmp_path / "pairs.jsonl", recs), TOK, RMRules(seq_length=100))
    assert len(f) == 2
    for k, (q, c, r) in enumerate(pairs):
        item = f.item(k)
        assert item.preference == -1.0
        assert item.first.input_ids.tolist() == TOK.text_to_ids(q + c)
        assert item.second.input_ids.tolist() == TOK.text_to_ids(q + r)


def test_unknown_pair_format(tmp_path):
    p = _write(tmp_path / "x.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(DataError, match=r"x.jsonl:1: \(record\): unknown pair format"):
        ComparisonFile(p, TOK, RMRules(seq_length=100))


def test_over_length_row_is_replaced_by_the_next_and_counted(tmp_path):
    p = _write(tmp_path / "rm.jsonl", [{"text": "short", "label": [1]}, {"text": "x" * 50, "label": [2]},
                                      {"text": "ok", "label": [3]}])
    ds = RMDataset([RegressionFile(p, TOK, RMRules(seq_length=10, append_eod=True))])
    assert [ds[i].labels[0] for i in range(3)] == [1.0, 3.0, 3.0]
    assert ds[0].input_ids.tolist()[-1] == TOK.eos_id
    assert ds.files[0].report.count("over_length") == 1


def test_collate_pairs_interleaves_rows_and_pads(tmp_path):
    p = _write(tmp_path / "pairs.jsonl", [{"prompt": "ab", "chosen": "c", "rejected": "defg"}])
    f = ComparisonFile(p, TOK, RMRules(seq_length=100))
    batch = collate_rm([f.item(0), f.item(0)], pad_id=0, pad_to_multiple_of=4)
    assert batch["tokens"].shape == (4, 8)
    assert batch["lengths"].tolist() == [3, 6, 3, 6]
    assert batch["preference"].tolist() == [-1.0, -1.0]
    assert batch["tokens"][0, 3:].eq(0).all()
    fixed = collate_rm([f.item(0)], pad_id=0, seq_length=16)
    assert fixed["tokens"].shape == (2, 16) and fixed["position_ids"][1].tolist() == list(range(16))
