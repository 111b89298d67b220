"""data/preference: NeMo-Aligner's DPO lines (NeMo-Aligner's own test file parses whole) and the EXO
repository's four formats; each malformed kind is one RecordError naming the field."""

import json

import pytest

from megatron_align.data.errors import RecordError
from megatron_align.data.preference import (
    check_contrastive,
    parse_dpo_record,
    parse_exo_record,
    pref_to_rw,
)
from tests.helpers import ROOT

DPO = ROOT / "tests" / "data" / "dummy-dpo.jsonl"


def test_nemo_aligner_fixture_parses_with_default_rewards():
    pairs = [parse_dpo_record(json.loads(line)) for line in DPO.read_text().splitlines() if line.strip()]
    assert pairs and all(p.chosen_reward == 1.0 and p.rejected_reward == 0.0 for p in pairs)
    assert pairs[0].prompt.startswith("<extra_id_0>System") and pairs[0].chosen.endswith("<extra_id_1>")
    custom = parse_dpo_record(
        {
            "prompt": "q",
            "chosen_response": "a",
            "rejected_response": "b",
            "chosen_reward": 7,
            "rejected_reward": 2.5,
        },
        1.0,
        0.0,
    )
    assert (custom.chosen_reward, custom.rejected_reward) == (7.0, 2.5)
    assert (
        parse_dpo_record(
            {"prompt": "q", "chosen_response": "a", "rejected_response": "b"}, 3.0, -1.0
        ).rejected_reward
        == -1.0
    )


def test_chat_prompts_and_message_responses():
    rec = {
        "prompt": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}],
        "chosen_response": {"role": "assistant", "content": "hello"},
        "rejected_response": "go away",
    }
    pair = parse_dpo_record(rec)
    assert pair.prompt[1]["content"] == "hi" and (pair.chosen, pair.rejected) == ("hello", "go away")


@pytest.mark.parametrize(
    "rec, field, problem",
    [
        ({"chosen_response": "a", "rejected_response": "b"}, "prompt", "missing"),
        (
            {"prompt": 3, "chosen_response": "a", "rejected_response": "b"},
            "prompt",
            "a string or a list of messages",
        ),
        ({"prompt": "q", "rejected_response": "b"}, "chosen_response", "missing"),
        (
            {"prompt": "q", "chosen_response": "a", "rejected_response": "b", "chosen_reward": "high"},
            "chosen_reward",
            "expected a number, got a string",
        ),
        (
            {"prompt": "q", "chosen_response": "a", "rejected_response": "b", "rejected_reward": True},
            "rejected_reward",
            "got a boolean",
        ),
        (
            {
                "prompt": [{"role": "system", "content": "x"}, {"role": "system", "content": "y"}],
                "chosen_response": "a",
                "rejected_response": "b",
            },
            "prompt",
            "2 system messages",
        ),
        (
            {"prompt": [{"role": "bot", "content": "x"}], "chosen_response": "a", "rejected_response": "b"},
            "prompt[0].role",
            "got 'bot'",
        ),
        (
            {"prompt": "q", "chosen_response": {"role": "user", "content": "a"}, "rejected_response": "b"},
            "chosen_response.role",
            "expected assistant",
        ),
        ([1, 2], "(record)", "expected a JSON object"),
    ],
)
def test_malformed_dpo_records(rec, field, problem):
    with pytest.raises(RecordError) as err:
        parse_dpo_record(rec)
    assert err.value.field == field and problem in err.value.problem


def test_exo_formats_and_pref_to_rw():
    assert parse_exo_record({"prompt": "p", "chosen": " c"}).completions == [" c"]
    pref = parse_exo_record({"prompt": "p", "chosen": " c", "rejected": " r"})
    assert (pref.completions, pref.rewards) == ([" c", " r"], [1.0, 0.0])
    assert pref_to_rw({"prompt": "p", "chosen": " c", "rejected": " r"}) == {
        "prompt": "p",
        "completions": [" c", " r"],
        "rewards": [1.0, 0.0],
    }
    samples = parse_exo_record({"prompt": "p", "completions": ["a", "b", "c", "d"]})
    assert samples.rewards is None and len(samples.completions) == 4
    rw = parse_exo_record({"prompt": "p", "completions": ["a", "b"], "rewards": [0.5, -2]})
    assert rw.rewards == [0.5, -2.0]


@pytest.mark.parametrize(
    "rec, field, problem",
    [
        ({"completions": ["a"]}, "prompt", "missing"),
        ({"prompt": ["x"], "completions": ["a"]}, "prompt", "expected a string"),
        ({"prompt": "p", "completions": []}, "completions", "empty"),
        ({"prompt": "p", "completions": ["a", 3]}, "completions[1]", "expected a string"),
        (
            {"prompt": "p", "completions": ["a", "b"], "rewards": [1.0]},
            "rewards",
            "1 rewards for 2 completions",
        ),
        (
            {"prompt": "p", "completions": ["a", "b"], "rewards": [1.0, "x"]},
            "rewards[1]",
            "expected a number",
        ),
        (
            {"prompt": "p", "completions": ["a"], "rewards": [float("nan")]},
            "rewards[0]",
            "not a finite number",
        ),
        ({"prompt": "p"}, "chosen", "missing"),
    ],
)
def test_malformed_exo_records(rec, field, problem):
    with pytest.raises(RecordError) as err:
        parse_exo_record(rec)
    assert err.value.field == field and problem in err.value.problem


def test_contrastive_rule():
    four = parse_exo_record({"prompt": "p", "completions": list("abcd"), "rewards": [1, 2, 3, 4]})
    check_contrastive(four, 4, "exo-rw")
    check_contrastive(four, 2, "exo-pref")
    with pytest.raises(RecordError, match="fewer than num_contrastive=5"):
        check_contrastive(four, 5, "exo-rw")
    with pytest.raises(RecordError, match="do not split into groups of num_contrastive=3"):
        check_contrastive(four, 3, "exo-rw")
    with pytest.raises(RecordError, match="num_contrastive must be 2"):
        check_contrastive(four, 4, "dpo-pref")
    with pytest.raises(RecordError, match="needs rewarded completions"):
        check_contrastive(parse_exo_record({"prompt": "p", "completions": ["a", "b"]}), 2, "exo-rw")
