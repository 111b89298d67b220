"""Learning-rate schedules as the seed documents configure them (``model.optim.sched.*``).

NeMo's ``CosineAnnealing`` with ``warmup_steps``, ``constant_steps`` and ``min_lr``: linear warm-up from 0 to
``lr`` over ``warmup_steps``; cosine decay from ``lr`` to ``min_lr`` over the steps that remain after warm-up
and
after the final ``constant_steps``; then ``min_lr`` held for the last ``constant_steps`` steps.
``Constant``: warm-up, then ``lr``. The schedule is a pure function of the step, so resuming needs only the
step number.
"""

from __future__ import annotations

import math

from megatron_align.config.model import OptimConfig


def lr_at(step: int, optim: OptimConfig, max_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based: the first update uses ``lr_at(0)``)."""
    sched = optim.sched
    total = sched.max_steps or max_steps
    peak, floor = optim.lr, sched.min_lr
    warm = sched.warmup_steps
    if warm > 0 and step < warm:
        return peak * (step + 1) / warm
    if sched.name == "Constant":
        return peak
    if sched.name != "CosineAnnealing":
        raise ValueError(f"model.optim.sched.name={sched.name!r}: use CosineAnnealing or Constant")
    decay_steps = max(1, total - warm - sched.constant_steps)
    t = min(step - warm, decay_steps) / decay_steps  # in [0, 1]
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def apply_lr(optimizer, lr: float) -> None:
    """Set ``lr`` on every parameter group of a megatron optimizer (chained or not)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
