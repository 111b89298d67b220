"""Layer norms of megatron's local spec that also work under sequence parallelism.

Megatron's local spec (used when Transformer Engine is absent, e.g. on CPU) builds its norms through
``megatron.core.transformer.torch_norm.WrappedTorchNorm`` when apex is missing, and that wrapper refuses
``sequence_parallel=True`` outright. Nothing in a norm's forward depends on the split: LayerNorm and RMSNorm
normalize each token on its own, so a sequence shard gives the same per-token result. What sequence
parallelism does change is the weight's gradient: each TP rank sees only its shard of the tokens, so the
ranks' gradients are partial sums. Megatron's ``finalize_model_grads`` all-reduces, over the TP group, the
gradient of every parameter that carries ``sequence_parallel = True``
(``distributed/finalize_model_grads.py``, ``_allreduce_non_tensor_model_parallel_grads``), which is how
apex's ``FusedLayerNorm`` and TE's norms take part. ``SequenceParallelTorchNorm`` builds the same torch
``LayerNorm`` / ``RMSNorm`` and marks its parameters that way.
"""

from __future__ import annotations

import torch


class SequenceParallelTorchNorm:
    """``WrappedTorchNorm``'s construction interface; returns a ``torch.nn.LayerNorm`` or ``torch.nn.RMSNorm``
    whose parameters carry ``sequence_parallel = config.sequence_parallel``."""

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, persist_layer_norm: bool = False,
                zero_centered_gamma: bool = False, normalization: str = "LayerNorm"):
        unsupported = [name for name in ("layernorm_zero_centered_gamma", "persist_layer_norm",
                                         "memory_efficient_layer_norm") if getattr(config, name, False)]
        if unsupported:
            raise ValueError(f"torch LayerNorm/RMSNorm (local layer spec) does not support {unsupported}")
        kinds = {"LayerNorm": torch.nn.LayerNorm, "RMSNorm": torch.nn.RMSNorm}
        if config.normalization not in kinds:
            raise ValueError(f"normalization {config.normalization!r}: the local spec supports "
                             f"{sorted(kinds)}")
        norm = kinds[config.normalization](normalized_shape=hidden_size, eps=eps)
        for p in norm.parameters():
            p.sequence_parallel = bool(config.sequence_parallel)
        return norm
