"""An in-process scorer over a reward model checkpoint: ``score(texts) -> [B, A]`` rewards, the same numbers
``examples/nlp/gpt/serve_reward_model.py`` answers on ``PUT /infer`` for ``sentences``.

As the server does: each text is tokenized without bos (``add_eos`` optional), cut to the model's context
(``min(encoder_seq_length, max_position_embeddings)``; the reward then reads the last kept token), scored in
micro-batches by ``scoring.forward.rewards_of`` (the head's ``A`` outputs at the last real token), and
optionally standardized per attribute as ``(r - mean) / std``. A ``RewardScorer`` is what
``data.steerlm.annotate.annotate_records`` takes as its ``score`` callable (SteerLM step 2 and the
bootstrap's annotation, in process).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Optional

import torch

from megatron_align.scoring.base import Scorer
from megatron_align.scoring.standardize import Standardization

logger = logging.getLogger(__name__)


class RewardScorer(Scorer):
    """``scorer.score(texts)``: one list of ``num_attributes`` rewards per text, from a ``reward`` checkpoint
    loaded in this process (megatron groups: the ones started, else TP=PP=1)."""

    def __init__(self, checkpoint: str | os.PathLike, precision: Optional[str] = None,
                 micro_batch_size: int = 4, add_eos: bool = False, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None):
        from megatron_align.generation.build import load_model

        self.model, self.tokenizer, cfg = load_model(checkpoint, "reward", precision)
        self.num_attributes = int(cfg.num_attributes)
        self.context = cfg.context_length()
        self.micro_batch_size = int(micro_batch_size)
        self.add_eos = bool(add_eos)
        self.standardization = None
        if mean is not None or std is not None:
            a = self.num_attributes
            mean = tuple(mean) if mean is not None else (0.0,) * a
            std = tuple(std) if std is not None else (1.0,) * a
            if len(mean) != a or len(std) != a:
                raise ValueError(f"mean/std: {a} values each expected")
            self.standardization = Standardization(mean, std)
        self.truncated = 0
        """Texts so far cut to the context (their reward reads the last kept token)."""

    def score(self, texts: Sequence[str]) -> list[list[float]]:
        from megatron_align.scoring.forward import rewards_of

        if not texts:
            return []
        seqs = self.tokenizer.texts_to_ids(list(texts), add_eos=self.add_eos)
        empty = [i for i, s in enumerate(seqs) if not s]
        if empty:
            raise ValueError(f"texts {empty[:5]}: empty after tokenization")
        cut = sum(len(s) > self.context for s in seqs)
        if cut:
            self.truncated += cut
            logger.warning("%d of %d texts are longer than the reward model's context (%d tokens): cut to it",
                           cut, len(seqs), self.context)
        seqs = [s[:self.context] for s in seqs]
        with torch.no_grad():
            rewards = rewards_of(self.model, seqs, self.tokenizer.pad_id, self.num_attributes,
                                 self.micro_batch_size)  # [B, A]
        if self.standardization is not None:
            rewards = self.standardization.apply(rewards)
        return rewards
