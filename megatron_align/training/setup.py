"""Wraps a built model for training: megatron DDP, megatron optimizer, and the hooks megatron's schedules
need.

``prepare_for_training(model, optim_cfg, precision, clip_grad)`` returns ``(ddp_model, optimizer)``:
- ``DistributedDataParallel`` with fp32 gradient buffers (``grad_reduce_in_fp32``), so gradients are reduced
  across data-parallel ranks once per step;
- megatron's ``get_megatron_optimizer`` (Adam/AdamW or SGD; the distributed optimizer shards optimizer state
  across DP ranks when ``model.optim.name=distributed_fused_adam``), with bf16/fp16 master weights in fp32 and
  gradient clipping;
- ``finalize_model_grads_func`` and ``no_sync_func`` set on the model config, as megatron's own training loop
  does: the schedules read them from there (this is megatron's contract, not a mutation of our choices).

Without TE/apex (CPU runs) megatron falls back to ``torch.optim.AdamW`` with its default implementation, which
on CPU is a Python loop of ~10 elementwise ops per parameter; ``_fuse_torch_adam`` switches those param groups
to torch's fused CPU kernel (same AdamW update, one pass per parameter).
"""

from __future__ import annotations

import logging

import torch

from megatron_align.config.model import OptimConfig
from megatron_align.models.gpt import precision_dtype

logger = logging.getLogger(__name__)

_DISTRIBUTED = {"distributed_fused_adam", "distributed_adam"}
_ADAM = {"distributed_fused_adam", "distributed_adam", "fused_adam", "adam", "adamw"}


def prepare_for_training(model, optim_cfg: OptimConfig, precision="32", clip_grad: float = 1.0):
    """``model``: this rank's megatron module. Returns ``(ddp_model, optimizer)``."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    name = optim_cfg.name
    if name not in _ADAM and name != "sgd":
        raise ValueError(f"model.optim.name={name!r}: use distributed_fused_adam, fused_adam, adamw or sgd")
    use_dist = name in _DISTRIBUTED
    dtype = precision_dtype(precision)
    config = model.config
    ddp = DistributedDataParallel(
        config=config,
        ddp_config=DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=False,
            use_distributed_optimizer=use_dist,
        ),
        module=model,
    )
    opt_config = OptimizerConfig(
        optimizer="sgd" if name == "sgd" else "adam",
        lr=optim_cfg.lr,
        min_lr=optim_cfg.sched.min_lr,
        weight_decay=optim_cfg.weight_decay,
        adam_beta1=float(optim_cfg.betas[0]),
        adam_beta2=float(optim_cfg.betas[1]),
        adam_eps=optim_cfg.eps,
        sgd_momentum=optim_cfg.momentum,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_distributed_optimizer=use_dist,
        clip_grad=clip_grad,
    )
    optimizer = get_megatron_optimizer(opt_config, [ddp], use_gloo_process_groups=False)
    _fuse_torch_adam(optimizer)
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = ddp.no_sync
    return ddp, optimizer


def _torch_optimizers(optimizer):
    """The torch optimizers inside megatron's (possibly chained) optimizer wrapper."""
    chained = getattr(optimizer, "chained_optimizers", [optimizer])
    return [inner for o in chained if (inner := getattr(o, "optimizer", None)) is not None]


def _fuse_torch_adam(optimizer) -> None:
    """Use torch's fused Adam/AdamW kernel for param groups that live on the CPU.

    Megatron builds ``torch.optim.AdamW(params, lr, weight_decay, betas, eps)`` when TE and apex are absent;
    torch then picks its single-tensor loop on CPU (foreach kernels are GPU-only). ``fused`` is a per-group
    option that torch reads at every ``step()``, so setting it on the groups of the optimizer we were handed
    is a configuration choice, not a patch. Math: the same AdamW update (torch tests the fused kernels
    against the loop); the step counter stays a float32 CPU tensor, so checkpoints keep their layout.
    """
    for opt in _torch_optimizers(optimizer):
        if not isinstance(opt, torch.optim.Adam):  # AdamW subclasses Adam
            continue
        for group in opt.param_groups:
            if group.get("differentiable") or group.get("capturable"):
                continue
            if all(p.device.type == "cpu" and p.dtype in (torch.float32, torch.float16, torch.bfloat16)
                   for p in group["params"]):
                group["foreach"], group["fused"] = False, True
