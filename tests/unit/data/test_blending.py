"""Blending files by concat_sampling_probabilities: proportions, determinism, resumption, per-pass
permutations, and replacement of dropped records inside the same file's stream."""

import numpy as np
import pytest

from megatron_align.data import BlendedIndex, BlendedSFTDataset, SampleRules, SFTFile
from megatron_align.data.blending import apportion
from tests.unit.data_common import sp_tokenizer, write_jsonl


def _draws(index, n, start=0):
    return [index[i] for i in range(start, start + n)]


def test_proportions_within_tolerance_and_exact_at_block_edges():
    p = [0.7, 0.2, 0.1]
    index = BlendedIndex([50, 30, 7], p, seed=3)
    n = 20000
    ds = np.array([d for d, _ in _draws(index, n)])
    freq = np.bincount(ds, minlength=3) / n
    assert np.all(np.abs(freq - p) < 0.005), freq
    b = index.block_size
    for blocks in (1, 3, 7):  # at block edges each dataset is within one sample of p * positions
        counts = np.bincount(ds[: blocks * b], minlength=3)
        assert np.all(np.abs(counts - np.array(p) * blocks * b) < 1), counts
    # small windows are mixed too (no long runs of one dataset)
    window = np.bincount(ds[:200], minlength=3) / 200
    assert np.all(np.abs(window - p) < 0.1), window


def test_deterministic_given_the_seed_and_resumable_from_any_position():
    a = _draws(BlendedIndex([10, 20], [0.5, 0.5], seed=7), 3000)
    assert a == _draws(BlendedIndex([10, 20], [0.5, 0.5], seed=7), 3000)
    assert a != _draws(BlendedIndex([10, 20], [0.5, 0.5], seed=8), 3000)
    for start in (1, 1023, 1024, 2500):  # a fresh index (nothing cached) started mid-stream
        assert _draws(BlendedIndex([10, 20], [0.5, 0.5], seed=7), 200, start) == a[start:start + 200]


def test_each_pass_over_a_file_is_a_permutation():
    index = BlendedIndex([13, 29], [0.3, 0.7], seed=1)
    per = {0: [], 1: []}
    for d, r in _draws(index, 4000):
        per[d].append(r)
    for d, n in ((0, 13), (1, 29)):
        seq = per[d]
        passes = [sorted(seq[k:k + n]) for k in range(0, len(seq) - n + 1, n)]
        assert all(pp == list(range(n)) for pp in passes)
        assert seq[:n] != seq[n:2 * n]  # a fresh permutation per pass


def test_no_shuffle_reads_files_in_order_and_interleaves_evenly():
    index = BlendedIndex([4, 4], [0.5, 0.5], seed=0, shuffle=False)
    draws = _draws(index, 8)
    assert [r for d, r in draws if d == 0] == [0, 1, 2, 3]
    assert [d for d, _ in draws] in ([0, 1] * 4, [1, 0] * 4)
    single = BlendedIndex([5], None, shuffle=False)
    assert _draws(single, 7) == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (0, 0), (0, 1)]


def test_zero_probability_and_bad_probabilities():
    index = BlendedIndex([5, 5], [1.0, 0.0])
    assert {d for d, _ in _draws(index, 500)} == {0}
    with pytest.raises(ValueError):
        BlendedIndex([5, 5], [0.5])
    with pytest.raises(ValueError):
        BlendedIndex([5, 5], None)
    with pytest.raises(ValueError):
        BlendedIndex([5, 5], [-1.0, 2.0])


def test_apportion_is_exact_and_monotone():
    p = np.array([0.5, 0.3, 0.2 - 1e-9, 1e-9])
    p = p / p.sum()
    prev = np.zeros(4, dtype=np.int64)
    for total in range(0, 5000, 97):
        c = apportion(p, total)
        assert c.sum() == total and np.all(np.abs(c - p * total) < 1)
        assert np.all(c >= prev)
        prev = c


def test_blended_dataset_fills_dropped_records_from_the_same_file(tmp_path):
    tok = sp_tokenizer()
    a = write_jsonl(tmp_path / "a.jsonl", [{"input": f"a{i}", "output": f"x{i}"} for i in range(6)]
                    + ['{"input": broken'])
    b = write_jsonl(tmp_path / "b.jsonl", [{"input": f"b{i}", "output": f"y{i}"} for i in range(4)])
    rules = SampleRules(chat=False, on_bad_record="skip")
    files = [SFTFile(a, tok, rules), SFTFile(b, tok, rules)]
    n = 1024  # one block: exact proportions
    ds = BlendedSFTDataset(files, [0.5, 0.5], seed=5, num_samples=n)
    samples = [ds[i] for i in range(n)]
    assert all(s is not None for s in samples) and len(ds) == n
    src = [s.source.split(":")[0].endswith("a.jsonl") for s in samples]
    assert sum(src) == n // 2  # proportions hold: replacements come from the same file
    assert not any(s.source.endswith("a.jsonl:7") for s in samples)
    assert files[0].report.count("bad_record") >= 1
    again = BlendedSFTDataset([SFTFile(a, tok, rules), SFTFile(b, tok, rules)], [0.5, 0.5], seed=5)
    assert [again[i].source for i in range(0, n, 7)] == [s.source for s in samples[::7]]
    reports = ds.report()
    assert reports[str(a)]["bad_record"] >= 1
