"""Next-token choice from one step's logits: greedy or one draw from the processed distribution, and the
chosen tokens' log-probs.

The processors (vocabulary cut, repetition penalty, min length, temperature, top-k, top-p, in Hugging Face
``generate``'s order) are ``logprobs/sampling.py``'s, the same code the teacher-forced log-probs of the
sampling distribution use. The draw is one ``torch.multinomial`` with a ``torch.Generator``.

Log-probs are those of the *raw* logits (NeMo's ``compute_logprob``): ``log_softmax(z)[y]`` over the whole
(padded) vocabulary, before any processor, so they equal a teacher-forced forward of the same tokens and the
training-side ``megatron_align.logprobs.token_logprobs``.
"""

from __future__ import annotations

from typing import Optional

import torch

from megatron_align.logprobs.sampling import ChoiceRules, process_logits, repetition_penalty_, top_k_, top_p_

__all__ = ["ChoiceRules", "choose_tokens", "chosen_logprobs", "make_generator", "repetition_penalty_",
           "top_k_", "top_p_"]


def choose_tokens(
    logits: torch.Tensor,
    rules: ChoiceRules,
    generated: torch.Tensor,
    seen: Optional[torch.Tensor],
    generator: Optional[torch.Generator],
) -> torch.Tensor:
    """Next token ids ``[B]`` (int64) from raw ``logits [B, V]``.

    generated: [B] int64, tokens each row has generated so far (for ``min_tokens_to_generate``)
    seen:      [B, V] bool, ids present in each row so far (only read when repetition_penalty != 1)
    """
    z = process_logits(logits, rules, generated, seen)  # [B, V] fp32; the raw logits stay for the log-probs
    if rules.params.greedy:
        return torch.argmax(z, dim=-1)
    probs = torch.softmax(z, dim=-1)  # [B, V]
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # [B]


def chosen_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[b, tokens[b]]`` in fp32: ``logits [B, V]``, ``tokens [B]`` -> ``[B]``."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # [B]


def make_generator(seed: Optional[int], device: torch.device) -> torch.Generator:
    """A generator for ``device`` seeded with ``seed`` (a fresh nondeterministic seed when None)."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen
