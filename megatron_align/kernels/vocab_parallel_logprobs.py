"""Token log-probs (and entropy) from vocab-parallel logits without materializing a softmax.

Op: given this rank's logits slice ``x [N, V/tp]`` (any float dtype; fp32 accumulation), global target ids
``t [N]`` and a temperature ``T``, return ``log p(t) = z_t - logsumexp(z)`` with ``z = x / T`` and,
optionally, the entropy ``H = logsumexp(z) - E_p[z]`` (the softmax entropy, as
``-sum p log p = lse - sum p z``).

Forward (one pass over the logits): per row, this rank's streaming max / sum-exp (online softmax, Milakov &
Gimelshein 2018) gives a local log-sum-exp, the target's logit if the target id is local, and the local E[z]
for entropy; ``kernels.tp.combine_lse`` merges ranks with one MAX and one SUM all-reduce on [N]-sized tensors.
Only ``lse [N]`` (and ``E[z] [N]``) are saved; the input logits are neither copied nor modified.

Backward (no collective): with ``p_j = exp(z_j - lse)``,
    d log p(t) / d z_j = 1[j = t] - p_j
    d H / d z_j        = -p_j (z_j - E_p[z])
and ``d/dx = (d/dz) / T``, written slice by slice into the logits' gradient (the one [N, V/tp] tensor every
from-logits method must produce). Rows whose target equals ``ignore_index`` give 0 and a zero gradient.

Three faces (DESIGN.md, Kernels): Triton kernels below (CUDA; CPU under ``TRITON_INTERPRET=1`` in tests), a
row-chunked torch path that CPU runs use, and ``kernels.reference.token_logprobs`` for tests.
"""

from __future__ import annotations

import torch

from megatron_align.kernels import _cpu_pages, tp
from megatron_align.kernels._triton import choose_triton as _choose_triton

# CPU path: rows per chunk are chosen so that one fp32 [rows, V/tp] work buffer is about this many bytes
# (at most 1/64 of the fp32 logits' size, and at least 1 MiB).
DEFAULT_CHUNK_BYTES = 4 << 20
DEFAULT_BLOCK_V = 4096


# ----------------------------------------------------------------------------------------------------------
# Triton kernels (one program per row, streaming over vocabulary blocks of BLOCK_V)
# ----------------------------------------------------------------------------------------------------------

def _build_triton_kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def _fwd_kernel(x_ptr, stride_x, target_ptr, lse_ptr, tgt_logit_ptr, mean_z_ptr,
                    V_local, vocab_start, inv_temp,
                    WITH_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * stride_x
        # 1. streaming max m, sum-exp s and (for entropy) sum-exp-times-z sz over this rank's slice
        m = -float("inf")
        s = 0.0
        sz = 0.0
        for start in range(0, V_local, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            valid = cols < V_local
            z = tl.load(x_row + cols, mask=valid, other=-float("inf")).to(tl.float32) * inv_temp  # [BLOCK_V]
            new_m = tl.maximum(m, tl.max(z, axis=0))
            scale = tl.exp(m - new_m)
            e = tl.exp(z - new_m)  # 0 at masked columns
            s = s * scale + tl.sum(e, axis=0)
            if WITH_ENTROPY:
                sz = sz * scale + tl.sum(e * tl.where(e > 0.0, z, 0.0), axis=0)  # 0 * -inf -> 0
            m = new_m
        # 2. local log-sum-exp, local E[z]
        tl.store(lse_ptr + row, m + tl.log(s))
        if WITH_ENTROPY:
            tl.store(mean_z_ptr + row, sz / s)
        # 3. the target's scaled logit if this rank holds the target id, else 0
        local_t = tl.load(target_ptr + row) - vocab_start
        here = (local_t >= 0) & (local_t < V_local)
        safe_t = tl.where(here, local_t, 0)
        zt = tl.load(x_row + safe_t).to(tl.float32) * inv_temp
        tl.store(tgt_logit_ptr + row, tl.where(here, zt, 0.0))

    @triton.jit
    def _bwd_kernel(x_ptr, stride_x, grad_ptr, stride_g, target_ptr, lse_ptr, mean_z_ptr, g_lp_ptr, g_ent_ptr,
                    V_local, vocab_start, inv_temp,
                    WITH_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * stride_x
        g_row = grad_ptr + row * stride_g
        lse = tl.load(lse_ptr + row)
        g_lp = tl.load(g_lp_ptr + row)  # already 0 on ignored rows
        local_t = tl.load(target_ptr + row) - vocab_start
        if WITH_ENTROPY:
            g_ent = tl.load(g_ent_ptr + row)
            mean_z = tl.load(mean_z_ptr + row)
        for start in range(0, V_local, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            valid = cols < V_local
            z = tl.load(x_row + cols, mask=valid, other=-float("inf")).to(tl.float32) * inv_temp  # [BLOCK_V]
            p = tl.exp(z - lse)
            # d logp/dz = 1[j=t] - p ; dH/dz = -p (z - E[z])
            dz = tl.where(cols == local_t, g_lp, 0.0) - g_lp * p
            if WITH_ENTROPY:
                dz -= g_ent * p * (tl.where(p > 0.0, z, mean_z) - mean_z)  # 0 * -inf -> 0
            tl.store(g_row + cols, (dz * inv_temp).to(g_row.dtype.element_ty), mask=valid)

    return _fwd_kernel, _bwd_kernel


_KERNELS = None


def _kernels():
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = _build_triton_kernels()
    return _KERNELS


def _triton_forward(x, target, vocab_start, temperature, with_entropy, block_v):
    fwd, _ = _kernels()
    n, v_local = x.shape
    lse = torch.empty(n, device=x.device, dtype=torch.float32)
    tgt = torch.empty_like(lse)
    mean_z = torch.empty_like(lse) if with_entropy else lse  # placeholder pointer when unused
    if n:
        fwd[(n,)](x, x.stride(0), target, lse, tgt, mean_z, v_local, vocab_start, 1.0 / temperature,
                  WITH_ENTROPY=with_entropy, BLOCK_V=block_v)
    return lse, tgt, (mean_z if with_entropy else None)


def _triton_backward(x, target, lse, mean_z, g_lp, g_ent, vocab_start, temperature, block_v, out=None):
    _, bwd = _kernels()
    n, v_local = x.shape
    grad = torch.empty_like(x) if out is None else out  # each program reads a block before writing it
    with_entropy = g_ent is not None
    if n:
        bwd[(n,)](x, x.stride(0), grad, grad.stride(0), target, lse,
                  mean_z if with_entropy else lse, g_lp, g_ent if with_entropy else g_lp,
                  v_local, vocab_start, 1.0 / temperature, WITH_ENTROPY=with_entropy, BLOCK_V=block_v)
    return grad


# ----------------------------------------------------------------------------------------------------------
# Row-chunked torch path (CPU): same algorithm, temporaries bounded by chunk_bytes
# ----------------------------------------------------------------------------------------------------------

def _rows_per_chunk(v_local: int, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // max(1, 4 * v_local))


class _Chunks:
    """Row chunks of x [N, V/tp] plus named fp32 work buffers [rows, V/tp], each allocated once per call and
    reused for every chunk (a multi-MiB temporary per chunk would cost a fresh mmap + page faults each time on
    CPU)."""

    def __init__(self, x: torch.Tensor, chunk_bytes: int):
        self.x = x
        self.n, self.v = x.shape
        self.step = min(self.n, _rows_per_chunk(self.v, chunk_bytes))
        self._bufs: dict[str, torch.Tensor] = {}

    def __iter__(self):
        for i in range(0, self.n, self.step):
            yield i, min(i + self.step, self.n)

    def buf(self, name: str, rows: int, cols: int | None = None) -> torch.Tensor:
        if name not in self._bufs:
            self._bufs[name] = torch.empty((self.step, cols or self.v), dtype=torch.float32,
                                           device=self.x.device)
        return self._bufs[name][:rows]

    def z(self, i: int, j: int, inv_t: float, own: bool) -> torch.Tensor:
        """z = x[i:j] / T in fp32: the input view itself when no conversion is needed and the caller will not
        write to it (``own=False``), else a copy in the "z" buffer."""
        rows = self.x[i:j]
        if not own and rows.dtype == torch.float32 and inv_t == 1.0:
            return rows
        z = self.buf("z", j - i)
        z.copy_(rows)
        return z.mul_(inv_t) if inv_t != 1.0 else z


def _torch_forward(x, target, vocab_start, temperature, with_entropy, chunk_bytes):
    n, v_local = x.shape
    inv_t = 1.0 / temperature
    lse = torch.empty(n, device=x.device, dtype=torch.float32)
    mean_z = torch.empty_like(lse) if with_entropy else None
    # 1. the target's scaled logit (gathered from the input; 0 when another rank holds it)
    local_t = target - vocab_start
    here = (local_t >= 0) & (local_t < v_local)
    tgt = x.gather(1, torch.where(here, local_t, 0).unsqueeze(1)).squeeze(1).float() * inv_t
    tgt = torch.where(here, tgt, 0.0)
    if n == 0:
        return lse, tgt, mean_z
    # 2. per chunk of rows: lse = m + log sum exp(z - m); the input is only read
    ch = _Chunks(x, chunk_bytes)
    for i, j in ch:
        z = ch.z(i, j, inv_t, own=with_entropy)  # [r, V/tp]
        if with_entropy:
            m = ch.buf("max", j - i, 1)
            e = ch.buf("exp", j - i)
            torch.amax(z, dim=1, keepdim=True, out=m)
            torch.sub(z, m, out=e).exp_()
            total = e.sum(dim=1)  # [r]
            lse[i:j] = total.log() + m.squeeze(1)
            z.clamp_(min=torch.finfo(torch.float32).min)  # e = 0 where z = -inf: contributes 0, not nan
            mean_z[i:j] = torch.linalg.vecdot(e, z) / total
        else:
            # aten's fused log-softmax (one vectorized kernel, the chunk stays in cache) gives
            # ls = z - m - log s; at the row's argmax ls is exactly -log s, so lse = z[argmax] - max(ls)
            ls = ch.buf("logsm", j - i)
            torch.ops.aten._log_softmax.out(z, 1, False, out=ls)
            top, at = ls.max(dim=1, keepdim=True)  # [r, 1]
            part = (z.gather(1, at) - top).squeeze(1)  # [r]
            odd = part.isnan()  # rows of only -inf (lse -inf) or with a NaN (lse NaN): logsumexp decides
            if odd.any():
                part[odd] = torch.logsumexp(z[odd], dim=1)
            lse[i:j] = part
    return lse, tgt, mean_z


def _torch_backward(x, target, lse, local_lse, mean_z, g_lp, g_ent, vocab_start, temperature, chunk_bytes,
                    out=None):
    n, v_local = x.shape
    grad = _cpu_pages.empty_like(x, reuse=True) if out is None else out  # every element is written below
    if n == 0:
        return grad
    inv_t = 1.0 / temperature
    local_t = target - vocab_start
    here = (local_t >= 0) & (local_t < v_local)
    in_place = grad.dtype == torch.float32  # work directly in the gradient's own storage
    ch = _Chunks(x, chunk_bytes)
    # p_j = exp(z_j - lse) = softmax_local(z)_j * exp(lse_local - lse): the local softmax is one fused pass
    rescale = torch.exp(local_lse - lse)  # [N], 1 at TP=1
    g_t = g_lp * inv_t  # [N]: d/dx = (d/dz) / T, folded into the per-row scale
    for i, j in ch:
        work = grad[i:j] if in_place else ch.buf("work", j - i)
        rows = here[i:j].nonzero().squeeze(1)  # rows whose target id this rank holds
        if g_ent is not None:
            # dz = -g_lp p - g_ent p (z - E[z])  =  -p * (g_ent (z - E[z]) + g_lp); 0 where p = 0
            z = ch.z(i, j, inv_t, own=True)
            p = ch.buf("p", j - i)
            torch.sub(z, lse[i:j].unsqueeze(1), out=p).exp_()
            z.clamp_(min=torch.finfo(torch.float32).min)
            torch.sub(z, mean_z[i:j].unsqueeze(1), out=work)
            work.mul_(g_ent[i:j].unsqueeze(1)).add_(g_lp[i:j].unsqueeze(1)).mul_(p).mul_(-inv_t)
        else:
            # the local softmax in one fused pass; with inplace_backward (grad is x) it overwrites the logits
            # row by row, which aten's softmax allows (each row is read before it is written)
            if work.data_ptr() == x[i:j].data_ptr():
                z = work.mul_(inv_t) if inv_t != 1.0 else work
            else:
                z = ch.z(i, j, inv_t, own=False)
            torch.ops.aten._softmax.out(z, 1, False, out=work)
            work.mul_((-g_t[i:j] * rescale[i:j]).unsqueeze(1))  # -g_lp p / T
        # + g_lp / T at the target column
        if rows.numel():
            work.index_put_((rows, local_t[i:j][rows]), g_t[i:j][rows], accumulate=True)
        if not in_place:
            grad[i:j].copy_(work)
    return grad

# ----------------------------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------------------------

class _VocabParallelLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, target, group, temperature, ignore_index, with_entropy, use_triton, block, inplace):
        # x: [N, V/tp]; target: [N] global ids
        vocab_start = tp.vocab_start(x.shape[1], group)
        keep = target != ignore_index  # [N]
        if use_triton:
            lse, tgt, mean_z = _triton_forward(x, target, vocab_start, temperature, with_entropy, block)
        else:
            lse, tgt, mean_z = _torch_forward(x, target, vocab_start, temperature, with_entropy, block)
        local_lse = lse
        lse, tgt, mean_z = tp.combine_lse(lse, tgt, mean_z, group)
        logp = torch.where(keep, tgt - lse, 0.0)  # [N]
        ent = torch.where(keep, lse - mean_z, 0.0) if with_entropy else logp.new_empty(0)
        ctx.save_for_backward(x, target, keep, lse, local_lse, mean_z if with_entropy else lse)
        ctx.cfg = (vocab_start, temperature, with_entropy, use_triton, block, inplace)
        if not with_entropy:
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        x, target, keep, lse, local_lse, mean_z = ctx.saved_tensors
        vocab_start, temperature, with_entropy, use_triton, block, inplace = ctx.cfg
        out = x if inplace else None  # the gradient takes over the logits' storage (bumps its version)
        g_lp = torch.where(keep, g_lp.float(), 0.0).contiguous()
        if with_entropy and g_ent is not None:
            g_ent = torch.where(keep, g_ent.float(), 0.0).contiguous()
        else:
            g_ent, mean_z = None, None
        if use_triton:
            grad = _triton_backward(x, target, lse, mean_z, g_lp, g_ent, vocab_start, temperature, block, out)
        else:
            grad = _torch_backward(x, target, lse, local_lse, mean_z, g_lp, g_ent, vocab_start, temperature,
                                   block, out)
        return grad, None, None, None, None, None, None, None, None


def vocab_parallel_logprobs(logits: torch.Tensor, target: torch.Tensor, *, group=None,
                            temperature: float = 1.0, ignore_index: int = -100, return_entropy: bool = False,
                            backend: str = "auto", block: int | None = None,
                            inplace_backward: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log p(target) (and entropy) from this rank's vocabulary slice of the logits.

    logits: [N, V/tp] float (fp32/bf16/fp16), last dim contiguous; this rank holds ids
            [rank * V/tp, (rank + 1) * V/tp) of ``group``
    target: [N] int64 global ids (``ignore_index`` marks ignored rows)
    group:  tensor-parallel process group (None: one rank)
    backend: "triton", "torch" or "auto" (CUDA -> triton, CPU -> torch)
    block:  Triton BLOCK_V (power of two) or the torch path's bytes per fp32 chunk temporary
    inplace_backward: write the gradient into the logits' own storage instead of a new tensor (saves the
            [N, V/tp] gradient allocation, as megatron's cross entropy does; forward never modifies the
            logits). Only when nothing else needs the logits after this op's backward; a later backward that
            saved them fails loudly (autograd's version check) rather than silently.
    returns (logprobs [N] fp32, entropy [N] fp32 or None)
    """
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"logits [N, V/tp] and target [N] expected, got {tuple(logits.shape)} and "
                         f"{tuple(target.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    use_triton = _choose_triton(backend, logits)
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    target = target.to(torch.int64).contiguous()
    if block is None:
        block = DEFAULT_BLOCK_V if use_triton else \
            min(DEFAULT_CHUNK_BYTES, max(1 << 20, logits.numel() * 4 // 64))
    logp, ent = _VocabParallelLogprobs.apply(logits, target, group, float(temperature), int(ignore_index),
                                             bool(return_entropy), use_triton, int(block),
                                             bool(inplace_backward))
    return logp, (ent if return_entropy else None)
