"""Over-length rules, all-masked samples, collation into typed batches, and sequence packing (boundaries,
position ids, a loss mask that never crosses samples, and packed == padded)."""

import numpy as np
import pytest
import torch

from megatron_align.data import (
    Sample,
    SampleRules,
    SFTFile,
    collate,
    collate_packed,
    fit_to_length,
    pack_samples,
)
from megatron_align.data import truncation as tr
from tests.unit.data_common import SFT_FIXTURE, sp_tokenizer, write_jsonl


def _mask(s):
    return np.array([c == "1" for c in s])


# ---- truncation rules ----
def test_fits_and_no_target():
    ids = np.arange(6)
    out = fit_to_length(ids, _mask("000110"), 6, "right")
    assert out[2] == tr.FITS and out[0] is ids
    assert fit_to_length(ids, _mask("000000"), 6, "right")[2] == tr.NO_TARGET
    assert fit_to_length(ids, _mask("100000"), 6, "right")[2] == tr.NO_TARGET  # token 0 is never predicted
    assert fit_to_length(ids, _mask("000000"), 3, "left")[2] == tr.NO_TARGET


def test_right_keeps_the_start():
    ids, mask, outcome = fit_to_length(np.arange(8), _mask("00011011"), 5, "right")
    assert outcome == tr.TRUNCATED_RIGHT and ids.tolist() == [0, 1, 2, 3, 4] and mask.tolist() == list(
        _mask("00011"))
    assert fit_to_length(np.arange(8), _mask("00000011"), 5, "right")[2] == tr.NO_TARGET_AFTER_TRUNCATION


def test_left_keeps_the_end_and_untrains_a_beheaded_answer():
    ids, mask, outcome = fit_to_length(np.arange(9), _mask("001100111"), 6, "left")
    assert outcome == tr.TRUNCATED_LEFT and ids.tolist() == [3, 4, 5, 6, 7, 8]
    assert mask.tolist() == list(_mask("000111"))  # token 3 ended an answer whose start was cut: context now
    ids, mask, _ = fit_to_length(np.arange(9), _mask("000100111"), 6, "left")
    assert mask.tolist() == list(_mask("100111"))  # the cut falls before an answer: nothing changes
    assert fit_to_length(np.arange(9), _mask("000000111"), 2, "left")[2] == tr.NO_TARGET_AFTER_TRUNCATION


def test_drop_and_min_target_tokens():
    assert fit_to_length(np.arange(9), _mask("000000111"), 8, "drop")[2] == tr.OVER_LENGTH
    # 3 trained tokens survive keeping the first 7
    assert fit_to_length(np.arange(9), _mask("000011111"), 7, "right", min_target_tokens=4)[2] == (
        tr.NO_TARGET_AFTER_TRUNCATION)
    assert fit_to_length(np.arange(9), _mask("000011111"), 7, "right", min_target_tokens=3)[2] == (
        tr.TRUNCATED_RIGHT)
    with pytest.raises(ValueError):
        fit_to_length(np.arange(9), _mask("000011111"), 7, "middle")


@pytest.mark.parametrize("method", ["left", "right", "drop"])
def test_sft_file_counts_over_length_samples(method):
    tok = sp_tokenizer()
    f = SFTFile(SFT_FIXTURE, tok, SampleRules(chat=True, max_seq_length=600, truncation_method=method),
                use_index_cache=False)
    samples = f.samples()
    lengths = [len(s) for s in samples]
    assert max(lengths) <= 600
    assert all(s.target_mask[1:].any() for s in samples)  # never an all-masked sample
    over = sum(f.report.count(r) for r in ("truncated_left", "truncated_right", "over_length",
                                            "no_target_after_truncation"))
    assert over >= 20 and len(samples) + f.report.count("over_length") + f.report.count(
        "no_target_after_truncation") == len(f)
    if method == "drop":
        assert f.report.count("over_length") == over and len(samples) == len(f) - over


def test_all_masked_samples_are_dropped_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"conversations": [{"from": "User", "value": "only a question"}]},
        {"conversations": [{"from": "Assistant", "value": "a first-turn answer is context"}]},
        {"conversations": [{"from": "User", "value": "Q"}, {"from": "Assistant", "value": "A"}]},
    ])
    f = SFTFile(path, sp_tokenizer(), SampleRules(chat=True, add_eos=False))
    assert [f.sample(k) is None for k in range(3)] == [True, True, False]
    assert f.report.count("no_target") == 2
    assert f.report.examples["no_target"][0].startswith(f"{path}:1: no trained token")


def test_min_seq_length_drops_short_samples(tmp_path):
    path = write_jsonl(tmp_path / "k.jsonl", [{"input": "1", "output": "2"}])
    f = SFTFile(path, sp_tokenizer(), SampleRules(chat=False, min_seq_length=50))
    assert f.sample(0) is None and f.report.count("too_short") == 1


# ---- collation ----
def _sample(ids, mask, src=""):
    return Sample(np.asarray(ids, dtype=np.int64), _mask(mask), src)


def test_collate_shifts_labels_and_pads_right():
    a, b = _sample([5, 6, 7, 8], "0011", "a:1"), _sample([9, 10], "01", "b:1")
    batch = collate([a, b], pad_id=0, pad_to_multiple_of=8)
    assert batch.tokens.shape == (2, 8) and batch.tokens.dtype == torch.int64
    assert batch.tokens[0].tolist() == [5, 6, 7, 8, 0, 0, 0, 0]
    assert batch.labels[0].tolist() == [6, 7, 8, 0, 0, 0, 0, 0]
    assert batch.loss_mask[0].tolist() == [0, 1, 1, 0, 0, 0, 0, 0] and batch.loss_mask.dtype == torch.float32
    assert batch.labels[1].tolist()[:2] == [10, 0] and batch.loss_mask[1].tolist()[:2] == [1, 0]
    assert batch.position_ids[0].tolist() == list(range(8))
    assert batch.lengths.tolist() == [4, 2] and batch.num_target_tokens == 3
    assert batch.cu_seqlens is None and batch.sources == [["a:1"], ["b:1"]]
    assert set(batch.to_dict()) == {"tokens", "labels", "loss_mask", "position_ids", "lengths"}
    assert batch["tokens"] is batch.tokens and batch.get("attention_mask") is None
    fixed = collate([a, b], pad_id=0, seq_length=16)  # pipeline parallelism: one fixed length
    assert fixed.tokens.shape == (2, 16)
    with pytest.raises(ValueError, match="does not fit seq_length=3"):
        collate([a], pad_id=0, seq_length=3)


def test_packing_boundaries_positions_and_loss_mask():
    samples = [_sample([1, 2, 3], "011", "s0"), _sample([4, 5, 6, 7, 8], "00111", "s1"),
               _sample([9, 10], "01", "s2"), _sample([11, 12, 13, 14], "0011", "s3")]
    rows = pack_samples(samples, seq_length=8)
    assert [r.seq_lengths for r in rows] == [[5, 3], [4, 2]]  # first-fit-decreasing
    assert [r.sources for r in rows] == [["s1", "s0"], ["s3", "s2"]]
    seq = pack_samples(samples, seq_length=8, method="sequential")
    assert [r.seq_lengths for r in seq] == [[3, 5], [2, 4]]
    batch = collate_packed(rows, pad_id=0, seq_length=8)
    assert batch.cu_seqlens.tolist() == [[0, 5, 8], [0, 4, 6]] and batch.cu_seqlens.dtype == torch.int32
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert batch.position_ids[1].tolist()[:6] == [0, 1, 2, 3, 0, 1]
    # row 0 = s1 then s0: the last token of s1 (8) must not predict the first token of s0 (1)
    assert batch.tokens[0].tolist() == [4, 5, 6, 7, 8, 1, 2, 3]
    assert batch.labels[0].tolist() == [5, 6, 7, 8, 0, 2, 3, 0]
    assert batch.loss_mask[0].tolist() == [0, 1, 1, 1, 0, 1, 1, 0]
    assert batch.segment_ids()[1].tolist() == [0, 0, 0, 0, 1, 1, -1, -1]
    mask = batch.attention_mask()  # True = blocked
    assert mask.shape == (2, 1, 8, 8)
    assert not mask[0, 0, 6, 5] and mask[0, 0, 6, 4] and mask[0, 0, 2, 3]
    with pytest.raises(ValueError):
        pack_samples([_sample(list(range(9)), "0" * 8 + "1")], seq_length=8)


def test_packed_equals_padded_per_sample():
    tok = sp_tokenizer()
    f = SFTFile(SFT_FIXTURE, tok, SampleRules(chat=True, max_seq_length=256), use_index_cache=False)
    samples = [f.sample(k) for k in range(12)]
    padded = collate(samples, pad_id=tok.pad_id)
    packed = collate_packed(pack_samples(samples, 512), pad_id=tok.pad_id, seq_length=512)
    assert packed.num_target_tokens == padded.num_target_tokens
    by_source = {}
    for r in range(packed.tokens.shape[0]):
        bounds = [b for b in packed.cu_seqlens[r].tolist() if b >= 0]
        for j, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            by_source[packed.sources[r][j]] = (packed.tokens[r, a:b], packed.labels[r, a:b],
                                               packed.loss_mask[r, a:b], packed.position_ids[r, a:b])
    for i, s in enumerate(samples):
        n = len(s)
        tokens, labels, loss_mask, pos = by_source[s.source]
        assert torch.equal(tokens, padded.tokens[i, :n]) and torch.equal(labels, padded.labels[i, :n])
        assert torch.equal(loss_mask, padded.loss_mask[i, :n])
        assert torch.equal(pos, padded.position_ids[i, :n])


def test_batch_to_device():
    batch = collate([_sample([1, 2, 3], "011")], pad_id=0)
    moved = batch.to("cpu")
    assert torch.equal(moved.tokens, batch.tokens) and moved.sources == batch.sources
