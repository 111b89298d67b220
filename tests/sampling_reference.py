"""An independent float64 reference for the sampling distribution (plain Python lists, sets and sorts):
log-prob of one token after the processors of ``megatron_align/logprobs/sampling.py``, written from their
definitions (HF order: vocabulary cut, repetition penalty, min length, temperature, top-k, top-p)."""

import math


def processed_logprob(z, target: int, before: list[int], generated: int, params, eos_id, vocab: int) -> float:
    """log softmax of the processed ``z`` (one row of raw logits, any sequence of numbers) at ``target``.

    before: the ids before the target (prompt and earlier response tokens)
    generated: the response tokens before it
    """
    z = [float(x) if v < vocab else -math.inf for v, x in enumerate(z)]
    if params.repetition_penalty != 1.0:
        for v in set(before):
            z[v] = z[v] / params.repetition_penalty if z[v] > 0 else z[v] * params.repetition_penalty
    if params.min_tokens_to_generate and generated < params.min_tokens_to_generate:
        z[eos_id] = -math.inf
    z = [x / params.temperature for x in z]
    if 0 < params.top_k < len(z):
        kth = sorted(z, reverse=True)[params.top_k - 1]
        z = [x if x >= kth else -math.inf for x in z]
    if 0.0 < params.top_p < 1.0:
        top = max(z)
        weights = [math.exp(x - top) for x in z]
        total = sum(weights)
        mass = 0.0
        for v in sorted(range(len(z)), key=lambda i: -z[i]):
            p = weights[v] / total
            if mass >= params.top_p:
                z[v] = -math.inf
            mass += p
    if z[target] == -math.inf:
        return -math.inf
    top = max(z)
    return z[target] - top - math.log(sum(math.exp(x - top) for x in z if x > -math.inf))
