"""The generation interface every iterative stage and the HTTP server call.

``SamplingParams`` (``config/sampling.py``, re-exported here) carries the knobs NeMo users know (same names
as NeMo's ``inference.*`` and ``PUT /generate`` fields). ``GenerationBackend.generate`` takes prompts as
strings or token-id lists and returns, per sample, the prompt+response token ids, lengths, the per-token
log-probs of the generated tokens and ``is_end`` (stopped by eos or an end string rather than by the length
limit).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch

from megatron_align.config.sampling import SamplingParams

__all__ = ["GenerationBackend", "GenerationOutput", "Prompts", "SamplingParams"]


@dataclass
class GenerationOutput:
    """Result for a batch of B prompts.

    tokens:         [B, T] int64, prompt followed by response, right-padded with the pad/eos id
    prompt_lengths: [B] int64
    lengths:        [B] int64, prompt + response length (response ends at the eos / end string inclusive)
    logprobs:       [B, T - 1] fp32, log p(tokens[:, t+1] | tokens[:, :t+1]) at generated positions, 0
                    elsewhere (None when compute_logprob is False)
    is_end:         [B] bool, stopped by eos or an end string (False: hit tokens_to_generate)
    texts:          decoded prompt+response strings when a tokenizer is attached, else None
    """

    tokens: torch.Tensor
    prompt_lengths: torch.Tensor
    lengths: torch.Tensor
    logprobs: Optional[torch.Tensor]
    is_end: torch.Tensor
    texts: Optional[list[str]] = None

    def response_ids(self, i: int) -> list[int]:
        """Generated token ids of sample ``i`` (without the prompt)."""
        return self.tokens[i, int(self.prompt_lengths[i]):int(self.lengths[i])].tolist()


Prompts = Union[Sequence[str], Sequence[Sequence[int]]]


class GenerationBackend(abc.ABC):
    """Backend-independent generation. Collective across the model's TP/PP ranks: every rank calls
    ``generate`` with the same prompts and params and receives the same output."""

    name: str = "backend"
    """The engine's short name (rollout provenance)."""
    logprob_kind: str = "raw"
    """What ``GenerationOutput.logprobs`` holds when the settings transform the distribution: ``raw``
    (log-softmax of the model's logits) or ``sampling`` (of the distribution sampled from)."""

    @abc.abstractmethod
    def generate(self, prompts: Prompts, params: SamplingParams) -> GenerationOutput:
        """Generate continuations for ``prompts`` (strings need a tokenizer attached)."""

    def refit(self, model) -> None:  # noqa: B027 - optional hook
        """Push the policy's current weights into the engine (no-op for backends that read the live model)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release engine resources."""
