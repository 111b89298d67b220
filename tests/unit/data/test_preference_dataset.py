"""Preference items: NeMo-Aligner pairs and EXO groups tokenized, the over-length rules, JSON arrays, chat
prompts, one-line errors, and the collated micro-batch (labels shifted, masks on completion tokens only)."""

import json

import numpy as np
import pytest

from megatron_align.config.data import ChatPromptTokens
from megatron_align.data.errors import DataError
from megatron_align.data.preference_dataset import (
    IGNORED_LENGTH,
    PreferenceFile,
    PreferenceRules,
    collate_preference,
)
from megatron_align.data.reward import RMDataset
from tests.helpers import ROOT


class CharTokenizer:
    """One id per character (ids 3..), eos 2, pad 0; ``merge`` makes "|>" one token (a boundary merge)."""

    eos_id, pad_id = 2, 0

    def __init__(self, merge: bool = False):
        self.merge = merge

    def text_to_ids_with_offsets(self, text):
        ids, offs, i = [], [], 0
        while i < len(text):
            if self.merge and text.startswith("|>", i):
                ids.append(1)
                offs.append((i, i + 2))
                i += 2
                continue
            ids.append(3 + ord(text[i]) % 250)
            offs.append((i, i + 1))
            i += 1
        return ids, offs


TOK = CharTokenizer()


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _ids(text):
    return [3 + ord(c) % 250 for c in text]


def test_nemo_pair_tokenized_whole_with_completion_targets(tmp_path):
    f = PreferenceFile(_jsonl(tmp_path / "a.jsonl", [{"prompt": "Q:", "chosen_response": "yes",
                                                      "rejected_response": "no", "chosen_reward": 3}]),
                       TOK, PreferenceRules(seq_length=64))
    item = f.item(0)
    assert [s.tolist() for s in item.sequences] == [_ids("Q:yes"), _ids("Q:no")]
    assert [t.tolist() for t in item.targets] == [[0, 0, 1, 1, 1], [0, 0, 1, 1]]
    assert item.rewards.tolist() == [3.0, 0.0]  # default_rejected_reward
    assert item.group_size == 2 and item.num_groups == 1 and not item.ignored


def test_shared_nemo_fixture_reads_every_line():
    f = PreferenceFile(ROOT / "tests" / "data" / "dummy-dpo.jsonl", TOK, PreferenceRules(seq_length=4096))
    items = [f.item(k) for k in range(len(f))]
    assert len(items) == 100 and all(i is not None and len(i.sequences) == 2 for i in items)
    assert not f.report.counts


def test_collate_shifts_labels_and_masks_only_completion_tokens(tmp_path):
    recs = [{"prompt": "P", "chosen_response": "ab", "rejected_response": "c"},
            {"prompt": "PP", "chosen_response": "d", "rejected_response": "efg"}]
    f = PreferenceFile(_jsonl(tmp_path / "a.jsonl", recs), TOK, PreferenceRules(seq_length=64))
    b = collate_preference([f.item(0), f.item(1)], pad_id=0, pad_to_multiple_of=8)
    assert b["tokens"].shape == (4, 8) and b["offsets"].tolist() == [0, 2, 4]
    assert b["lengths"].tolist() == [3, 2, 3, 5]
    row = b["tokens"][3].tolist()
    assert row[:5] == _ids("PPefg") and row[5:] == [0, 0, 0]
    assert b["labels"][3].tolist()[:4] == _ids("Pefg")
    # position t is scored when token t + 1 is a completion token: e, f, g predicted from positions 1, 2, 3
    assert b["loss_mask"][3].tolist() == [0, 1, 1, 1, 0, 0, 0, 0]
    assert b["loss_mask"][0].tolist()[:3] == [1, 1, 0]
    assert b["rewards"].tolist() == [1, 0, 1, 0] and b["ignored"].tolist() == [False, False]
    assert collate_preference([f.item(0)], pad_id=0, seq_length=20)["tokens"].shape == (2, 20)


def _long(tmp_path, overlong):
    recs = [{"prompt": "p" * 10, "chosen_response": "c" * 30, "rejected_response": "r" * 5},
            {"prompt": "q", "chosen_response": "c", "rejected_response": "r"}]
    f = PreferenceFile(_jsonl(tmp_path / f"{overlong}.jsonl", recs), TOK,
                       PreferenceRules(seq_length=20, overlong=overlong))
    return f, RMDataset([f])


def test_overlong_ignore_keeps_nemo_untrained_pair(tmp_path):
    f, ds = _long(tmp_path, "ignore")
    item = ds[0]
    assert item.ignored and [len(s) for s in item.sequences] == [min(IGNORED_LENGTH, 40), 15]
    assert not any(t.any() for t in item.targets)
    assert f.report.count("over_length_ignored") == 1
    assert collate_preference([item], 0)["ignored"].tolist() == [True]


def test_overlong_truncate_cuts_completions_keeps_prompt(tmp_path):
    f, ds = _long(tmp_path, "truncate")
    item = ds[0]
    assert [len(s) for s in item.sequences] == [20, 15] and not item.ignored
    assert item.sequences[0].tolist() == _ids("p" * 10 + "c" * 10)
    assert item.targets[0].sum() == 10 and f.report.count("over_length_truncated") == 1


def test_overlong_drop_replaces_by_next_record(tmp_path):
    f, ds = _long(tmp_path, "drop")
    assert ds[0].sequences[0].tolist() == _ids("qc")
    assert f.report.count("over_length_dropped") == 1


def test_truncate_drops_a_prompt_that_fills_the_length(tmp_path):
    recs = [{"prompt": "p" * 25, "chosen_response": "c", "rejected_response": "r"},
            {"prompt": "q", "chosen_response": "c", "rejected_response": "r"}]
    f = PreferenceFile(_jsonl(tmp_path / "a.jsonl", recs), TOK, PreferenceRules(seq_length=20,
                                                                                 overlong="truncate"))
    assert RMDataset([f])[0].sequences[0].tolist() == _ids("qc")
    assert f.report.count("over_length_prompt") == 1


def test_exo_json_array_groups_and_line_numbers(tmp_path):
    recs = [{"prompt": "x", "completions": ["a", "b", "c", "d"], "rewards": [1, 2, 3, 4]},
            {"prompt": "y", "completions": ["e", "f"], "rewards": [0, 1]}]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(recs, indent=4))  # the EXO repository writes indented arrays
    f = PreferenceFile(path, TOK, PreferenceRules(seq_length=64, num_contrastive=2, loss="exo-rw"))
    a, b = f.item(0), f.item(1)
    assert a.num_groups == 2 and b.num_groups == 1
    batch = collate_preference([a, b], 0)
    assert batch["offsets"].tolist() == [0, 2, 4, 6] and batch["rewards"].tolist() == [1, 2, 3, 4, 0, 1]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(recs[:1] + [{"prompt": "z", "completions": ["a"], "rewards": [1]}], indent=4))
    g = PreferenceFile(bad, TOK, PreferenceRules(seq_length=64, num_contrastive=2, loss="exo-rw"))
    with pytest.raises(DataError, match=r"bad\.json:17: completions: 1 completions, fewer than num_contr"):
        g.item(1)


def test_pair_losses_need_pairs_and_exo_reads_nemo_pairs(tmp_path):
    p = _jsonl(tmp_path / "a.jsonl", [{"prompt": "x", "completions": ["a", "b", "c"], "rewards": [1, 2, 3]}])
    with pytest.raises(DataError, match=r"a\.jsonl:1: completions: preference_loss=dpo trains on pairs"):
        PreferenceFile(p, TOK, PreferenceRules(seq_length=64)).item(0)
    q = _jsonl(tmp_path / "b.jsonl", [{"prompt": "x", "chosen_response": "a", "rejected_response": "b"}])
    item = PreferenceFile(q, TOK, PreferenceRules(seq_length=64, num_contrastive=2, loss="exo-pref")).item(0)
    assert item.rewards.tolist() == [1.0, 0.0] and item.num_groups == 1


@pytest.mark.parametrize("record, message", [
    ({"chosen_response": "a", "rejected_response": "b"}, "prompt: missing"),
    ({"prompt": 3, "chosen_response": "a", "rejected_response": "b"}, "prompt: expected a string or a list"),
    ({"prompt": "x", "chosen_response": "a", "rejected_response": "b", "chosen_reward": "hi"},
     "chosen_reward: expected a number"),
    ({"prompt": "x", "chosen_response": "", "rejected_response": "b"}, "chosen_response: no token after"),
    ({"prompt": "x", "completions": [], "rewards": []}, "completions: empty"),
    ({"prompt": "x", "completions": ["a", "b"], "rewards": [1]}, "rewards: 1 rewards for 2 completions"),
])
def test_malformed_records_name_file_line_field(tmp_path, record, message):
    rules = PreferenceRules(seq_length=64, num_contrastive=2 if "completions" in record else 0,
                            loss="exo-rw" if "completions" in record else "dpo")
    path = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "chosen_response": "a", "rejected_response": "b"},
                                           record])
    with pytest.raises(DataError, match="bad.jsonl:2: " + message):
        PreferenceFile(path, TOK, rules).item(1)
    skip = PreferenceFile(path, TOK, PreferenceRules(**{**rules.__dict__, "on_bad_record": "skip"}))
    assert skip.item(1) is None and skip.report.count("bad_record") == 1


def test_chat_prompt_renders_nemo_template_with_header_trained(tmp_path):
    t = ChatPromptTokens()
    rec = {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}],
           "chosen_response": {"role": "assistant", "content": "yo"}, "rejected_response": "no"}
    item = PreferenceFile(_jsonl(tmp_path / "c.jsonl", [rec]), TOK, PreferenceRules(seq_length=512)).item(0)
    prompt = (f"{t.system_turn_start}System{t.end_of_name}S{t.end_of_turn}"
              f"{t.turn_start}User{t.end_of_name}hi{t.end_of_turn}")
    completion = f"{t.turn_start}Assistant{t.end_of_name}yo{t.end_of_turn}{t.turn_start}"
    assert item.sequences[0].tolist() == _ids(prompt + completion)
    assert int(item.targets[0].sum()) == len(completion) and not item.targets[0][:len(prompt)].any()


def test_boundary_merge_is_trained_and_counted(tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", [{"prompt": "a|", "chosen_response": ">b", "rejected_response": "c"}])
    f = PreferenceFile(path, CharTokenizer(merge=True), PreferenceRules(seq_length=64))
    item = f.item(0)
    assert item.sequences[0].tolist() == [_ids("a")[0], 1, _ids("b")[0]]
    assert item.targets[0].tolist() == [False, True, True]
    assert f.report.count("boundary_merge") == 1
    assert np.array_equal(item.targets[1], [False, False, True])
