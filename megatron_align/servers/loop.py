"""The serving loop every rank runs, and how a batch is spread over data-parallel model replicas.

Rank 0: take a batch from the ``JobQueue``, tick, broadcast it, run it like every rank, hand each job its
slice of the results. Other ranks: tick, receive, run. Running a batch (``run_on_replicas``) gives each
data-parallel replica a contiguous slice of the items; the replica's ranks compute together (TP/PP
collectives inside ``compute``), and the replica leaders (TP rank 0 of the first pipeline stage) send their
results to rank 0 over the control channel. A failure inside ``compute`` that happens on every rank (a bad
value, an out-of-memory) fails the batch's requests with its message and the server keeps serving.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from megatron_align.servers.batching import JobQueue, ServerClosing
from megatron_align.servers.control import TICK_SECONDS, ControlChannel

logger = logging.getLogger(__name__)


class BatchFailed(RuntimeError):
    """``compute`` raised on some replica; the message is the first error's."""


@dataclass(frozen=True)
class ReplicaLayout:
    """This rank's data-parallel replica and whether it speaks for it."""

    dp_rank: int = 0
    dp_size: int = 1
    is_leader: bool = True

    @classmethod
    def from_parallel_state(cls) -> ReplicaLayout:
        from megatron.core import parallel_state as ps

        leader = ps.get_tensor_model_parallel_rank() == 0 and ps.is_pipeline_first_stage(ignore_virtual=True)
        return cls(ps.get_data_parallel_rank(), ps.get_data_parallel_world_size(), leader)

    def slice_of(self, n: int) -> tuple[int, int]:
        """``[lo, hi)``: this replica's contiguous share of ``n`` items (sizes differ by at most one)."""
        base, extra = divmod(n, self.dp_size)
        lo = self.dp_rank * base + min(self.dp_rank, extra)
        return lo, lo + base + (self.dp_rank < extra)


def run_on_replicas(ch: ControlChannel, layout: ReplicaLayout, payload: dict,
                    compute: Callable[[dict, list], list]) -> Optional[list]:
    """Collective: ``compute(payload, my_items)`` on every replica; rank 0 gets all results in item order.

    ``compute`` returns one JSON-able result per item and must be called by every rank of a replica.
    """
    items = payload["items"]
    lo, hi = layout.slice_of(len(items))
    try:
        mine: Any = {"ok": compute(payload, items[lo:hi]) if hi > lo else []}
    except Exception as exc:  # reported to rank 0, which fails the requests; the loop goes on
        logger.error("batch failed on this rank:\n%s", traceback.format_exc())
        mine = {"error": f"{type(exc).__name__}: {exc}"}
    gathered = ch.gather_json([layout.dp_rank, mine] if layout.is_leader else None)
    if gathered is None:
        return None
    parts = sorted((g for g in gathered if g is not None), key=lambda g: g[0])
    errors = [p[1]["error"] for p in parts if "error" in p[1]]
    if errors:
        raise BatchFailed(errors[0])
    return [r for p in parts for r in p[1]["ok"]]


def serve_forever(ch: ControlChannel, layout: ReplicaLayout, compute: Callable[[dict, list], list],
                  queue: Optional[JobQueue] = None,
                  make_payload: Optional[Callable[[list], dict]] = None) -> None:
    """Every rank's loop until a stop tick. Rank 0 passes the ``queue`` and ``make_payload(jobs) ->
    {"items": [...], ...}`` (items of all jobs, in job order); results go back to each job in order."""
    if ch.rank != 0:
        while True:
            state = ch.tick()
            if state == "stop":
                return
            if state == "work":
                run_on_replicas(ch, layout, ch.broadcast_json(), compute)
        return
    while True:
        jobs = queue.next_batch(TICK_SECONDS)
        payload = None
        if jobs:
            try:  # before the tick: once it says "work", every rank waits for this payload
                payload = make_payload(jobs)
            except Exception as exc:
                for job in jobs:
                    job.fail(BatchFailed(f"{type(exc).__name__}: {exc}"))
                jobs = []
        state = ch.tick(payload is not None)
        if state == "stop":
            for job in jobs + queue.close():
                job.fail(ServerClosing("the server is shutting down"))
            return
        if state != "work":
            continue
        t0 = time.perf_counter()
        try:
            results = run_on_replicas(ch, layout, ch.broadcast_json(payload), compute)
        except Exception as exc:
            for job in jobs:
                job.fail(exc if isinstance(exc, BatchFailed) else BatchFailed(f"{type(exc).__name__}: {exc}"))
            continue
        logger.info("batch of %d request(s), %d item(s): %.2f s", len(jobs), len(payload["items"]),
                    time.perf_counter() - t0)
        start = 0
        for job in jobs:
            job.resolve(results[start:start + len(job.items)])
            start += len(job.items)
