"""Our ``SamplingParams`` (NeMo names) <-> TensorRT-LLM 1.2.1 ``SamplingParams`` and ``RequestOutput``s.

Pure functions (no tensorrt_llm import): ``trtllm_sampling_kwargs`` builds the keyword arguments of
``tensorrt_llm.SamplingParams``; ``to_generation_output`` turns per-request results into our
``GenerationOutput``. Field names and rules, from ``tensorrt_llm/sampling_params.py`` and the PyTorch
sampler (``_torch/pyexecutor/sampling_utils.py``):

- ``max_tokens``, ``min_tokens``, ``temperature``, ``top_k``, ``top_p``, ``repetition_penalty``, ``seed``,
  ``stop`` (strings; tokenized by the engine's tokenizer), ``end_id`` / ``pad_id``, ``logprobs`` (int),
  ``include_stop_str_in_output``, ``detokenize``;
- decoding is greedy when ``top_k == 1``, ``top_p == 0.0`` or ``temperature == 0``, or when temperature,
  top_k and top_p are all unset (``SamplingParams.params_imply_greedy_decoding``). NeMo's "off" values
  (``top_k=0``, ``top_p=0.0`` or ``1.0``) are therefore sent as ``None``, never as 0.0, and sampling always
  sets ``temperature``; greedy is sent as ``top_k=1``;
- ``logprobs=1`` asks for the sampled token's log-prob; results carry, per generated token, either a float
  or a ``{token_id: Logprob(logprob, rank)}`` dict (version-dependent; both are read). A sampled token
  missing from the dict gives NaN rather than a wrong number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch

from megatron_align.generation.interface import GenerationOutput, SamplingParams


def trtllm_sampling_kwargs(
    params: SamplingParams, end_id: Optional[int], pad_id: Optional[int] = None
) -> dict[str, Any]:
    """Keyword arguments of ``tensorrt_llm.SamplingParams`` equivalent to ``params``."""
    params.validate()
    kw: dict[str, Any] = {
        "max_tokens": params.tokens_to_generate,
        "end_id": end_id,
        "pad_id": pad_id if pad_id is not None else end_id,
        "min_tokens": params.min_tokens_to_generate or None,
        "repetition_penalty": None if params.repetition_penalty == 1.0 else params.repetition_penalty,
        "seed": params.random_seed,
        "stop": list(params.end_strings) or None,
        "include_stop_str_in_output": True,  # our responses end at the end string, inclusive
        "logprobs": 1 if params.compute_logprob else None,
        "detokenize": False,  # texts are decoded with our tokenizer
    }
    if params.greedy:
        kw.update(top_k=1, top_p=None, temperature=None)
    else:
        kw.update(
            temperature=params.temperature,
            top_k=params.top_k or None,
            top_p=params.top_p if 0.0 < params.top_p < 1.0 else None,
        )
    return kw


@dataclass
class Completion:
    """One request's result, as read from a TensorRT-LLM ``RequestOutput.outputs[0]``."""

    token_ids: list[int]
    """Generated tokens only (``exclude_input_from_output`` is True by default)."""
    logprobs: Optional[list[Any]] = None
    """Per generated token: a float, or a ``{token_id: Logprob}`` dict."""
    finish_reason: Optional[str] = None
    """``"stop"`` (end id or stop string), ``"length"``, ... as TensorRT-LLM reports it."""


def completion_from_trtllm(request_output) -> Completion:
    """Read ``RequestOutput.outputs[0]`` (``token_ids``, ``logprobs``, ``finish_reason``)."""
    out = request_output.outputs[0]
    return Completion(
        list(out.token_ids), getattr(out, "logprobs", None), getattr(out, "finish_reason", None)
    )


def _logprob_of(entry: Any, token: int) -> float:
    if entry is None:
        return math.nan
    if isinstance(entry, (int, float)):
        return float(entry)
    if isinstance(entry, dict):
        hit = entry.get(token)
        if hit is None:
            return math.nan
        return float(getattr(hit, "logprob", hit))
    return float(getattr(entry, "logprob", math.nan))


def sampled_logprobs(c: Completion) -> list[float]:
    """The log-prob of each generated token (NaN where the engine did not return it)."""
    entries = list(c.logprobs or [])
    entries += [None] * (len(c.token_ids) - len(entries))
    return [_logprob_of(e, tok) for e, tok in zip(entries, c.token_ids)]


def to_generation_output(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Completion],
    pad_id: int,
    compute_logprob: bool,
) -> GenerationOutput:
    """Per-request prompts and completions -> ``GenerationOutput`` (right-padded with ``pad_id``)."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least one token (e.g. BOS)")
    b = len(prompts)
    seqs = [list(p) + list(c.token_ids) for p, c in zip(prompts, completions)]
    t = max((len(s) for s in seqs), default=0)
    tokens = torch.full((b, t), pad_id, dtype=torch.long)  # [B, T]
    logprobs = torch.zeros((b, max(t - 1, 0)), dtype=torch.float32) if compute_logprob else None  # [B, T-1]
    for i, (p, c, s) in enumerate(zip(prompts, completions, seqs)):
        tokens[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        if logprobs is not None and c.token_ids:
            # logprobs[:, t] scores tokens[:, t + 1]: generated token j sits at position len(p) + j
            lp = torch.tensor(sampled_logprobs(c), dtype=torch.float32)
            logprobs[i, len(p) - 1: len(p) - 1 + len(lp)] = lp
    return GenerationOutput(
        tokens=tokens,
        prompt_lengths=torch.tensor([len(p) for p in prompts], dtype=torch.long),
        lengths=torch.tensor([len(s) for s in seqs], dtype=torch.long),
        logprobs=logprobs,
        is_end=torch.tensor([c.finish_reason == "stop" for c in completions], dtype=torch.bool),
    )
