"""A lean forward of one megatron ``GPTModel`` stage for generation, with its own preallocated KV cache.

Why: on CPU a decode step through ``GPTModel.forward`` + ``StaticInferenceContext`` runs ~600 small torch
calls (autograd functions around every linear, viewless-tensor wrappers, rotary embedding of every cached key
at every step, the CPU compatibility layer's dispatch on each call) around ~17 matmuls, and loses to Hugging
Face ``generate`` (benchmarks/generation.py). This module computes the *same layer math* straight from the
stage's modules and weights in ~30 calls per layer, with keys stored already rotated.

The math is megatron's, read from the modules (local layer spec):
- embedding: ``VocabParallelEmbedding`` rows of this TP rank (ids outside the slice give 0, then SUM
  all-reduce) + learned absolute positions when present;
- per layer (pre-norm): ``h += proj(attn(rope(q), rope(k), v)) + b_proj`` after ``input_layernorm``, then
  ``h += fc2(act(fc1(x) + b1)) + b2`` after ``pre_mlp_layernorm`` (gated: ``act(a) * (b + offset)`` over the
  two halves of fc1); row-parallel outputs are SUM all-reduced over TP before their bias;
- QKV layout ``[ng, (np/ng + 2) * hn]`` per TP rank (megatron's interleaved groups); RoPE as megatron's
  ``_apply_rotary_pos_emb_bshd`` (RoFormer, Su et al. 2021, Eq. 34: ``x cos + rotate_half(x) sin``) with
  megatron's own frequency table (``RotaryEmbedding.get_emb``); attention ``softmax(q k^T * scale) v``
  (Vaswani et al. 2017, Eq. 1) through torch SDPA with the scale megatron applies
  (``softmax_scale * layer scaling``), query head i reading KV group i // (np/ng);
- last stage: ``final_layernorm`` and the output layer (tied or not), logits all-gathered over TP.

Norm modules (torch ``RMSNorm`` / ``LayerNorm`` in the local spec) are called as they are. ``unsupported``
names the first feature outside this list (Transformer Engine modules, MoE, MLA, qk-norm, sliding windows,
sequence parallelism, output gates, KV groups split over TP, ...): the backend then uses megatron's own
forward.
Tests compare this forward with ``GPTModel.forward`` on the same weights (tests/e2e/test_generation.py).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F


def unsupported(model, tp_size: int) -> Optional[str]:
    """Why the lean forward cannot run ``model`` (None when it can)."""
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.identity_op import IdentityOp
    from megatron.core.transformer.mlp import MLP

    cfg = model.config
    flags = {
        "multi_latent_attention": False, "sequence_parallel": False, "fp32_residual_connection": False,
        "apply_residual_connection_post_layernorm": False, "num_moe_experts": None, "window_size": None,
        "attention_output_gate": False, "bias_activation_fusion": False, "use_te_activation_func": False,
        "activation_func_clamp_value": None, "rotary_interleaved": False, "mtp_num_layers": None,
        "virtual_pipeline_model_parallel_size": None, "qk_layernorm": False, "fp8": None, "fp4": None,
        "context_parallel_size": 1, "softmax_type": "vanilla", "experimental_attention_variant": None,
    }
    for name, ok in flags.items():
        if getattr(cfg, name, ok) != ok:
            return f"config.{name}={getattr(cfg, name)!r}"
    if model.position_embedding_type not in ("rope", "learned_absolute", "none"):
        return f"position_embedding_type={model.position_embedding_type!r}"
    if cfg.num_query_groups is not None and cfg.num_query_groups < tp_size:
        return "fewer KV groups than TP ranks"
    if model.pre_process and getattr(model.embedding, "num_tokentypes", 0):
        return "token-type embeddings"
    for layer in model.decoder.layers:
        attn, mlp = layer.self_attention, layer.mlp
        if not isinstance(getattr(attn, "core_attention", None), DotProductAttention):
            return f"core attention {type(getattr(attn, 'core_attention', None)).__name__}"
        linears = (type(attn.linear_qkv), type(attn.linear_proj))
        if linears != (ColumnParallelLinear, RowParallelLinear):
            return f"attention linears {type(attn.linear_qkv).__name__}"
        for norm in ("q_layernorm", "k_layernorm"):
            if not isinstance(getattr(attn, norm, None), (IdentityOp, type(None))):
                return norm
        if type(mlp) is not MLP or type(mlp.linear_fc1) is not ColumnParallelLinear:
            return f"mlp {type(mlp).__name__}"
        if not isinstance(layer.cross_attention, IdentityOp):
            return "cross attention"
        if type(layer.input_layernorm).__module__.startswith("megatron.core.extensions"):
            return "Transformer Engine norms"
    return None


def _weight(linear):
    return linear.weight, getattr(linear, "bias", None)


class LeanStage:
    """This rank's stage of a ``GPTModel`` as a plain function of its weights, with a KV cache of
    ``[max_batch, groups/tp, max_sequence, head_dim]`` per layer (keys rotated), allocated on first use."""

    def __init__(self, model, tp_group, tp_size: int, max_batch: int, max_sequence: int):
        reason = unsupported(model, tp_size)
        if reason is not None:
            raise ValueError(f"lean forward does not support this model: {reason}")
        self.model, self.tp_group, self.tp_size = model, tp_group, tp_size
        self.max_batch, self.max_sequence = max_batch, max_sequence
        cfg = model.config
        self.layers = []
        for layer in model.decoder.layers:
            attn, mlp = layer.self_attention, layer.mlp
            core = attn.core_attention
            np_ = attn.num_attention_heads_per_partition
            ng = attn.num_query_groups_per_partition
            self.layers.append(dict(
                norm1=layer.input_layernorm, qkv=_weight(attn.linear_qkv), proj=_weight(attn.linear_proj),
                norm2=layer.pre_mlp_layernorm, fc1=_weight(mlp.linear_fc1), fc2=_weight(mlp.linear_fc2),
                np=np_, ng=ng, hn=attn.hidden_size_per_attention_head,
                # megatron divides softmax_scale by the layer number under query-key layer scaling and
                # multiplies the scores back inside its softmax: the product is the scale applied
                scale=core.softmax_scale * (core.scale_mask_softmax.scale or 1.0),
            ))
        self.act = cfg.activation_func
        self.glu = cfg.gated_linear_unit
        self.glu_offset = float(getattr(cfg, "glu_linear_offset", 0.0) or 0.0)
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        self.cos = self.sin = None
        if model.position_embedding_type == "rope":
            emb = model.rotary_pos_emb.get_emb(max_sequence).to(self.device)  # [T, 1, 1, rot]
            emb = emb.view(emb.size(0), 1, emb.size(-1))  # [T, 1, rot]
            half = emb.size(-1) // 2
            self.cos = torch.cos(emb).to(self.dtype)  # [T, 1, rot]
            sin = torch.sin(emb).to(self.dtype)  # [T, 1, rot]
            # rotate_half(x) * sin == roll(x, half) * [-sin_1, sin_2] (negation is exact)
            self.sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)  # [T, 1, rot]
            self.rot = emb.size(-1)
        if model.pre_process:
            words = model.embedding.word_embeddings
            self.word = words.weight  # [V/tp, H]
            self.vocab_range = (words.vocab_start_index, words.vocab_end_index)
            self.pos_emb = model.embedding.position_embeddings if model.embedding.add_position_embedding \
                else None
        if model.post_process:
            self.final_norm = model.decoder.final_layernorm
            self.out_weight = model.shared_embedding_or_output_weight() \
                if model.share_embeddings_and_output_weights else model.output_layer.weight  # [V/tp, H]
            self.out_bias = getattr(model.output_layer, "bias", None)
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] = []

    # ------------------------------------------------------------------------------------------------------
    def _allocate(self) -> None:
        if self.cache:
            return
        for lay in self.layers:
            shape = (self.max_batch, lay["ng"], self.max_sequence, lay["hn"])
            self.cache.append((torch.empty(shape, dtype=self.dtype, device=self.device),
                               torch.empty(shape, dtype=self.dtype, device=self.device)))

    def release(self) -> None:
        """Drop the KV cache."""
        self.cache = []

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp_size > 1:
            dist.all_reduce(x, group=self.tp_group)
        return x

    def _embed(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """``ids``, ``pos`` ``[B, s]`` -> hidden ``[B, s, H]``."""
        if self.tp_size > 1:
            lo, hi = self.vocab_range
            outside = (ids < lo) | (ids >= hi)  # [B, s]
            h = F.embedding((ids - lo).masked_fill_(outside, 0), self.word)  # [B, s, H]
            h = self._reduce(h.masked_fill_(outside.unsqueeze(-1), 0.0))
        else:
            h = F.embedding(ids, self.word)  # [B, s, H]
        if self.pos_emb is not None:
            h = h + self.pos_emb(pos)
        return h

    def _rope(self, x: torch.Tensor, q0: int, q1: int) -> torch.Tensor:
        """``x [B, s, heads, hn]`` rotated at buffer positions ``[q0, q1)``."""
        cos, sin = self.cos[q0:q1], self.sin[q0:q1]  # [s, 1, rot]
        if self.rot == x.size(-1):
            return x * cos + x.roll(self.rot // 2, dims=-1) * sin
        t, rest = x[..., :self.rot], x[..., self.rot:]
        return torch.cat([t * cos + t.roll(self.rot // 2, dims=-1) * sin, rest], dim=-1)

    def forward(self, ids: torch.Tensor, pos: torch.Tensor, q0: int, q1: int,
                hidden: Optional[torch.Tensor], allowed: Optional[torch.Tensor]) -> torch.Tensor:
        """Positions ``[q0, q1)`` of a batch of ``B`` rows through this stage.

        ids, pos: [B, s] (first stage); hidden: [B, s, H] from the previous stage (other stages)
        allowed:  [B, 1, s, q1] bool, True = may attend (None: causal when s > 1, everything when s == 1)
        returns   [B, s, H] hidden states (not last stage) or logits [B, V] at position q1 - 1 (last stage)
        """
        self._allocate()
        h = self._embed(ids, pos) if self.model.pre_process else hidden  # [B, s, H]
        b, s = h.size(0), h.size(1)
        causal = allowed is None and s > 1
        if causal and q0 != 0:
            raise ValueError("a multi-token chunk after position 0 needs an explicit mask")
        for lay, (k_cache, v_cache) in zip(self.layers, self.cache):
            np_, ng, hn = lay["np"], lay["ng"], lay["hn"]
            x = lay["norm1"](h)  # [B, s, H]
            qkv = F.linear(x, *lay["qkv"]).view(b, s, ng, np_ // ng + 2, hn)  # [B, s, ng, np/ng + 2, hn]
            q = qkv[:, :, :, :-2].reshape(b, s, np_, hn)  # [B, s, np, hn]
            k, v = qkv[:, :, :, -2], qkv[:, :, :, -1]  # [B, s, ng, hn]
            if self.cos is not None:
                q, k = self._rope(q, q0, q1), self._rope(k, q0, q1)
            k_cache[:b, :, q0:q1] = k.transpose(1, 2)
            v_cache[:b, :, q0:q1] = v.transpose(1, 2)
            ctx = F.scaled_dot_product_attention(
                q.transpose(1, 2), k_cache[:b, :, :q1], v_cache[:b, :, :q1], attn_mask=allowed,
                is_causal=causal, scale=lay["scale"], enable_gqa=ng != np_)  # [B, np, s, hn]
            w, bias = lay["proj"]
            out = self._reduce(F.linear(ctx.transpose(1, 2).reshape(b, s, np_ * hn), w))  # [B, s, H]
            h = h + (out + bias if bias is not None else out)
            x = lay["norm2"](h)
            y = F.linear(x, *lay["fc1"])  # [B, s, F/tp] (x2 gated)
            if self.glu:
                a, g = torch.chunk(y, 2, dim=-1)
                y = self.act(a) * (g + self.glu_offset if self.glu_offset else g)
            else:
                y = self.act(y)
            w, bias = lay["fc2"]
            out = self._reduce(F.linear(y, w))  # [B, s, H]
            h = h + (out + bias if bias is not None else out)
        if not self.model.post_process:
            return h
        z = F.linear(self.final_norm(h[:, -1]), self.out_weight, self.out_bias)  # [B, V/tp]
        if self.tp_size > 1:
            parts = [torch.empty_like(z) for _ in range(self.tp_size)]
            dist.all_gather(parts, z.contiguous(), group=self.tp_group)
            z = torch.cat(parts, dim=-1)  # [B, V]
        return z
