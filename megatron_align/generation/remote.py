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



