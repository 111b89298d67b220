"""Fused LM head + token log-probs: log p(target) (and entropy) from hidden states and the vocab-parallel
output weight, forward and backward, without ever holding the ``[N, V/tp]`` logits.

Op (this rank holds vocabulary rows ``[vocab_start, vocab_start + V/tp)`` of the output weight):
    z = (h @ W^T + b) / T                         # never materialized beyond one [chunk_n, chunk_v] tile
    log p(t) = z_t - logsumexp(z)                 # softmax over the *global* vocabulary
    H = logsumexp(z) - E_p[z]                     # softmax entropy, since -sum p log p = lse - sum p z
This is the "cut cross-entropy" idea (Wijmans et al. 2024, "Cut Your Losses in Large-Vocabulary Language
Models"): stream over vocabulary blocks, keeping only per-row statistics.

Forward, per row: a streaming max / sum-exp over vocabulary chunks (online softmax, Milakov & Gimelshein 2018,
Alg. 3) gives this rank's log-sum-exp, E[z] under the local softmax (for entropy) and the target's logit when
the target id is local; ``kernels.tp.combine_lse`` merges ranks (one MAX + one SUM all-reduce on [N] tensors).
Saved for backward: hidden, weight, bias, target, lse [N], E[z] [N] -- chunk logits are recomputed.

Backward (no collective until the last line), with p_j = exp(z_j - lse):
    d log p(t)/dz_j = 1[j = t] - p_j ;  dH/dz_j = -p_j (z_j - E[z])
    grad_z = (g_lp (onehot - p) - g_H p (z - E[z])) / T       # [chunk_n, chunk_v] tile
    grad_h += grad_z @ W_chunk ; grad_W_chunk += grad_z^T @ h_chunk ; grad_b_chunk += grad_z.sum(0)
then grad_h is SUM all-reduced over the TP group (megatron's ColumnParallelLinear does this for its replicated
input), in the input dtype, as megatron does.

Backends:
- ``torch`` (CPU runs): vocabulary-outer / rows-inner loop of fp32 matmuls. Defaults chunk_n=512,
  chunk_v=4096: the largest temporaries are two fp32 [512, 4096] tiles (8 MiB each) -- 3.2 % of an fp32
  [N, V] for N=2048, V=32000 and 0.2 % for N=8192, V=128k -- plus, for bf16/fp16 inputs only, fp32 copies of
  hidden [N, H] and of one weight chunk [4096, H] and an fp32 grad accumulator [N, H] (+ [4096, H] for W).
- ``triton``: forward fully in Triton (grid = row blocks x vocabulary splits, tl.dot tiles, online lse; the
  few splits are merged in torch on [splits, N]). Backward: a Triton kernel recomputes each [chunk_n, chunk_v]
  tile of logits with tl.dot and writes grad_z (input dtype); the two gradient matmuls per tile run in torch
  (cuBLAS), accumulating in fp32. A fully fused backward would need atomics over [V, H] or [N, H]; the
  split keeps grad_z tiles small while the heavy matmuls stay on tuned GEMMs.
  (Triton kernels live in kernels/_fused_linear_triton.py.)
- ``auto``: CUDA tensors -> triton, CPU -> torch.
Rows whose target equals ``ignore_index`` give 0 and no gradient. Nothing here reads megatron's global state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_align.kernels import _cpu_pages, tp
from megatron_align.kernels._triton import choose_triton as _choose_triton

# torch path: a [CHUNK_N, CHUNK_V] fp32 tile is 8 MiB (see the module docstring for the budget).
TORCH_CHUNK_N = 512
TORCH_CHUNK_V = 4096
# triton path: grad_z tiles of [2048, 4096] (16 MiB bf16) feed cuBLAS matmuls big enough to run at speed.
TRITON_CHUNK_N = 2048
TRITON_CHUNK_V = 4096
TRITON_BLOCKS = (64, 128, 64)  # BLOCK_N, BLOCK_V, BLOCK_H (untuned defaults; each >= 16 for tl.dot)


@dataclass(frozen=True)
class _Cfg:
    use_triton: bool
    chunk_n: int
    chunk_v: int
    blocks: tuple
    num_splits: int | None
    main_grad_owner: torch.Tensor | None = None
    """The weight parameter whose fp32 ``main_grad`` receives grad_W (megatron's gradient accumulation
    fusion), or None: grad_W is returned as a new tensor."""


# ----------------------------------------------------------------------------------------------------------
# torch path
# ----------------------------------------------------------------------------------------------------------

def _logits_tile(h_c, w_c, b_c, inv_t):
    """z = (h_c @ w_c^T + b_c) * inv_t in fp32: [cn, H] x [cv, H] -> [cn, cv]."""
    z = torch.mm(h_c, w_c.t()) if b_c is None else torch.addmm(b_c, h_c, w_c.t())
    if inv_t != 1.0:
        z.mul_(inv_t)
    return z


def _torch_forward(h, w, b, tloc, inv_t, with_entropy, chunk_n, chunk_v):
    """Local statistics over this rank's vocabulary: (lse [N], target logit [N], E[z] [N] or None)."""
    n, v = h.shape[0], w.shape[0]
    h32 = h.float()  # [N, H]; a no-op for fp32
    m = torch.full((n,), float("-inf"), device=h.device)  # running max
    s = torch.zeros(n, device=h.device)  # running sum exp(z - m)
    sz = torch.zeros(n, device=h.device) if with_entropy else None  # running sum exp(z - m) * z
    tgt = torch.zeros(n, device=h.device)
    for j0 in range(0, v, chunk_v):
        j1 = min(j0 + chunk_v, v)
        w32 = w[j0:j1].float()  # [cv, H]
        b32 = None if b is None else b[j0:j1].float()
        in_chunk = (tloc >= j0) & (tloc < j1)  # [N]
        for i0 in range(0, n, chunk_n):
            i1 = min(i0 + chunk_n, n)
            z = _logits_tile(h32[i0:i1], w32, b32, inv_t)  # [cn, cv]
            rows = in_chunk[i0:i1].nonzero().squeeze(1)
            if rows.numel():
                tgt[i0 + rows] = z[rows, tloc[i0 + rows] - j0]
            # online softmax update (Milakov & Gimelshein 2018, Alg. 3)
            m_old = m[i0:i1]
            m_new = torch.maximum(m_old, z.amax(dim=1))  # [cn]
            alpha = torch.exp(m_old - m_new)  # 0 on the first chunk
            z.sub_(m_new.unsqueeze(1))  # z - m_new
            if with_entropy:
                e = torch.exp(z)  # [cn, cv]
                se = e.sum(dim=1)
                # sum_j e_j z_j = sum_j e_j (z_j - m) + m sum_j e_j
                sz[i0:i1] = sz[i0:i1] * alpha + torch.linalg.vecdot(e, z) + m_new * se
                del e
            else:
                se = z.exp_().sum(dim=1)
            s[i0:i1] = s[i0:i1] * alpha + se
            m[i0:i1] = m_new
    lse = m + torch.log(s)
    return lse, tgt, (sz / s if with_entropy else None)


def _torch_grad_z(h_c, w_c, b_c, tloc_c, j0, lse_c, mz_c, glp_c, gent_c, inv_t):
    """grad_z tile [cn, cv] fp32 = (g_lp (onehot - p) - g_H p (z - E[z])) / T, built in the logits' tile."""
    z = _logits_tile(h_c, w_c, b_c, inv_t)  # [cn, cv]
    if gent_c is not None:
        p = torch.exp(z - lse_c.unsqueeze(1))
        # -g_lp p - g_H p (z - E[z]) = -p (g_H (z - E[z]) + g_lp)
        z.sub_(mz_c.unsqueeze(1)).mul_(gent_c.unsqueeze(1)).add_(glp_c.unsqueeze(1)).mul_(p).neg_()
        del p
    else:
        z.sub_(lse_c.unsqueeze(1)).exp_().mul_(-glp_c.unsqueeze(1))  # -g_lp p
    local = tloc_c - j0
    rows = ((local >= 0) & (local < z.shape[1])).nonzero().squeeze(1)
    if rows.numel():
        z.index_put_((rows, local[rows]), glp_c[rows], accumulate=True)  # + g_lp at the target
    if inv_t != 1.0:
        z.mul_(inv_t)
    return z


# ----------------------------------------------------------------------------------------------------------
# backward loop shared by both backends: vocabulary chunks outer, row chunks inner
# ----------------------------------------------------------------------------------------------------------

def _backward(h, w, b, tloc, lse, mz, g_lp, g_ent, inv_t, needs, cfg):
    """(grad_h fp32 [N, H] or None, grad_W [V/tp, H] or None, grad_b [V/tp] or None); grad_h not reduced.
    With ``cfg.main_grad_owner`` grad_W is added to its ``main_grad`` instead and None is returned for it."""
    need_h, need_w, need_b = needs
    n, v = h.shape[0], w.shape[0]
    mm_dtype = h.dtype if cfg.use_triton else torch.float32  # triton: gz in input dtype for tensor cores
    h_mm = h.to(mm_dtype)  # [N, H]
    gh = torch.zeros((n, h.shape[1]), dtype=torch.float32, device=h.device) if need_h else None
    main_grad = None if cfg.main_grad_owner is None else cfg.main_grad_owner.main_grad  # [V/tp, H]
    gw = None if not need_w or main_grad is not None else _cpu_pages.empty_like(w)
    gb = torch.empty_like(b) if need_b else None
    if cfg.use_triton:
        from megatron_align.kernels._fused_linear_triton import grad_z_tile
    for j0 in range(0, v, cfg.chunk_v):
        j1 = min(j0 + cfg.chunk_v, v)
        w_mm = w[j0:j1].to(mm_dtype)  # [cv, H]
        b_mm = None if b is None else b[j0:j1].float()
        # accumulate grad_W / grad_b of this chunk in fp32: directly in the output when it is fp32
        gw_acc = None
        if need_w:
            out_w = (gw if main_grad is None else main_grad)[j0:j1]  # [cv, H]
            if out_w.dtype == torch.float32:
                gw_acc = out_w if main_grad is not None else out_w.zero_()  # main_grad: += onto its contents
            else:
                gw_acc = torch.zeros((j1 - j0, w.shape[1]), device=w.device)
        gb_acc = torch.zeros(j1 - j0, device=w.device) if need_b else None
        for i0 in range(0, n, cfg.chunk_n):
            i1 = min(i0 + cfg.chunk_n, n)
            args = (tloc[i0:i1], j0, lse[i0:i1], None if mz is None else mz[i0:i1], g_lp[i0:i1],
                    None if g_ent is None else g_ent[i0:i1], inv_t)
            if cfg.use_triton:
                gz = grad_z_tile(h[i0:i1], w[j0:j1], None if b is None else b[j0:j1], *args,
                                 out_dtype=mm_dtype, blocks=cfg.blocks)
            else:
                gz = _torch_grad_z(h_mm[i0:i1], w_mm, b_mm, *args)  # [cn, cv] fp32
            if need_h:
                _acc_mm(gh[i0:i1], gz, w_mm)  # += [cn, cv] @ [cv, H]
            if need_w:
                _acc_mm(gw_acc, gz.t(), h_mm[i0:i1])  # += [cv, cn] @ [cn, H]
            if need_b:
                gb_acc += gz.sum(dim=0, dtype=torch.float32)
            del gz
        if need_w and gw_acc.data_ptr() != out_w.data_ptr():  # a low-precision output: one rounding
            if main_grad is not None:
                out_w.add_(gw_acc)
            else:
                out_w.copy_(gw_acc)
        if need_b:
            gb[j0:j1].copy_(gb_acc)
    return gh, gw, gb


def _acc_mm(acc, a, b):
    """acc (fp32) += a @ b; in place when the operands are fp32, else via one input-dtype product."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    else:
        acc.add_(torch.mm(a, b))


# ----------------------------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------------------------

class _FusedLinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, group, temperature, ignore_index, with_entropy, cfg):
        # hidden: [N, H]; weight: [V/tp, H]; bias: [V/tp] or None; target: [N] global ids
        v_local = weight.shape[0]
        vocab_start = tp.vocab_start(v_local, group)
        keep = target != ignore_index  # [N]
        local = target - vocab_start
        tloc = torch.where(keep & (local >= 0) & (local < v_local), local, -1)  # [N], -1: not held here
        inv_t = 1.0 / temperature
        if cfg.use_triton:
            from megatron_align.kernels._fused_linear_triton import forward_stats

            lse, tgt, mz = forward_stats(hidden, weight, bias, tloc, inv_t, with_entropy, cfg.blocks,
                                         cfg.num_splits)
        else:
            lse, tgt, mz = _torch_forward(hidden, weight, bias, tloc, inv_t, with_entropy, cfg.chunk_n,
                                          cfg.chunk_v)
        lse, tgt, mz = tp.combine_lse(lse, tgt, mz, group)
        logp = torch.where(keep, tgt - lse, 0.0)  # [N]
        ent = torch.where(keep, lse - mz, 0.0) if with_entropy else logp.new_empty(0)
        ctx.save_for_backward(hidden, weight, bias, tloc, keep, lse, mz)
        ctx.cfg = (group, inv_t, cfg)
        if not with_entropy:
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lp, g_ent):
        hidden, weight, bias, tloc, keep, lse, mz = ctx.saved_tensors
        group, inv_t, cfg = ctx.cfg
        needs = ctx.needs_input_grad[:3]
        if not any(needs):
            return (None,) * 9
        g_lp = torch.where(keep, g_lp.float(), 0.0).contiguous()  # [N]
        if mz is not None and g_ent is not None and g_ent.numel():
            g_ent = torch.where(keep, g_ent.float(), 0.0).contiguous()
        else:
            g_ent = None
        gh, gw, gb = _backward(hidden, weight, bias, tloc, lse, mz, g_lp, g_ent, inv_t, needs, cfg)
        if gh is not None:
            gh = tp.all_reduce_grad(gh.to(hidden.dtype), group)  # replicated input: SUM over TP ranks
        owner = cfg.main_grad_owner
        if needs[1] and owner is not None and hasattr(owner, "grad_added_to_main_grad"):
            # megatron DDP's protocol: its grad hook must still run (it skips adding .grad to main_grad when
            # this flag is set), so hand autograd a weight-shaped placeholder. A weight with a second use on
            # this stage (megatron marks a tied embedding ``zero_out_wgrad``) gets zeros: autograd sums the
            # placeholder with the other use's gradient and the hook then adds that sum to main_grad
            owner.grad_added_to_main_grad = True
            make = torch.zeros if getattr(owner, "zero_out_wgrad", False) else torch.empty
            gw = make(weight.shape, dtype=weight.dtype, device=weight.device)
        return gh, gw, gb, None, None, None, None, None, None


def fused_linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, *, group=None,
                          bias: torch.Tensor | None = None, temperature: float = 1.0,
                          ignore_index: int = -100, return_entropy: bool = False, backend: str = "auto",
                          chunk_n: int | None = None, chunk_v: int | None = None,
                          blocks: tuple[int, int, int] | None = None, num_splits: int | None = None,
                          accumulate_into_main_grad: bool = False
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log p(target) (and entropy) of ``softmax((hidden @ weight^T + bias) / T)`` over the global
    vocabulary, without materializing the logits.

    hidden: [N, H] float (fp32/bf16/fp16), replicated across the TP group
    weight: [V/tp, H] same dtype; this rank's rows [rank * V/tp, (rank + 1) * V/tp) of the output layer
    target: [N] int64 global ids (``ignore_index`` marks ignored rows)
    bias:   [V/tp] or None; group: TP process group (None: one rank)
    backend: "auto" (CUDA -> triton, CPU -> torch), "torch" or "triton" (CPU needs TRITON_INTERPRET=1)
    chunk_n, chunk_v: row / vocabulary chunk of the torch path and of the triton backward's grad_z tiles
    blocks: triton (BLOCK_N, BLOCK_V, BLOCK_H), powers of two >= 16; num_splits: triton forward vocabulary
            splits (default: enough programs to fill the GPU, 1 under the interpreter)
    accumulate_into_main_grad: add grad_W to ``weight.main_grad`` ([V/tp, H], fp32 as megatron's DDP
            allocates it) instead of returning it, as megatron's ``gradient_accumulation_fusion`` does: no
            [V/tp, H] gradient is allocated. ``weight.grad`` stays None, or, when the weight carries megatron
            DDP's ``grad_added_to_main_grad`` flag, the flag is set and an unwritten placeholder is returned
            (zeros when megatron marked the weight ``zero_out_wgrad``, as it does for an embedding tied to the
            output layer on one stage: DDP's hook then adds the embedding's own gradient to main_grad).
    returns (logprobs [N] fp32, entropy [N] fp32 or None)
    """
    if accumulate_into_main_grad and getattr(weight, "main_grad", None) is None:
        raise ValueError("accumulate_into_main_grad=True needs weight.main_grad (megatron DDP's fp32 "
                         "gradient buffer)")
    if accumulate_into_main_grad and weight.main_grad.shape != weight.shape:
        raise ValueError(f"weight.main_grad {tuple(weight.main_grad.shape)} does not match weight "
                         f"{tuple(weight.shape)}")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden [N, H] and weight [V/tp, H] expected, got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if target.shape != hidden.shape[:1]:
        raise ValueError(f"target [N] expected for hidden {tuple(hidden.shape)}, got {tuple(target.shape)}")
    if hidden.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype):
        raise ValueError(f"hidden, weight (and bias) must share a dtype, got {hidden.dtype}, {weight.dtype}"
                         + ("" if bias is None else f", {bias.dtype}"))
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias [V/tp] expected, got {tuple(bias.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    use_triton = _choose_triton(backend, hidden)
    cn = chunk_n or (TRITON_CHUNK_N if use_triton else TORCH_CHUNK_N)
    cv = chunk_v or (TRITON_CHUNK_V if use_triton else TORCH_CHUNK_V)
    if not use_triton and chunk_n is None:  # fp32 tiles of at most 1/64 of the fp32 logits (>= 1 MiB)
        tile_bytes = max(1 << 20, hidden.shape[0] * weight.shape[0] * 4 // 64)
        cn = max(16, min(cn, tile_bytes // (4 * min(cv, weight.shape[0]))))
    blocks = tuple(blocks or TRITON_BLOCKS)
    if use_triton and any(x < 16 or x & (x - 1) for x in blocks):
        raise ValueError(f"triton blocks must be powers of two >= 16 (tl.dot), got {blocks}")
    cfg = _Cfg(use_triton, int(cn), int(cv), blocks, num_splits,
               main_grad_owner=weight if accumulate_into_main_grad else None)
    hidden, weight = hidden.contiguous(), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    target = target.to(torch.int64).contiguous()
    logp, ent = _FusedLinearLogprobs.apply(hidden, weight, bias, target, group, float(temperature),
                                           int(ignore_index), bool(return_entropy), cfg)
    return logp, (ent if return_entropy else None)
