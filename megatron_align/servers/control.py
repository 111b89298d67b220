"""The channel by which rank 0 (the HTTP rank) drives the other ranks of a server job, and stops them.

Every rank runs the same loop of *ticks*. A tick is one all-reduce (MAX) over a dedicated gloo group of
``[work, stop]``: rank 0 sets ``work`` when it holds a batch, and any rank sets ``stop`` once it got SIGTERM
or SIGINT. After a ``work`` tick rank 0 broadcasts the batch (JSON bytes, never pickle) and every rank runs
it; after a ``stop`` tick every rank leaves the loop and exits 0. Rank 0 ticks at least every
``TICK_SECONDS`` while idle, so a signal that lands on a rank blocked in the all-reduce is seen within one
tick. The gloo group keeps this polling off the accelerator (no CUDA syncs), whatever the model's backend is.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from typing import Any, Optional

import torch

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.05
"""Longest idle time between two ticks (how fast a stop request reaches every rank)."""


class ControlChannel:
    """Ticks, JSON broadcast from rank 0 and JSON gather to rank 0 over a gloo group of all ranks."""

    def __init__(self):
        dist = torch.distributed
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.group = dist.new_group(backend="gloo") if self.world > 1 else None
        self.stop_requested = threading.Event()
        """Set by the signal handlers (or by code on any rank) to shut every rank down at the next tick."""

    # ------------------------------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT request a clean stop instead of killing the process (main thread only)."""
        def handler(signum, _frame):
            logger.info("rank %d: got %s, stopping", self.rank, signal.Signals(signum).name)
            self.stop_requested.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handler)

    def tick(self, has_work: bool = False) -> str:
        """Collective: ``"stop"`` if any rank asked to stop, else ``"work"`` if rank 0 has a batch, else
        ``"idle"``."""
        flags = torch.tensor([int(has_work and self.rank == 0), int(self.stop_requested.is_set())],
                             dtype=torch.int64)  # [2]
        if self.world > 1:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX, group=self.group)
        if flags[1]:
            self.stop_requested.set()
            return "stop"
        return "work" if flags[0] else "idle"

    # ------------------------------------------------------------------------------------------------------
    def broadcast_json(self, obj: Any = None) -> Any:
        """Collective: rank 0's ``obj`` on every rank (a JSON round trip on rank 0 too, so all ranks see the
        same types)."""
        data = json.dumps(obj).encode() if self.rank == 0 else b""
        if self.world == 1:
            return json.loads(data)
        size = torch.tensor([len(data)], dtype=torch.int64)  # [1]
        torch.distributed.broadcast(size, src=0, group=self.group)
        buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.rank == 0
               else torch.empty(int(size), dtype=torch.uint8))  # [n]
        torch.distributed.broadcast(buf, src=0, group=self.group)
        return json.loads(bytes(buf.numpy()))

    def gather_json(self, obj: Any) -> Optional[list]:
        """Collective: every rank's ``obj`` in rank order on rank 0 (None on the other ranks)."""
        data = json.dumps(obj).encode()
        if self.world == 1:
            return [json.loads(data)]
        sizes = torch.zeros(self.world, dtype=torch.int64)  # [world]
        sizes[self.rank] = len(data)
        torch.distributed.all_reduce(sizes, group=self.group)
        longest = int(sizes.max())
        buf = torch.zeros(longest, dtype=torch.uint8)  # [longest], this rank's bytes then zeros
        if data:
            buf[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        bufs = None
        if self.rank == 0:
            bufs = [torch.empty(longest, dtype=torch.uint8) for _ in range(self.world)]
        torch.distributed.gather(buf, bufs, dst=0, group=self.group)
        if self.rank != 0:
            return None
        return [json.loads(bytes(b[:int(n)].numpy())) for b, n in zip(bufs, sizes)]

    def all_max(self, value: int) -> int:
        """Collective: the largest ``value`` over all ranks."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return int(t)
