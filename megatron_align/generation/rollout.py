"""Rollouts: ``n`` responses to each prompt, as records that say where they came from.

``rollout(backend, prompts, n, params, checkpoint=...)`` answers every prompt ``n`` times in batches of the
backend's ``max_batch_size`` (rows ``prompt 0`` x n, ``prompt 1`` x n, ...) and returns one ``RolloutRecord``
per response with its ``Provenance``:

- ``checkpoint``: the policy sampled from; ``backend``: the engine (``megatron``, ``trtllm``, ...);
- ``sampling``: every ``SamplingParams`` field the batch ran with;
- ``seed``: the ``random_seed`` of the batch that produced the row (batch ``b`` of a seeded rollout uses
  ``random_seed + b``, so a rollout is reproduced by the same prompts, ``n``, seed and batch size; None:
  unseeded), ``batch`` its index;
- ``logprob``: which log-probabilities ``logprobs`` holds: ``"raw"`` (log-softmax of the model's logits, what
  a teacher-forced forward of the policy gives), ``"sampling"`` (of the distribution sampled from, after
  temperature / top-k / top-p / repetition penalty / min length), or None (not computed). Where the settings
  leave the model's distribution unchanged the two agree and the record says ``"raw"``.

Consumers (SteerLM 2.0's log Q(y|a,x), DPO's reference log-probs, the offline samplers) read ``logprob``
before using ``logprobs`` as the policy's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

from megatron_align.config.sampling import SamplingParams
from megatron_align.generation.errors import GenerationError
from megatron_align.generation.text import sentence_of


@dataclass(frozen=True)
class Provenance:
    """Where one response came from (see the module docstring)."""

    checkpoint: Optional[str]
    backend: str
    sampling: dict
    seed: Optional[int]
    batch: int
    logprob: Optional[str]  # "raw" | "sampling" | None


@dataclass
class RolloutRecord:
    """One response: ``prompt_index`` / ``sample_index`` place it in the prompts x n grid."""

    prompt_index: int
    sample_index: int
    prompt: str
    response: str  # the decoded continuation, its end string included when it stopped on one
    response_ids: list[int]
    finished: bool  # stopped by eos or an end string (False: cut by tokens_to_generate)
    logprobs: Optional[list[float]]  # [len(response_ids)], of the kind provenance.logprob names
    provenance: Provenance

    def to_json(self) -> dict:
        """A JSON-able dict (one JSONL line)."""
        return dataclasses.asdict(self)


def distribution_unchanged(params: SamplingParams) -> bool:
    """True when the sampling distribution is the model's own (no temperature, top-k, top-p, penalty or
    minimum length), so raw and sampling log-probs are the same numbers."""
    return (not params.greedy and params.temperature == 1.0 and params.top_k == 0
            and params.top_p in (0.0, 1.0) and params.repetition_penalty == 1.0
            and params.min_tokens_to_generate == 0)


def logprob_kind(backend, params: SamplingParams) -> Optional[str]:
    """What the backend's ``logprobs`` hold under ``params`` (module docstring)."""
    if not params.compute_logprob:
        return None
    if distribution_unchanged(params):
        return "raw"
    return getattr(backend, "logprob_kind", "raw")


def rollout(backend, prompts: Sequence[str], n: int, params: SamplingParams, *,
            checkpoint: Optional[str] = None, batch_size: Optional[int] = None,
            progress: Optional[Callable[[int], None]] = None) -> list[RolloutRecord]:
    """``n`` responses per prompt from ``backend`` (a ``GenerationBackend`` with a tokenizer attached), in
    prompt order; ``progress(rows)`` is called after each batch."""
    if n < 1:
        raise GenerationError(f"rollout: n={n}: must be >= 1")
    if getattr(backend, "tokenizer", None) is None:
        raise GenerationError("the generation backend has no tokenizer attached (needed for text prompts)")
    try:
        params.validate()
    except ValueError as e:
        raise GenerationError(f"sampling: {e}") from None
    rows = [(p, s) for p in range(len(prompts)) for s in range(n)]
    size = batch_size or getattr(backend, "max_batch_size", None) or len(rows) or 1
    kind, name = logprob_kind(backend, params), getattr(backend, "name", type(backend).__name__)
    records: list[RolloutRecord] = []
    for b, lo in enumerate(range(0, len(rows), size)):
        chunk = rows[lo:lo + size]
        seed = None if params.random_seed is None else params.random_seed + b
        run = dataclasses.replace(params, random_seed=seed)
        try:
            out = backend.generate([prompts[p] for p, _ in chunk], run)
        except ValueError as e:  # request too long for the context
            raise GenerationError(str(e)) from None
        prov = Provenance(checkpoint=None if checkpoint is None else str(checkpoint), backend=name,
                          sampling=dataclasses.asdict(run), seed=seed, batch=b, logprob=kind)
        for i, (p, s) in enumerate(chunk):
            length, start = int(out.lengths[i]), int(out.prompt_lengths[i])
            ids = out.tokens[i, :length].tolist()  # prompt + response ids
            text = sentence_of(backend.tokenizer, prompts[p], ids[:start], ids)[len(prompts[p]):]
            # logprobs[t] is log p(tokens[t + 1] | tokens[:t + 1]): the response's are start - 1 .. length - 2
            lp = None if out.logprobs is None else out.logprobs[i, start - 1:length - 1].tolist()
            records.append(RolloutRecord(p, s, prompts[p], text, ids[start:], bool(out.is_end[i]), lp, prov))
        if progress is not None:
            progress(len(chunk))
    return records
