"""Client of the reward-model server (``examples/nlp/gpt/serve_reward_model.py``): ``PUT /infer`` with
retries.

``RewardClient(host, port).score(texts)`` sends ``{"sentences": texts, "add_EOS": ...}`` and returns the
``rewards`` rows, checking that there is one row of numbers per text. Standard library only (urllib), so a
client machine needs nothing beyond this package.

Failures that may pass (connection refused or reset, timeout, HTTP 429 / 500 / 502 / 503 / 504) are retried
``retries`` times, waiting ``backoff * 2**k`` seconds (at most 30) before retry ``k``; then, and at once for
any other HTTP error (a 4xx: the request itself is wrong) or a malformed answer, ``RewardServerError``: one
line naming ``host:port``, the HTTP status and the server's error body. It is a ``UserError``: ``run_cli``
prints it and exits 2.
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from megatron_align.config.errors import UserError
from megatron_align.generation.remote import http_error_detail
from megatron_align.scoring.base import Scorer

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
"""HTTP statuses worth another try (busy, shutting down, a failed batch)."""
MAX_WAIT_S = 30.0
"""Longest wait between two tries."""


class RewardServerError(UserError):
    """The reward server could not be reached, refused the request, or answered something malformed."""

    prefix = "reward server error"


class _Retryable(Exception):
    pass


class RewardClient(Scorer):
    """``score(texts) -> rewards`` over HTTP (module docstring); ``exceeded`` counts texts the server cut to
    the model's context."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5555, timeout: float = 300.0, retries: int = 5,
                 backoff: float = 1.0, add_eos: bool = False, sleep: Callable[[float], None] = time.sleep):
        self.where = f"{host}:{port}"
        self.url = f"http://{host}:{port}/infer"
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.add_eos = add_eos
        self.sleep = sleep
        self.exceeded = 0
        """Texts longer than the model's context so far (scored at their last kept token)."""

    def _once(self, body: bytes) -> dict:
        req = urllib.request.Request(self.url, data=body, method="PUT",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = http_error_detail(e)
            msg = f"{self.where} answered HTTP {e.code} to PUT /infer: {detail or e.reason}"
            if e.code in RETRY_STATUS:
                raise _Retryable(msg) from None
            raise RewardServerError(msg) from None
        except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out, name not resolved
            reason = getattr(e, "reason", None) or e
            raise _Retryable(f"reward server unreachable at {self.where} ({reason}); is "
                             f"examples/nlp/gpt/serve_reward_model.py running with inference.port="
                             f"{self.where.rsplit(':', 1)[1]}?") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise RewardServerError(f"{self.where} answered PUT /infer with something that is not JSON: "
                                    f"{raw[:200]!r}") from None

    def _check(self, res: object, n: int) -> list[list[float]]:
        rewards = res.get("rewards") if isinstance(res, dict) else None
        ok = isinstance(rewards, list) and len(rewards) == n and all(
            isinstance(row, list) and row and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  and math.isfinite(v) for v in row) for row in rewards)
        if not ok:
            raise RewardServerError(f"{self.where} answered PUT /infer without {n} rows of finite numbers in "
                                    f"'rewards': {json.dumps(res)[:300]}")
        exceeded = res.get("exceeded")
        if isinstance(exceeded, list):
            self.exceeded += sum(1 for x in exceeded if x is True)
        return rewards

    def score(self, texts: list[str]) -> list[list[float]]:
        """The server's reward row of each text (retrying as the module docstring says)."""
        body = json.dumps({"sentences": list(texts), "add_EOS": self.add_eos}).encode("utf-8")
        for attempt in range(self.retries + 1):
            try:
                return self._check(self._once(body), len(texts))
            except _Retryable as e:
                if attempt == self.retries:
                    tries = "1 try" if attempt == 0 else f"{attempt + 1} tries"
                    raise RewardServerError(f"{e} (gave up after {tries})") from None
                wait = min(self.backoff * 2 ** attempt, MAX_WAIT_S)
                logger.warning("%s; retry %d/%d in %.2f s", e, attempt + 1, self.retries, wait)
                self.sleep(wait)
        raise AssertionError("unreachable")
