"""Core attention for megatron's local layer spec through torch's ``scaled_dot_product_attention`` (SDPA).

Megatron's local ``DotProductAttention`` materialises the scores ``[b*np, sq, sk]`` with ``baddbmm``, masks
them with ``masked_fill`` and runs softmax and a second ``bmm``: each a separate pass over memory, the masked
half of a causal matrix included. torch's SDPA does the same math (softmax(q k^T * scale) v, causal) in one
blocked kernel that skips the masked blocks (flash attention on CPU and on CUDA). On the CPU benchmark of
docs/benchmarks.md it cuts attention time (forward + backward) by about a fifth.

``SDPADotProductAttention`` subclasses megatron's module (same constructor, state dict, sharded state dict)
and is plugged in through the layer spec's ``core_attention`` submodule (DESIGN.md habit 7). It takes the
SDPA path only where the result is the same as megatron's: no explicit mask (causal from ``attn_mask_type``,
or no mask), no sliding window, vanilla softmax, no attention bias, no packed sequences. Everything else
(explicit padding or packed-sample masks, whose fully masked rows megatron fills with -10000 rather than
-inf, and inference shapes with ``1 < sq != sk``) goes to megatron's own ``forward`` unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType


class SDPADotProductAttention(DotProductAttention):
    """megatron ``DotProductAttention`` whose common case (causal or unmasked) runs as one SDPA call."""

    def _sdpa_ok(self, query, key, attention_mask, attention_bias, packed_seq_params) -> bool:
        return (
            attention_mask is None
            and attention_bias is None
            and packed_seq_params is None
            and self.softmax_offset is None
            and self.scale_mask_softmax.window_size is None
            and (self.attn_mask_type != AttnMaskType.causal or query.size(0) in (1, key.size(0)))
        )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        """``query`` ``[sq, b, np, hn]``, ``key``/``value`` ``[sk, b, ng, hn]`` -> ``[sq, b, np*hn]``."""
        if not self._sdpa_ok(query, key, attention_mask, attention_bias, packed_seq_params):
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias,
                                   packed_seq_params)
        sq, b, np_, hn = query.shape
        # Megatron divides softmax_scale by the layer number under apply_query_key_layer_scaling and
        # multiplies the scores back by it inside its softmax: the product is the scale it applies.
        scale = self.softmax_scale * (self.scale_mask_softmax.scale or 1.0)
        # Like megatron's FusedScaleMaskSoftmax: a causal mask only over a square score matrix (sq == sk);
        # one query row (KV-cache decoding) attends to every key.
        causal = self.attn_mask_type == AttnMaskType.causal and sq > 1
        q = query.permute(1, 2, 0, 3)  # [b, np, sq, hn]
        k = key.permute(1, 2, 0, 3)  # [b, ng, sk, hn]
        v = value.permute(1, 2, 0, 3)  # [b, ng, sk, hn]
        p = self.attention_dropout.p if self.training else 0.0
        gqa = k.size(1) != np_  # head i reads key/value group i // (np/ng), as megatron's repeat_interleave
        if p > 0.0 and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                ctx = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal, scale=scale,
                                                     enable_gqa=gqa)
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal, scale=scale,
                                                 enable_gqa=gqa)  # [b, np, sq, hn]
        return ctx.permute(2, 0, 1, 3).reshape(sq, b, np_ * hn)  # [sq, b, np*hn]
