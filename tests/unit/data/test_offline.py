"""data/offline: prompt and sample records of the offline stages (every malformed kind one ``file:line: field:
problem`` or skipped and counted; an empty file an error) and the blend's per-file counts."""

import json

import pytest

from megatron_align.data.errors import DataError
from megatron_align.data.offline import OfflineFile, blend, blend_counts


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("row, needle", [
    ({"prompt": "x"}, ":2: input: missing"),
    ({"input": 3}, ":2: input: must be a string, not int"),
    ({"input": "  "}, ":2: input: empty"),
    (["input"], ":2: a record is a JSON object, not list"),
    ("{not json", ":2: "),
])
def test_malformed_prompts_name_file_line_and_field(tmp_path, row, needle):
    path = _write(tmp_path / "p.jsonl", [{"input": "ok"}, row])
    f = OfflineFile(path)
    assert f.item(0).fields == {"input": "ok"}
    with pytest.raises(DataError) as e:
        f.item(1)
    assert f"{path}{needle}" in str(e.value)
    skip = OfflineFile(path, on_bad_record="skip")
    assert [r.fields["input"] for r in blend([skip], None)] == ["ok"] and skip.report.counts


def test_samples_need_a_string_output_and_other_keys_work(tmp_path):
    path = _write(tmp_path / "s.jsonl", [{"q": "a", "a": "b", "extra": 1}, {"q": "a", "a": None}])
    f = OfflineFile(path, input_key="q", output_key="a")
    assert f.item(0).fields == {"q": "a", "a": "b", "extra": 1} and f.item(0).source == f"{path}:1"
    with pytest.raises(DataError, match=r":2: a: must be a string, not NoneType"):
        f.item(1)


def test_an_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataError, match="no records"):
        OfflineFile(path)


def test_blend_counts_apportion_the_total_and_repeat_a_short_file(tmp_path):
    assert blend_counts([10], None) == [10]
    assert blend_counts([6, 2, 2], [0.33, 0.33, 0.34]) == [3, 3, 4]  # of 10: 3.3, 3.3, 3.4
    a = _write(tmp_path / "a.jsonl", [{"input": f"a{i}"} for i in range(6)])
    b = _write(tmp_path / "b.jsonl", [{"input": f"b{i}"} for i in range(2)])
    got = [r.fields["input"] for r in blend([OfflineFile(a), OfflineFile(b)], [0.25, 0.75])]
    assert got == ["a0", "a1", "b0", "b1", "b0", "b1", "b0", "b1"]  # 8 records: a 2, b 6 (the file 3 times)
