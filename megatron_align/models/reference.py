"""The frozen reference policy: a host-resident copy of this rank's weight shard, swapped in on demand.

Choice (as NeMo-Aligner does for DPO): instead of a second model on the accelerator, keep the reference
weights in host memory and, for a reference forward, copy them into the policy's parameters, run, and copy the
policy back. Nothing else changes: same model object, same parallel layout, same kernels.

Memory cost per rank, for P = parameters in this rank's shard and b bytes per parameter:
- accelerator: 0 extra (the policy's own parameters are overwritten for the duration of the swap);
- host: 2 * P * b (the reference copy, plus a preallocated buffer holding the policy during the swap);
  on a CUDA machine both are pinned for fast copies.
Time cost: three copies of P * b bytes per swap (policy -> host, reference -> device, policy -> device).
A second resident model would instead cost P * b on the accelerator and no copies.
"""

from __future__ import annotations

import contextlib
import logging

import torch

logger = logging.getLogger(__name__)


def _params(model) -> list[tuple[str, torch.Tensor]]:
    if isinstance(model, (list, tuple)):
        out = []
        for i, chunk in enumerate(model):
            out.extend((f"{i}.{n}", p) for n, p in chunk.named_parameters())
        return out
    return list(model.named_parameters())


class HostReferencePolicy:
    """Holds a host copy of ``model``'s current weights; ``swapped_in(model)`` runs code with them."""

    def __init__(self, model):
        pin = torch.cuda.is_available()
        self._names = [n for n, _ in _params(model)]
        with torch.no_grad():
            self._ref = [p.detach().to("cpu", copy=True) for _, p in _params(model)]
            self._spare = [torch.empty_like(t) for t in self._ref]
            if pin:
                self._ref = [t.pin_memory() for t in self._ref]
                self._spare = [t.pin_memory() for t in self._spare]
        logger.info("reference policy held in host memory: %.1f MiB (x2 with the swap buffer)",
                    self.nbytes / 2**20)

    @property
    def nbytes(self) -> int:
        """Bytes of one host copy (the reference); the swap buffer costs the same again."""
        return sum(t.numel() * t.element_size() for t in self._ref)

    def update(self, model) -> None:
        """Make the model's current weights the new reference (e.g. after each SteerLM 2.0 iteration)."""
        with torch.no_grad():
            for (_name, p), ref in zip(_params(model), self._ref):
                ref.copy_(p.detach())

    @contextlib.contextmanager
    def swapped_in(self, model):
        """Inside the block ``model`` computes with the reference weights; restored exactly afterwards."""
        params = _params(model)
        if [n for n, _ in params] != self._names:
            raise RuntimeError("reference policy was captured from a model with different parameters")
        with torch.no_grad():
            for (_, p), spare, ref in zip(params, self._spare, self._ref):
                spare.copy_(p.detach())
                p.copy_(ref, non_blocking=True)
        try:
            yield model
        finally:
            with torch.no_grad():
                for (_, p), spare in zip(params, self._spare):
                    p.copy_(spare, non_blocking=True)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
