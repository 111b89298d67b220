"""Request queue and batch forming: the HTTP handlers put jobs in, rank 0's serving loop takes batches out.

A ``Job`` is one HTTP request: ``items`` (its sentences, already tokenized) and a merge ``key`` (the
sampling settings). ``next_batch`` takes the oldest job, waits ``wait_s`` for company, and adds every queued
job with the same key, in arrival order, while the batch holds at most ``max_items`` items (a single job
larger than that still runs, alone, in several rounds). A job whose key is ``None`` (e.g. one that asks for
a ``random_seed``: its samples must not depend on what it is batched with) never merges.
The handler's asyncio future is resolved from the serving thread through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Optional


class ServerClosing(Exception):
    """The server is shutting down: the request was not run (HTTP 503)."""


@dataclass
class Job:
    """One request: its items, merge key, and the future its HTTP handler awaits."""

    items: list
    key: Optional[Hashable]
    meta: Any = None
    """Whatever the response builder needs besides the results (e.g. the request's prompts)."""
    loop: Optional[asyncio.AbstractEventLoop] = None
    future: Optional[asyncio.Future] = None
    enqueued_at: float = field(default_factory=time.monotonic)

    def _deliver(self, setter, value) -> None:
        if self.future is None:
            return

        def apply():
            if not self.future.done():
                setter(value)

        self.loop.call_soon_threadsafe(apply)

    def resolve(self, value) -> None:
        """Hand the result to the waiting handler (thread-safe)."""
        if self.future is not None:
            self._deliver(self.future.set_result, value)

    def fail(self, exc: BaseException) -> None:
        """Hand an exception to the waiting handler (thread-safe)."""
        if self.future is not None:
            self._deliver(self.future.set_exception, exc)


class JobQueue:
    """Thread-safe FIFO of jobs with compatible-request merging (see the module docstring)."""

    def __init__(self, max_items: int, wait_s: float = 0.005):
        self.max_items = max_items
        self.wait_s = wait_s
        self._jobs: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.stats = {"batches": 0, "requests": 0}
        """Batches taken and requests in them so far (``GET /health`` shows them)."""

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises ``ServerClosing`` once the queue is closed."""
        with self._cond:
            if self._closed:
                raise ServerClosing("the server is shutting down")
            self._jobs.append(job)
            self._cond.notify()

    def __len__(self) -> int:
        with self._cond:
            return len(self._jobs)

    def next_batch(self, timeout: float) -> list[Job]:
        """Up to ``max_items`` items of mergeable jobs, oldest first; ``[]`` if none came within
        ``timeout``."""
        with self._cond:
            if not self._jobs:
                self._cond.wait(timeout)
            if not self._jobs:
                return []
            first = self._jobs[0]
            # Give concurrent requests a moment to arrive, unless the batch is already full.
            remaining = self.wait_s - (time.monotonic() - first.enqueued_at)
            if remaining > 0 and first.key is not None and self._queued_items(first.key) < self.max_items:
                self._cond.wait(remaining)
            batch = [self._jobs.popleft()]
            self.stats["batches"] += 1
            if batch[0].key is None:
                self.stats["requests"] += 1
                return batch
            size = len(batch[0].items)
            keep: collections.deque[Job] = collections.deque()
            while self._jobs:
                job = self._jobs.popleft()
                if job.key == batch[0].key and size + len(job.items) <= self.max_items:
                    batch.append(job)
                    size += len(job.items)
                else:
                    keep.append(job)
            self._jobs = keep
            self.stats["requests"] += len(batch)
            return batch

    def _queued_items(self, key) -> int:
        return sum(len(j.items) for j in self._jobs if j.key == key)

    def close(self) -> list[Job]:
        """Refuse new jobs; return (and forget) the queued ones."""
        with self._cond:
            self._closed = True
            left = list(self._jobs)
            self._jobs.clear()
            self._cond.notify_all()
            return left
