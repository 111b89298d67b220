"""Next-token choice from one step's logits: logit processors, greedy / sampled pick, and log-probs.

Processing order (Hugging Face ``generate`` order, the same knobs as NeMo's ``inference.*``):
1. ids at or above the tokenizer's ``vocab_size`` (megatron pads the embedding) are never chosen;
2. repetition penalty on every id already in the sequence, prompt included (CTRL, Keskar et al. 2019,
   Sec. 4.1: a positive logit is divided by the penalty, a negative one multiplied);
3. ``min_tokens_to_generate``: eos is blocked in rows that have generated fewer tokens;
4. greedy: argmax. Otherwise temperature (logits / T), top-k (Fan et al. 2018: keep the k largest
   logits, ties at the k-th kept), top-p (nucleus, Holtzman et al. 2020, Eq. 3: the smallest set of most
   probable ids whose probability mass reaches p), then one draw from the softmax with a ``torch.Generator``.

Log-probs are those of the *raw* logits (NeMo's ``compute_logprob``): ``log_softmax(z)[y]`` over the whole
(padded) vocabulary, before any processor, so they equal a teacher-forced forward of the same tokens and the
training-side ``megatron_align.logprobs.token_logprobs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from megatron_align.generation.interface import SamplingParams


@dataclass
class ChoiceRules:
    """What the token chooser needs besides the logits (fixed for one ``generate`` call)."""

    params: SamplingParams
    eos_id: Optional[int]
    vocab_size: Optional[int]  # real vocabulary size; ids >= it are padding rows of the embedding


def repetition_penalty_(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """In place on ``logits [B, V]`` where ``seen [B, V]`` (bool): z / penalty if z > 0 else z * penalty."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)  # [B, V]
    return logits.copy_(torch.where(seen, penalized, logits))


def top_k_(logits: torch.Tensor, k: int) -> torch.Tensor:
    """In place on ``logits [B, V]``: everything below the k-th largest value becomes -inf."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # [B, 1]
    return logits.masked_fill_(logits < kth, float("-inf"))


def top_p_(logits: torch.Tensor, p: float) -> torch.Tensor:
    """In place on ``logits [B, V]``: keep the smallest most-probable set with probability mass >= p.

    A token is dropped when the mass of the tokens ranked strictly above it already reaches p, so the most
    probable token always stays.
    """
    if p <= 0.0 or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [B, V]
    probs = torch.softmax(sorted_logits, dim=-1)  # [B, V]
    mass_above = torch.cumsum(probs, dim=-1) - probs  # [B, V] mass of strictly higher-ranked tokens
    drop_sorted = mass_above >= p  # [B, V]
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill_(drop, float("-inf"))


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
    params = rules.params
    z = logits.float().clone()  # [B, V] fp32 working copy; the raw logits stay for the log-probs
    if rules.vocab_size is not None and rules.vocab_size < z.size(-1):
        z[:, rules.vocab_size:] = float("-inf")
    if params.repetition_penalty != 1.0 and seen is not None:
        repetition_penalty_(z, seen, params.repetition_penalty)
    if params.min_tokens_to_generate > 0 and rules.eos_id is not None:
        early = generated < params.min_tokens_to_generate  # [B]
        z[:, rules.eos_id] = torch.where(early, float("-inf"), z[:, rules.eos_id])
    if params.greedy:
        return torch.argmax(z, dim=-1)
    if params.temperature != 1.0:
        # softmax(z / T) == softmax((z - max z) / T): shifted first, a tiny T sends the other tokens to -inf
        # instead of the best one to inf (inf - inf = NaN in softmax); T below fp32's smallest normal (it
        # would round to 0 in the fp32 division) is that smallest normal, which is argmax already.
        temperature = max(params.temperature, torch.finfo(z.dtype).tiny)
        z.sub_(z.amax(dim=-1, keepdim=True)).div_(temperature)
    top_k_(z, params.top_k)
    top_p_(z, params.top_p)
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
