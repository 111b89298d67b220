"""``PUT /generate``: NeMo's request fields and response fields, request checks, and response building.

Request (NeMo's ``text_generation_server`` names): ``sentences`` (required, 1..N strings) and the sampling
fields with the defaults every stage shares (``config/sampling.py``: ``tokens_to_generate`` 64, ``greedy``
false, ``temperature`` 1.0, ``top_k`` 0, ``top_p`` 0 (off), ``repetition_penalty`` 1.0, ``add_BOS`` false,
``end_strings`` ["<|endoftext|>"], ``min_tokens_to_generate`` 0, ``compute_logprob`` false, ``random_seed``
null, ``all_probs`` false; NeMo's server defaults differ in ``top_p`` 0.9 and ``repetition_penalty`` 1.2).
Unknown fields are refused (a misspelt ``max_tokens`` would otherwise be silently ignored).

Response, one entry per sentence: ``sentences`` (prompt + generated text; it starts with the prompt exactly
as sent, so ``sentence[len(prompt):]`` is the generated text), ``tokens`` (the text of each token),
``token_ids``, ``offsets`` (start of each token in the concatenation of ``tokens``, as NeMo computes them),
``logprob`` (log p of every token after the first given the ones before, prompt included; null unless
``compute_logprob``), and ``full_logprob`` (only with ``all_probs``: the log-softmax row over the vocabulary
at each of those positions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from megatron_align.config.docgen import field_docs
from megatron_align.config.sampling import MAX_SEED, SamplingParams
from megatron_align.generation.text import sentence_of
from megatron_align.servers.http import RequestError, Text

_D = SamplingParams()  # the one set of sampling defaults (config/sampling.py)
_DOCS = field_docs(SamplingParams)


class GenerateRequest(BaseModel):
    """The body of ``PUT /generate`` (defaults: ``config/sampling.SamplingParams``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    sentences: list[Text] = Field(min_length=1, description="Prompts, one per sample.")
    tokens_to_generate: int = Field(_D.tokens_to_generate, ge=0, description=_DOCS["tokens_to_generate"])
    all_probs: bool = Field(_D.all_probs, description="Also return full_logprob (vocabulary-wide log-probs).")
    temperature: float = Field(_D.temperature, gt=0.0, le=100.0, description=_DOCS["temperature"])
    add_BOS: bool = Field(_D.add_BOS, description=_DOCS["add_BOS"])
    greedy: bool = Field(_D.greedy, description=_DOCS["greedy"])
    top_k: int = Field(_D.top_k, ge=0, le=2**31 - 1, description=_DOCS["top_k"])
    top_p: float = Field(_D.top_p, ge=0.0, le=1.0, description=_DOCS["top_p"])
    repetition_penalty: float = Field(_D.repetition_penalty, ge=1.0, description=_DOCS["repetition_penalty"])
    end_strings: list[Text] = Field(default_factory=lambda: list(_D.end_strings),
                                   description=_DOCS["end_strings"])
    min_tokens_to_generate: int = Field(_D.min_tokens_to_generate, ge=0,
                                        description=_DOCS["min_tokens_to_generate"])
    compute_logprob: bool = Field(_D.compute_logprob, description="Return logprob for every token after the "
                                  "first.")
    random_seed: Optional[int] = Field(_D.random_seed, ge=0, le=MAX_SEED, description="Seed of the sampling; "
                                       "such a request runs alone, so its samples do not depend on others.")


class GenerateResponse(BaseModel):
    """The body of a successful ``PUT /generate`` (documents the OpenAPI schema)."""

    sentences: list[str]
    tokens: list[list[str]]
    token_ids: list[list[int]]
    offsets: list[list[int]]
    logprob: Optional[list[list[float]]] = None
    full_logprob: Optional[list[list[list[float]]]] = None


SAMPLING_FIELDS = ("greedy", "temperature", "top_k", "top_p", "repetition_penalty", "tokens_to_generate",
                   "min_tokens_to_generate", "end_strings", "compute_logprob", "all_probs")
"""Request fields that requests merged into one batch must share (``add_BOS`` is applied when tokenizing)."""


def sampling_of(req: GenerateRequest) -> dict:
    """The batch-level settings of ``req`` (JSON-able), in ``SAMPLING_FIELDS`` order."""
    return {name: getattr(req, name) for name in SAMPLING_FIELDS} | {"random_seed": req.random_seed}


def merge_key(req: GenerateRequest) -> Optional[tuple]:
    """Requests with equal keys may share a batch; a seeded request never does (None)."""
    if req.random_seed is not None:
        return None
    return tuple(tuple(v) if isinstance(v, list) else v for v in sampling_of(req).values())


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask of the server (the server config's keys of the same names)."""

    max_sentences_per_request: int
    max_generated_tokens_per_request: Optional[int] = None
    max_all_probs_values: Optional[int] = None
    vocab_size: int = 0


def tokenize_prompts(req: GenerateRequest, tokenizer, context_length: int, limits: RequestLimits) -> list:
    """Prompt token ids; ``RequestError`` naming the field for too many sentences or tokens, a response over
    the size limit, an empty prompt, or a prompt (plus ``tokens_to_generate``) longer than the context."""
    n = len(req.sentences)
    if n > limits.max_sentences_per_request:
        raise RequestError("sentences", f"{n} sentences; at most {limits.max_sentences_per_request} per "
                                        "request (the server's max_sentences_per_request)")
    cap = limits.max_generated_tokens_per_request
    if cap is not None and n * req.tokens_to_generate > cap:
        raise RequestError("tokens_to_generate", f"{n} sentences x {req.tokens_to_generate} tokens is more "
                           f"than {cap} (the server's max_generated_tokens_per_request)")
    if req.min_tokens_to_generate > req.tokens_to_generate:
        raise RequestError("min_tokens_to_generate", f"{req.min_tokens_to_generate} is more than "
                                                     f"tokens_to_generate={req.tokens_to_generate}")
    if req.add_BOS and tokenizer.bos_id is None:
        raise RequestError("add_BOS", "this model's tokenizer has no bos token")
    ids = tokenizer.texts_to_ids(req.sentences, add_bos=req.add_BOS)
    for i, prompt in enumerate(ids):
        if not prompt:
            raise RequestError(f"sentences[{i}]", "empty prompt (give some text, or add_BOS=true)")
        if len(prompt) >= context_length:
            raise RequestError(f"sentences[{i}]", f"the prompt is {len(prompt)} tokens; the model's context "
                                                  f"is {context_length} tokens")
        if len(prompt) + req.tokens_to_generate > context_length:
            raise RequestError("tokens_to_generate",
                               f"sentences[{i}] is {len(prompt)} tokens, and {len(prompt)} + "
                               f"{req.tokens_to_generate} exceeds the model's context of {context_length} "
                               f"tokens (ask for at most {context_length - len(prompt)})")
    cap = limits.max_all_probs_values
    if req.all_probs and cap is not None:
        values = sum(len(p) + req.tokens_to_generate - 1 for p in ids) * limits.vocab_size
        if values > cap:
            raise RequestError("all_probs", f"the response would hold {values} log-probs (positions x "
                               f"vocabulary of {limits.vocab_size}); at most {cap} (the server's "
                               "max_all_probs_values): send fewer or shorter sentences")
    return ids


def token_texts(tokenizer, ids: list[int], window: int = 6) -> list[str]:
    """The text each token adds to the decoded sequence (special tokens as their text), decoded with a few
    tokens of left context so that word-initial spaces and multi-token characters come out right."""
    out = []
    for k in range(len(ids)):
        lo = max(0, k - window)
        before = tokenizer.ids_to_text(ids[lo:k], skip_special=False)
        after = tokenizer.ids_to_text(ids[lo:k + 1], skip_special=False)
        common = 0
        limit = min(len(before), len(after))
        while common < limit and before[common] == after[common]:
            common += 1
        out.append(after[common:])
    return out


def offsets_of(texts: list[str]) -> list[int]:
    """Start of each token text in their concatenation (NeMo's ``offsets``)."""
    out, pos = [], 0
    for t in texts:
        out.append(pos)
        pos += len(t)
    return out


def build_response(tokenizer, req: GenerateRequest, prompt_ids: list, results: list[dict]) -> dict:
    """NeMo's response body from the per-sentence results of the serving loop."""
    body = {"sentences": [], "tokens": [], "token_ids": [], "offsets": [],
            "logprob": [] if req.compute_logprob else None}
    if req.all_probs:
        body["full_logprob"] = []
    for prompt, p_ids, res in zip(req.sentences, prompt_ids, results):
        ids = res["ids"]
        texts = token_texts(tokenizer, ids)
        body["sentences"].append(sentence_of(tokenizer, prompt, p_ids, ids))
        body["tokens"].append(texts)
        body["token_ids"].append(ids)
        body["offsets"].append(offsets_of(texts))
        if req.compute_logprob:
            body["logprob"].append(res["logprob"])
        if req.all_probs:
            body["full_logprob"].append(res["full_logprob"])
    return body
