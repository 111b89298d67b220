"""The one Scorer signature: (prompts, responses) -> [B, A], by joining each prompt with its response."""

from __future__ import annotations

import pytest

from megatron_align.scoring.base import Scorer


class Lengths(Scorer):
    """Scores a text by its length and its number of spaces (A = 2)."""

    num_attributes = 2

    def __init__(self):
        self.seen: list[list[str]] = []

    def score(self, texts):
        self.seen.append(list(texts))
        return [[float(len(t)), float(t.count(" "))] for t in texts]


def test_call_scores_prompt_plus_response():
    scorer = Lengths()
    assert scorer(["Q: two? A:", "Hi"], [" 2", " there you"]) == [[12.0, 3.0], [12.0, 2.0]]
    assert scorer.seen == [["Q: two? A: 2", "Hi there you"]]
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        scorer(["a", "b"], ["c"])


def test_both_reward_model_scorers_are_scorers():
    from megatron_align.scoring.remote import RewardClient
    from megatron_align.scoring.reward_model import RewardScorer

    assert issubclass(RewardScorer, Scorer) and issubclass(RewardClient, Scorer)
    assert isinstance(RewardClient("127.0.0.1", 1), Scorer)
