"""Lazy JSONL reading: the line-offset index (unicode, blank lines, CRLF, BOM, chunk edges), reads that seek
to one record only, and the index cache keyed by size + mtime."""

import json
import os
import pickle

import numpy as np
import pytest

from megatron_align.data import JsonlFile, build_line_index, load_line_index
from megatron_align.data import jsonl as jsonl_mod

RECORDS = [{"k": 0, "t": "héllo — 日本語 🙂"}, {"k": 1, "t": "plain"},
           {"k": 2, "t": "a\nb (escaped newline)"}, {"k": 3, "t": "naïve café"},
           {"k": 4, "t": "last, no newline"}]


def _messy(path):
    """BOM, blank and whitespace-only lines, CRLF, unicode, no final newline; records on lines 1,3,6,7,9."""
    lines = [json.dumps(RECORDS[0], ensure_ascii=False), "", json.dumps(RECORDS[1]) + "\r", "   ", "\t",
             json.dumps(RECORDS[2], ensure_ascii=False), json.dumps(RECORDS[3], ensure_ascii=False), "",
             json.dumps(RECORDS[4])]
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode("utf-8"))
    return path


def test_index_of_a_messy_file(tmp_path):
    f = JsonlFile(_messy(tmp_path / "m.jsonl"), use_cache=False)
    assert len(f) == 5
    assert [f.line_number(k) for k in range(5)] == [1, 3, 6, 7, 9]
    assert [f.record(k) for k in range(5)] == RECORDS
    assert f.where(2) == f"{f.path}:6"
    assert f.record(-1) == RECORDS[4]
    with pytest.raises(IndexError):
        f.raw(5)


@pytest.mark.parametrize("chunk", [1, 2, 7, 64])
def test_index_is_the_same_for_any_chunk_size(tmp_path, chunk):
    path = _messy(tmp_path / "m.jsonl")
    np.testing.assert_array_equal(build_line_index(path, chunk_size=chunk), build_line_index(path))


def test_empty_and_blank_files(tmp_path):
    (tmp_path / "e.jsonl").write_bytes(b"")
    (tmp_path / "b.jsonl").write_bytes(b"\n  \n\r\n")
    assert build_line_index(tmp_path / "e.jsonl").shape == (0, 3)
    assert build_line_index(tmp_path / "b.jsonl").shape == (0, 3)


def test_reading_record_k_seeks_and_reads_only_that_line(tmp_path, monkeypatch):
    path = tmp_path / "big.jsonl"
    rows = [json.dumps({"i": i, "pad": "x" * (i % 13)}) for i in range(500)]
    path.write_text("\n".join(rows) + "\n")
    f = JsonlFile(path, use_cache=False)
    reads = []
    real_pread = os.pread

    def spy(fd, n, offset):
        reads.append((n, offset))
        return real_pread(fd, n, offset)

    monkeypatch.setattr(jsonl_mod.os, "pread", spy)
    assert f.record(321) == {"i": 321, "pad": "x" * (321 % 13)}
    assert reads == [(len(rows[321]), sum(len(r) + 1 for r in rows[:321]))]
    # overwrite the neighbouring lines in place (same lengths): record 321 still reads right
    data = bytearray(path.read_bytes())
    for k in (320, 322):
        off, n, _ = f.index[k]
        data[off:off + n] = b"#" * n
    path.write_bytes(bytes(data))
    assert f.record(321)["i"] == 321
    assert f.raw(320) == b"#" * len(rows[320])


def test_index_cache_next_to_file_and_in_index_mapping_dir(tmp_path, monkeypatch):
    path = _messy(tmp_path / "m.jsonl")
    idx_dir = tmp_path / "indexmap"
    first = load_line_index(path, index_dir=str(idx_dir))
    assert len(list(idx_dir.glob("m.jsonl.*.idx.npy"))) == 1
    built = []
    monkeypatch.setattr(jsonl_mod, "build_line_index", lambda p, *a: built.append(p) or np.zeros((0, 3)))
    np.testing.assert_array_equal(load_line_index(path, index_dir=str(idx_dir)), first)  # cached
    assert built == []
    with open(path, "ab") as fh:  # the file changes: size and mtime no longer match
        fh.write(b'\n{"k": 5}\n')
    load_line_index(path, index_dir=str(idx_dir))
    assert built == [str(path)]
    monkeypatch.undo()
    load_line_index(path)  # default: next to the file
    assert len(list(tmp_path.glob("m.jsonl.*.idx.npy"))) == 1


def test_unwritable_cache_dir_keeps_the_index_in_memory(tmp_path):
    path = _messy(tmp_path / "m.jsonl")
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    assert len(load_line_index(path, index_dir=str(blocker / "sub"))) == 5


def test_pickles_for_data_loader_workers(tmp_path):
    f = JsonlFile(_messy(tmp_path / "m.jsonl"), use_cache=False)
    f.record(0)
    g = pickle.loads(pickle.dumps(f))
    assert g.record(3) == RECORDS[3] and len(g) == 5
