"""From generated token ids to the text users see: the server's ``sentences`` (the prompt verbatim, then the
decoded response), the continuation after the prompt, and the response without its stop string.

``generate_local`` gives, in process, the continuation ``remote.generate_http`` gets from a server for the
same prompt and settings (both decode with ``sentence_of``).
"""

from __future__ import annotations

from collections.abc import Sequence

from megatron_align.generation.errors import GenerationError


def sentence_of(tokenizer, prompt: str, prompt_ids: list[int], ids: list[int]) -> str:
    """Decoded prompt + response, starting with ``prompt`` verbatim (decoding need not reproduce the prompt's
    exact text, e.g. its spacing, and clients cut the response off with ``len(prompt)``)."""
    full = tokenizer.ids_to_text(ids)
    head = tokenizer.ids_to_text(prompt_ids)
    return prompt + full[len(head):] if full.startswith(head) else full


def clean_response(text: str, end_strings: Sequence[str], end_of_turn: str = "\n") -> str:
    """``text`` without a trailing end string and the one ``end_of_turn`` before it (a response cut by the
    length limit keeps its text)."""
    for end in sorted(end_strings, key=len, reverse=True):
        if end and text.endswith(end):
            text = text[:-len(end)]
            if end_of_turn and text.endswith(end_of_turn):
                text = text[:-len(end_of_turn)]
            break
    return text


def generate_local(backend, prompts: Sequence[str], params) -> list[str]:
    """Continuations of ``prompts`` from ``backend`` (a ``GenerationBackend`` with a tokenizer attached)."""
    if getattr(backend, "tokenizer", None) is None:
        raise GenerationError("the generation backend has no tokenizer attached (needed for text prompts)")
    try:
        out = backend.generate(list(prompts), params)
    except ValueError as e:  # request too long for the context, bad sampling settings
        raise GenerationError(str(e)) from None
    texts = []
    for i, prompt in enumerate(prompts):
        n, p = int(out.lengths[i]), int(out.prompt_lengths[i])
        ids = out.tokens[i, :n].tolist()  # prompt + response ids
        texts.append(sentence_of(backend.tokenizer, prompt, ids[:p], ids)[len(prompt):])
    return texts
