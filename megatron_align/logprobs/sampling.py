"""The distribution a sampler draws the next token from, written once: the logit processors and the
log-probs of tokens under the processed logits, teacher-forced.

Processing order (Hugging Face ``generate``'s order, the knobs of NeMo's ``inference.*``):
1. ids at or above the tokenizer's ``vocab_size`` (megatron pads the embedding) are never chosen;
2. repetition penalty on every id already in the sequence, prompt included (CTRL, Keskar et al. 2019,
   Sec. 4.1: a positive logit is divided by the penalty, a negative one multiplied);
3. ``min_tokens_to_generate``: eos is blocked in rows that have generated fewer tokens;
4. (not greedy) temperature (logits / T), top-k (Fan et al. 2018: keep the k largest logits, ties at the
   k-th kept), top-p (nucleus, Holtzman et al. 2020, Eq. 3: the smallest set of most probable ids whose
   probability mass reaches p).

``generation/sampling.choose_tokens`` draws from ``softmax(process_logits(z))``. ``sampling_token_logprobs``
gives ``log softmax(process_logits(z_{j-1}))[y_j]`` for the tokens j of a sequence, with the state the sampler
had when it drew y_j: the ids before j for the repetition penalty and the count of response tokens before j
for ``min_tokens_to_generate``. Importance weights need exactly this density (SteerLM 2.0's
log Q'(y|a,x): the proposal the responses were drawn from), and it is -inf for a token the processors
exclude (a token that could not have been drawn).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from megatron_align.config.sampling import SamplingParams


@dataclass
class ChoiceRules:
    """What the processors need besides the logits (fixed for one ``generate`` call)."""

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


def process_logits(logits: torch.Tensor, rules: ChoiceRules, generated: torch.Tensor,
                   seen: Optional[torch.Tensor]) -> torch.Tensor:
    """The processed fp32 logits ``[B, V]`` of raw ``logits [B, V]`` (a copy; steps 1-4 of the module
    docstring, step 4 only when not greedy).

    generated: [B] int64, tokens each row has generated before this one (for ``min_tokens_to_generate``)
    seen:      [B, V] bool, ids present in each row so far (only read when repetition_penalty != 1)
    """
    params = rules.params
    z = logits.float().clone()  # [B, V]
    if rules.vocab_size is not None and rules.vocab_size < z.size(-1):
        z[:, rules.vocab_size:] = float("-inf")
    if params.repetition_penalty != 1.0 and seen is not None:
        repetition_penalty_(z, seen, params.repetition_penalty)
    if params.min_tokens_to_generate > 0 and rules.eos_id is not None:
        early = generated < params.min_tokens_to_generate  # [B]
        z[:, rules.eos_id] = torch.where(early, float("-inf"), z[:, rules.eos_id])
    if params.greedy:
        return z
    if params.temperature != 1.0:
        # softmax(z / T) == softmax((z - max z) / T): shifted first, a tiny T sends the other tokens to -inf
        # instead of the best one to inf (inf - inf = NaN in softmax); T below fp32's smallest normal (it
        # would round to 0 in the fp32 division) is that smallest normal, which is argmax already.
        temperature = max(params.temperature, torch.finfo(z.dtype).tiny)
        z.sub_(z.amax(dim=-1, keepdim=True)).div_(temperature)
    top_k_(z, params.top_k)
    top_p_(z, params.top_p)
    return z


def seen_before(ids: torch.Tensor, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """``[P, V]`` bool: which ids occur in ``ids[:j]`` for each j of ``positions [P]`` (``ids [S]`` int64)."""
    first = torch.full((vocab,), ids.numel(), dtype=torch.long, device=ids.device)  # [V] first index of id
    first.scatter_reduce_(0, ids, torch.arange(ids.numel(), device=ids.device), reduce="amin")
    return first.unsqueeze(0) < positions.unsqueeze(1)  # [P, V]


def sampling_token_logprobs(logits: torch.Tensor, ids: torch.Tensor, start: int, rules: ChoiceRules,
                            block: int = 256) -> torch.Tensor:
    """log-probs under the sampling distribution of the tokens ``ids[start:]`` of one sequence,
    teacher-forced.

    logits: [S, V] raw logits over the whole (padded) vocabulary, row t predicting ids[t + 1]
    ids:    [S] int64; ids[:start] is the prompt, ids[start:] the response the sampler drew
    returns [S - start] fp32: entry i = log softmax(process_logits(logits[start + i - 1]))[ids[start + i]],
            -inf where the processors exclude that token
    """
    if rules.params.greedy:
        raise ValueError("greedy decoding has no sampling density: its log-probs are 0 or -inf")
    if start < 1:
        raise ValueError("start must be >= 1: the first token has no logits predicting it")
    s, vocab = logits.shape
    out = []
    for lo in range(start, s, block):
        j = torch.arange(lo, min(lo + block, s), device=logits.device)  # [P] target positions
        seen = seen_before(ids, j, vocab) if rules.params.repetition_penalty != 1.0 else None  # [P, V]
        z = process_logits(logits[j - 1], rules, j - start, seen)  # [P, V]
        out.append(torch.log_softmax(z, dim=-1).gather(-1, ids[j].unsqueeze(-1)).squeeze(-1))  # [P]
    return torch.cat(out) if out else logits.new_zeros(0, dtype=torch.float32)
