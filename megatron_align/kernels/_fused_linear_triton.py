"""Triton kernels of the fused LM-head log-probs (the op and its math: kernels/fused_linear_logprobs.py).

- ``_fwd_kernel``: grid = (row blocks, vocabulary splits). Each program streams over the BLOCK_V-wide
  vocabulary blocks of its split; each logits tile [BLOCK_N, BLOCK_V] = sum over BLOCK_H slices of
  tl.dot(h [BLOCK_N, BLOCK_H], W^T [BLOCK_H, BLOCK_V]) with an fp32 accumulator, then an online max / sum-exp
  update (Milakov & Gimelshein 2018, Alg. 3), E[z] and the target logit. Per split it writes lse, E[z] and the
  target logit ([splits, N]); ``forward_stats`` merges the splits like kernels.tp.combine_lse merges ranks.
- ``_grad_z_kernel``: grid = tiles of one [chunk_n, chunk_v] chunk; recomputes the logits tile with tl.dot and
  writes grad_z = (g_lp (onehot - p) - g_H p (z - E[z])) / T in the input dtype. The gradient matmuls are done
  by the caller (torch / cuBLAS).

Interpreter note (TRITON_INTERPRET=1, Triton 3.8): ``tl.dot`` on bf16 operands multiplies the raw uint16 bit
patterns (numpy has no bf16), so under the interpreter bf16 tiles are upcast to fp32 before tl.dot
(``UPCAST``); products of bf16 values are exact in fp32, so this matches the GPU's bf16 dot with fp32
accumulation up to summation order. tl.dot also needs every block dim >= 16.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from megatron_align.kernels._triton import interpreting


@triton.jit
def _logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, row_ok, col_ok, H, stride_h, stride_w, inv_t,
                 HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    # z = (h @ W^T + b) / T for rows x cols: [BLOCK_N, BLOCK_V] fp32
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    h_rows = h_ptr + rows.to(tl.int64)[:, None] * stride_h  # int64: V/tp * H may exceed 2^31
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_w
    for k0 in range(0, H, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)
        k_ok = ks < H
        hb = tl.load(h_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # [BN, BH]
        wb = tl.load(w_rows + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)  # [BV, BH]
        if UPCAST:
            hb = hb.to(tl.float32)
            wb = wb.to(tl.float32)
        acc = tl.dot(hb, tl.trans(wb), acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    return acc * inv_t

@triton.jit
def _fwd_kernel(h_ptr, w_ptr, b_ptr, tloc_ptr, lse_ptr, mz_ptr, tgt_ptr, N, V, H, stride_h, stride_w,
                v_per_split, inv_t, HAS_BIAS: tl.constexpr, WITH_ENTROPY: tl.constexpr,
                UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    t_loc = tl.load(tloc_ptr + rows, mask=row_ok, other=-1)  # [BLOCK_N], -1: target not on this rank
    m = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)  # running max
    s = tl.zeros([BLOCK_N], dtype=tl.float32)  # running sum exp(z - m)
    sz = tl.zeros([BLOCK_N], dtype=tl.float32)  # running sum exp(z - m) z
    zt = tl.zeros([BLOCK_N], dtype=tl.float32)  # target logit
    v_lo = split * v_per_split
    v_hi = tl.minimum(v_lo + v_per_split, V)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < v_hi
        z = _logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, row_ok, col_ok, H, stride_h, stride_w, inv_t,
                         HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)
        z = tl.where(col_ok[None, :], z, float("-inf"))
        is_t = (cols[None, :] == t_loc[:, None]) & col_ok[None, :]
        zt += tl.sum(tl.where(is_t, z, 0.0), axis=1)
        m_new = tl.maximum(m, tl.max(z, axis=1))  # finite: every block has a valid column
        alpha = tl.exp(m - m_new)
        e = tl.exp(z - m_new[:, None])  # 0 on invalid columns
        s = s * alpha + tl.sum(e, axis=1)
        if WITH_ENTROPY:
            sz = sz * alpha + tl.sum(e * tl.where(col_ok[None, :], z, 0.0), axis=1)
        m = m_new
    out = split * N + rows
    tl.store(lse_ptr + out, m + tl.log(s), mask=row_ok)
    tl.store(tgt_ptr + out, zt, mask=row_ok)
    if WITH_ENTROPY:
        tl.store(mz_ptr + out, sz / s, mask=row_ok)

@triton.jit
def _grad_z_kernel(h_ptr, w_ptr, b_ptr, tloc_ptr, lse_ptr, mz_ptr, glp_ptr, gent_ptr, gz_ptr,
                   N, V, H, stride_h, stride_w, stride_gz, col_offset, inv_t,
                   HAS_BIAS: tl.constexpr, WITH_ENTROPY: tl.constexpr, UPCAST: tl.constexpr,
                   PRECISION: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < N
    col_ok = cols < V
    z = _logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, row_ok, col_ok, H, stride_h, stride_w, inv_t,
                     HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H)  # [BLOCK_N, BLOCK_V]
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    g_lp = tl.load(glp_ptr + rows, mask=row_ok, other=0.0)  # 0 on ignored rows
    t_loc = tl.load(tloc_ptr + rows, mask=row_ok, other=-1) - col_offset
    p = tl.exp(z - lse[:, None])
    # d logp/dz = 1[j=t] - p ; dH/dz = -p (z - E[z])
    gz = tl.where(cols[None, :] == t_loc[:, None], g_lp[:, None], 0.0) - g_lp[:, None] * p
    if WITH_ENTROPY:
        g_ent = tl.load(gent_ptr + rows, mask=row_ok, other=0.0)
        mz = tl.load(mz_ptr + rows, mask=row_ok, other=0.0)
        gz -= g_ent[:, None] * p * (z - mz[:, None])
    gz = gz * inv_t
    tl.store(gz_ptr + rows.to(tl.int64)[:, None] * stride_gz + cols[None, :], gz.to(gz_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])



def _dot_flags(dtype: torch.dtype) -> tuple[bool, str]:
    """(UPCAST, PRECISION): see the module docstring. fp32 tiles follow torch's TF32 switch for matmuls
    ("ieee" unless torch.backends.cuda.matmul.allow_tf32); other dtypes get Triton's default ("tf32", which
    only affects fp32 operands)."""
    upcast = interpreting() and dtype == torch.bfloat16
    fp32_exact = dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    precision = "ieee" if fp32_exact else "tf32"
    return upcast, precision


def _default_splits(n_row_blocks: int, n_vocab_blocks: int, device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    programs = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_vocab_blocks, -(-programs // max(1, n_row_blocks))))


def forward_stats(h, w, b, tloc, inv_t, with_entropy, blocks, num_splits):
    """This rank's (lse [N], target logit [N], E[z] [N] or None), all fp32."""
    bn, bv, bh = blocks
    n, hdim = h.shape
    v = w.shape[0]
    n_vb = -(-v // bv)
    splits = num_splits or _default_splits(-(-n // bn), n_vb, h.device)
    v_per_split = -(-n_vb // min(splits, n_vb)) * bv  # a multiple of BLOCK_V: every split is non-empty
    splits = -(-v // v_per_split)
    lse = torch.empty((splits, n), dtype=torch.float32, device=h.device)
    tgt = torch.empty_like(lse)
    mz = torch.empty_like(lse) if with_entropy else lse  # placeholder pointer when unused
    upcast, precision = _dot_flags(h.dtype)
    if n:
        _fwd_kernel[(-(-n // bn), splits)](
            h, w, w if b is None else b, tloc, lse, mz, tgt, n, v, hdim, h.stride(0), w.stride(0),
            v_per_split, inv_t, HAS_BIAS=b is not None, WITH_ENTROPY=with_entropy, UPCAST=upcast,
            PRECISION=precision, BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh)
    if splits == 1:
        return lse[0], tgt[0], (mz[0] if with_entropy else None)
    # merge splits: lse = logsumexp_s lse_s ; E[z] = sum_s exp(lse_s - lse) E_s[z] ; target = sum_s
    lse_all = torch.logsumexp(lse, dim=0)
    mz_all = (torch.exp(lse - lse_all) * mz).sum(0) if with_entropy else None
    return lse_all, tgt.sum(0), mz_all


def grad_z_tile(h_c, w_c, b_c, tloc_c, j0, lse_c, mz_c, glp_c, gent_c, inv_t, *, out_dtype, blocks):
    """grad_z [cn, cv] (out_dtype) of rows h_c [cn, H] and vocabulary rows w_c [cv, H] (from local id j0)."""
    bn, bv, bh = blocks
    cn, hdim = h_c.shape
    cv = w_c.shape[0]
    gz = torch.empty((cn, cv), dtype=out_dtype, device=h_c.device)
    with_entropy = gent_c is not None
    upcast, precision = _dot_flags(h_c.dtype)
    _grad_z_kernel[(-(-cn // bn), -(-cv // bv))](
        h_c, w_c, w_c if b_c is None else b_c, tloc_c, lse_c, mz_c if with_entropy else lse_c, glp_c,
        gent_c if with_entropy else glp_c, gz, cn, cv, hdim, h_c.stride(0), w_c.stride(0), gz.stride(0), j0,
        inv_t, HAS_BIAS=b_c is not None, WITH_ENTROPY=with_entropy, UPCAST=upcast, PRECISION=precision,
        BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh)
    return gz
