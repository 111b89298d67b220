"""scoring/filters: each offline processor on a hand-built labelled file gives exactly the documented output
(ties, threshold equality, template formatting, export_reward on and off), and the reward scalarization and
standardization (given and computed mean / std) by hand."""

import math

import pytest

from megatron_align.scoring.filters import (
    process,
    reward_text,
    sample_stats,
    scalar_rewards,
    standardized,
)

SAMPLES = [  # file order; prompts a, b, c; rewards below
    {"input": "a", "output": "a1"},
    {"input": "b", "output": "b1"},
    {"input": "a", "output": "a2"},
    {"input": "c", "output": "c1", "extra": 7},
    {"input": "b", "output": "b2"},
    {"input": "a", "output": "a3"},
]
REWARDS = [0.5, 2.0, 1.5, -1.0, 2.0, 1.5]  # a: a2 and a3 tie at 1.5 -> a2; b: tie at 2.0 -> b1


def test_rs_keeps_the_best_of_each_input_first_on_ties_in_first_appearance_order():
    got = process(SAMPLES, REWARDS, "rs")
    assert got == [{"input": "a", "output": "a2"}, {"input": "b", "output": "b1"},
                   {"input": "c", "output": "c1", "extra": 7}]
    with_reward = process(SAMPLES, REWARDS, "rs", export_reward=True)
    assert [r["reward"] for r in with_reward] == [1.5, 2.0, -1.0]


def test_rest_keeps_rewards_strictly_above_the_threshold():
    got = process(SAMPLES, REWARDS, "rest", threshold=1.5)  # 1.5 itself is not kept
    assert got == [{"input": "b", "output": "b1"}, {"input": "b", "output": "b2"}]
    assert [r["output"] for r in process(SAMPLES, REWARDS, "rest", threshold=0.0)] == ["a1", "b1", "a2", "b2",
                                                                                      "a3"]
    assert "reward" not in process(SAMPLES, REWARDS, "rest")[0]


def test_dt_rewrites_every_input_with_the_template_and_one_decimal():
    got = process(SAMPLES, [0.25, 2.0, -0.04, 3.96, -1.25, 10.0], "dt")
    assert [r["input"] for r in got] == ["a <rm_score>: 0.2 ", "b <rm_score>: 2.0 ", "a <rm_score>: 0.0 ",
                                         "c <rm_score>: 4.0 ", "b <rm_score>: -1.2 ", "a <rm_score>: 10.0 "]
    assert [r["output"] for r in got] == [s["output"] for s in SAMPLES] and got[3]["extra"] == 7
    custom = process(SAMPLES[:1], [1.0], "dt", reward_template="User: {input} Assistant: <reward>: {reward} ",
                     export_reward=True)
    assert custom == [{"input": "User: a Assistant: <reward>: 1.0 ", "output": "a1", "reward": 1.0}]
    assert SAMPLES[0]["input"] == "a"  # the caller's records are not modified


def test_null_keeps_everything_with_its_reward():
    got = process(SAMPLES, REWARDS, "null")
    assert [r["reward"] for r in got] == REWARDS
    assert [r["output"] for r in got] == [s["output"] for s in SAMPLES]


def test_reward_text_and_other_input_keys():
    assert [reward_text(x) for x in (0.05, -0.04, 1.0, -2.35)] == ["0.1", "0.0", "1.0", "-2.4"]
    recs = [{"prompt": "p", "output": "x"}, {"prompt": "p", "output": "y"}]
    assert process(recs, [0.0, 1.0], "rs", input_key="prompt") == [{"prompt": "p", "output": "y"}]
    with pytest.raises(ValueError, match="2 samples but 1 rewards"):
        process(recs, [0.0], "rs")


def test_scalar_rewards_from_one_attribute_or_weights():
    rows = [[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]]
    assert scalar_rewards(rows, attribute=2) == [3.0, 4.0]
    assert scalar_rewards(rows, weights=[0.5, 0.0, 1.0]) == [3.5, 4.0]
    assert scalar_rewards([[0.7], [0.1]]) == [0.7, 0.1]
    with pytest.raises(ValueError, match="3 attributes: set reward_attribute or reward_weights"):
        scalar_rewards(rows)
    with pytest.raises(ValueError, match="2 weights"):
        scalar_rewards(rows, weights=[1.0, 2.0])


def test_standardization_with_given_and_computed_mean_and_std():
    rewards = [1.0, 2.0, 3.0, 6.0]
    values, mean, std = standardized(rewards, 2.0, 0.5)
    assert values == [-2.0, 0.0, 2.0, 8.0] and (mean, std) == (2.0, 0.5)
    values, mean, std = standardized(rewards, None, None)
    want_std = math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 3)  # sample std (N - 1), 2.16
    assert mean == 3.0 and std == pytest.approx(want_std)
    assert values == pytest.approx([(r - 3.0) / want_std for r in rewards])
    values, mean, std = standardized(rewards, 0.0, None)  # only the std computed
    assert mean == 0.0 and std == pytest.approx(want_std)
    assert sample_stats([2.0, 2.0]) == (2.0, 1.0)  # equal rewards: std 1, not a division by zero
    assert sample_stats([5.0]) == (5.0, 1.0)
