"""The one ``Scorer`` signature: (prompts, responses) -> ``[B, A]`` scores, whatever computes them.

A reward model in this process (``reward_model.RewardScorer``) or behind the reward server
(``remote.RewardClient``) both score a whole text (the rendered conversation up to the end of the response);
``__call__`` joins each prompt with its response, ``score`` takes the joined texts (what SteerLM's attribute
annotation sends, ``data.steerlm.annotate``). ``num_attributes`` is ``A`` where the scorer knows it.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Optional


class Scorer(abc.ABC):
    """``scorer(prompts, responses)`` or ``scorer.score(texts)`` -> one row of ``A`` floats per sample."""

    num_attributes: Optional[int] = None

    @abc.abstractmethod
    def score(self, texts: Sequence[str]) -> list[list[float]]:
        """``[B, A]`` scores of ``B`` whole texts."""

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[float]]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return self.score([p + r for p, r in zip(prompts, responses)])
