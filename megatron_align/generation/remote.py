"""The client of NeMo's ``PUT /generate`` (``examples/nlp/language_modeling/megatron_gpt_eval.py
server=True``): the seed's request fields (``sentences``, ``tokens_to_generate``, ``temperature``,
``add_BOS``, ``top_k``, ``top_p``, ``greedy``, ``all_probs``, ``repetition_penalty``,
``min_tokens_to_generate``, ``end_strings``; ``random_seed`` when set), in requests of at most
``request_size`` sentences. Standard library only (``urllib``); every failure is one ``GenerationError`` line
naming the server.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence

from megatron_align.generation.errors import GenerationError

logger = logging.getLogger(__name__)


def http_error_detail(e: urllib.error.HTTPError) -> str:
    """The ``error`` field of a JSON error body (our servers' 4xx/5xx answers), else the body's text, on one
    line and at most 500 characters."""
    detail = " ".join(e.read().decode("utf-8", "replace").split())[:500]
    try:
        return json.loads(detail).get("error", detail)
    except (ValueError, AttributeError):
        return detail


def endpoint(url: str, path: str) -> str:
    """``http://host:port`` (or ``host:port``) -> ``http://host:port/<path>``; a URL already ending in
    ``/<path>`` is kept."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url if url.endswith("/" + path) else f"{url}/{path}"





def request_body(prompts: Sequence[str], params) -> dict:
    """The ``PUT /generate`` body for ``prompts`` under ``SamplingParams`` ``params`` (the seed's fields)."""
    body = {"sentences": list(prompts), "tokens_to_generate": params.tokens_to_generate,
            "temperature": params.temperature, "add_BOS": params.add_BOS, "top_k": params.top_k,
            "top_p": params.top_p, "greedy": params.greedy, "all_probs": False,
            "repetition_penalty": params.repetition_penalty,
            "min_tokens_to_generate": params.min_tokens_to_generate, "end_strings": list(params.end_strings)}
    if params.random_seed is not None:
        body["random_seed"] = params.random_seed
    return body


def put_json(url: str, body: dict, timeout: float, what: str) -> dict:
    """``PUT`` ``body`` as JSON, the decoded JSON answer; ``GenerationError`` naming ``what`` (the server) for
    a refused request or an unreachable server."""
    data = json.dumps(body).encode("utf-8")
    req = urllib.request.Request(url, data=data, method="PUT", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        text = http_error_detail(e)
        raise GenerationError(f"{what} at {url} refused the request (HTTP {e.code}): {text}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise GenerationError(f"cannot reach the {what} at {url} ({reason}); is it running?") from None
    except ValueError as e:
        raise GenerationError(f"{what} at {url} answered with invalid JSON ({e})") from None


def generate_http(url: str, prompts: Sequence[str], params, timeout: float = 600.0,
                  request_size: int = 64) -> list[str]:
    """Continuations of ``prompts`` from the generation server at ``url``."""
    target = endpoint(url, "generate")
    out: list[str] = []
    for lo in range(0, len(prompts), request_size):
        chunk = list(prompts[lo:lo + request_size])
        answer = put_json(target, request_body(chunk, params), timeout, "generation server")
        sentences = answer.get("sentences") if isinstance(answer, dict) else None
        if not isinstance(sentences, list) or len(sentences) != len(chunk):
            raise GenerationError(f"generation server at {target}: expected {len(chunk)} sentences in the "
                                  "answer")
        for prompt, sentence in zip(chunk, sentences):
            if not sentence.startswith(prompt):
                logger.warning("the server's sentence does not start with the prompt; cutting at len(prompt)")
            out.append(sentence[len(prompt):])
    return out
