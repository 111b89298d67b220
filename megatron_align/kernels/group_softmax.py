"""Segmented (group) log-softmax over ragged groups packed in one flat batch, and the per-group KL.

One op serves SteerLM 2.0's normalized importance weights (Wang et al. 2024, softmax over a prompt's n
responses) and EXO's K-sample distributions (Ji et al. 2024, arXiv 2402.00856): the values of all groups lie
in one flat ``x [M]`` and group ``g`` owns ``x[offsets[g]:offsets[g+1]]`` (cu_seqlens layout, ``offsets
[G+1]``).

Forward, per group with max ``m`` (numerically stable, the max is subtracted first):
    log_softmax(x)_i = (x_i - m) - log sum_j exp(x_j - m)
Backward, with ``p = exp(out)`` (the saved output; the input is not kept):
    grad_x_i = g_i - p_i * sum_{j in group} g_j

Edge cases (identical in both backends):
- a group of size 1 gives 0 (and a zero gradient); an empty group (offsets[g] == offsets[g+1]) is allowed;
- a -inf entry in a group holding a finite one gets log-softmax -inf (probability exactly 0), gradient g_i;
- a group whose entries are ALL -inf has no softmax; it is defined here as the limit of n equal values, the
  uniform distribution: log-softmax = -log n for every entry, gradient g_i - sum(g) / n. So no NaN comes out
  of a fully masked group (in SteerLM 2.0 a group masked in both w' and b' then gets weight 0 and KL 0);
- +inf and NaN are invalid inputs: they make their group NaN (checking them would cost a host sync).

Faces: Triton kernels (one program per group, looping over blocks of BLOCK values, so any group size works;
CUDA, or CPU under ``TRITON_INTERPRET=1`` in tests) and a torch path built from segment reductions
(``scatter_reduce`` / ``index_add``, no Python loop over groups). ``backend="auto"``: CUDA -> triton,
CPU -> torch. ``group_kl`` is plain differentiable torch.
"""

from __future__ import annotations

import math

import torch

from megatron_align.kernels._triton import choose_triton as _choose_triton

DEFAULT_BLOCK = 128  # Triton values per block; groups larger than this are looped over

__all__ = ["group_log_softmax", "group_kl", "group_sizes_to_offsets", "segment_ids"]


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------

def group_sizes_to_offsets(sizes, device=None) -> torch.Tensor:
    """Group sizes ``[G]`` (list or int tensor) -> offsets ``[G+1]`` int64, offsets[0] = 0 (cu_seqlens)."""
    sizes = torch.as_tensor(sizes, dtype=torch.int64, device=device)
    if sizes.dim() != 1:
        raise ValueError(f"sizes must be 1-D, got shape {tuple(sizes.shape)}")
    if sizes.numel() and bool((sizes < 0).any()):
        raise ValueError("group sizes must be >= 0")
    return torch.cat([sizes.new_zeros(1), torch.cumsum(sizes, 0)])  # [G+1]


def segment_ids(offsets: torch.Tensor, m: int) -> torch.Tensor:
    """Group index of every value: ``[M]`` int64 (no host sync: the output size is given)."""
    g = offsets.numel() - 1
    sizes = offsets[1:] - offsets[:-1]  # [G]
    return torch.repeat_interleave(torch.arange(g, device=offsets.device), sizes, output_size=m)  # [M]


def _check_offsets(x: torch.Tensor, offsets: torch.Tensor, validate: bool) -> torch.Tensor:
    if x.dim() != 1:
        raise ValueError(f"x must be 1-D [M], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a float tensor, got {x.dtype}")
    if offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError(f"offsets must be 1-D [G+1], got shape {tuple(offsets.shape)}")
    if offsets.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"offsets must be an integer tensor, got {offsets.dtype}")
    if offsets.device != x.device:
        raise ValueError(f"offsets on {offsets.device} but x on {x.device}")
    offsets = offsets.to(torch.int64).contiguous()
    if validate:  # one host sync on CUDA; pass validate=False in a hot loop once the layout is trusted
        bad = (offsets[0] != 0) | (offsets[-1] != x.numel())
        if offsets.numel() > 1:
            bad = bad | (offsets[1:] < offsets[:-1]).any()
        if bool(bad):
            raise ValueError(f"offsets must be non-decreasing from 0 to M={x.numel()}, got "
                             f"{offsets.tolist() if offsets.numel() <= 16 else '...'}")
    return offsets


# ----------------------------------------------------------------------------------------------------------
# Triton kernels (one program per group, streaming over blocks of BLOCK values)
# ----------------------------------------------------------------------------------------------------------

def _build_triton_kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def _fwd_kernel(x_ptr, off_ptr, out_ptr, BLOCK: tl.constexpr):
        gid = tl.program_id(0)
        begin = tl.load(off_ptr + gid)
        end = tl.load(off_ptr + gid + 1)
        # 1. streaming max m and sum-exp s (online softmax, Milakov & Gimelshein 2018); the shift is 0 while
        #    everything seen is -inf, so that exp(-inf - -inf) never makes a NaN
        m = -float("inf")
        s = 0.0
        for start in range(begin, end, BLOCK):
            idx = start + tl.arange(0, BLOCK)  # [BLOCK] int64
            valid = idx < end
            z = tl.load(x_ptr + idx, mask=valid, other=-float("inf")).to(tl.float32)
            new_m = tl.maximum(m, tl.max(z, axis=0))
            shift = tl.where(new_m == -float("inf"), 0.0, new_m)
            s = s * tl.exp(m - shift) + tl.sum(tl.exp(z - shift), axis=0)
            m = new_m
        # 2. out = (x - m) - log s; all -inf group -> uniform -log n
        all_neg_inf = m == -float("inf")
        m = tl.where(all_neg_inf, 0.0, m)  # (keeps -inf - -inf out of the discarded branch below)
        log_s = tl.log(tl.where(all_neg_inf, 1.0, s))
        uniform = -tl.log(tl.maximum(end - begin, 1).to(tl.float32))
        for start in range(begin, end, BLOCK):
            idx = start + tl.arange(0, BLOCK)
            valid = idx < end
            z = tl.load(x_ptr + idx, mask=valid, other=0.0).to(tl.float32)
            out = tl.where(all_neg_inf, uniform, (z - m) - log_s)
            tl.store(out_ptr + idx, out, mask=valid)

    @triton.jit
    def _bwd_kernel(out_ptr, g_ptr, gx_ptr, off_ptr, BLOCK: tl.constexpr):
        gid = tl.program_id(0)
        begin = tl.load(off_ptr + gid)
        end = tl.load(off_ptr + gid + 1)
        # 1. sum of the incoming gradient over the group
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(begin, end, BLOCK):
            idx = start + tl.arange(0, BLOCK)
            acc += tl.load(g_ptr + idx, mask=idx < end, other=0.0)
        sum_g = tl.sum(acc, axis=0)
        # 2. grad_x = g - softmax * sum_group(g)
        for start in range(begin, end, BLOCK):
            idx = start + tl.arange(0, BLOCK)
            valid = idx < end
            g = tl.load(g_ptr + idx, mask=valid, other=0.0)
            p = tl.exp(tl.load(out_ptr + idx, mask=valid, other=-float("inf")))
            tl.store(gx_ptr + idx, g - p * sum_g, mask=valid)

    return _fwd_kernel, _bwd_kernel


_KERNELS = None


def _kernels():
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = _build_triton_kernels()
    return _KERNELS


def _triton_forward(x, offsets, block):
    fwd, _ = _kernels()
    out = torch.empty(x.shape, device=x.device, dtype=torch.float32)  # [M]
    g = offsets.numel() - 1
    if g and x.numel():
        fwd[(g,)](x, offsets, out, BLOCK=block)
    return out


def _triton_backward(out, grad_out, offsets, x_dtype, block):
    _, bwd = _kernels()
    grad_x = torch.empty_like(out)  # [M] fp32; rounded to x's dtype by torch (round-to-nearest-even: the
    g = offsets.numel() - 1         # interpreter's in-kernel downcast truncates), a copy of only M values
    if g and out.numel():
        bwd[(g,)](out, grad_out, grad_x, offsets, BLOCK=block)
    return grad_x.to(x_dtype)


# ----------------------------------------------------------------------------------------------------------
# Torch path: segment reductions, no loop over groups
# ----------------------------------------------------------------------------------------------------------

def _torch_forward(x, offsets):
    z = x.float()  # [M]
    g = offsets.numel() - 1
    seg = segment_ids(offsets, z.numel())  # [M]
    m = torch.full((g,), -math.inf, device=z.device).scatter_reduce_(0, seg, z, "amax")  # [G]
    all_neg_inf = m == -math.inf  # [G] (also empty groups, which own no value)
    shift = torch.where(all_neg_inf, 0.0, m)  # [G]
    zs = z - shift[seg]  # [M]
    s = torch.zeros(g, device=z.device).index_add_(0, seg, torch.exp(zs))  # [G]
    log_s = torch.where(all_neg_inf, 1.0, s).log_()  # [G]
    sizes = (offsets[1:] - offsets[:-1]).float().clamp_(min=1)  # [G]
    uniform = -torch.log(sizes)  # [G]
    return torch.where(all_neg_inf[seg], uniform[seg], zs - log_s[seg])  # [M]


def _torch_backward(out, grad_out, offsets, x_dtype):
    g = offsets.numel() - 1
    seg = segment_ids(offsets, out.numel())  # [M]
    sum_g = torch.zeros(g, device=out.device).index_add_(0, seg, grad_out)  # [G]
    return (grad_out - torch.exp(out) * sum_g[seg]).to(x_dtype)  # [M]


# ----------------------------------------------------------------------------------------------------------
# autograd + public API
# ----------------------------------------------------------------------------------------------------------

class _GroupLogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, offsets, use_triton, block):
        out = _triton_forward(x, offsets, block) if use_triton else _torch_forward(x, offsets)  # [M] fp32
        ctx.save_for_backward(out, offsets)
        ctx.cfg = (x.dtype, use_triton, block)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        out, offsets = ctx.saved_tensors
        x_dtype, use_triton, block = ctx.cfg
        grad_out = grad_out.float().contiguous()
        if use_triton:
            grad_x = _triton_backward(out, grad_out, offsets, x_dtype, block)
        else:
            grad_x = _torch_backward(out, grad_out, offsets, x_dtype)
        return grad_x, None, None, None


def group_log_softmax(x: torch.Tensor, offsets: torch.Tensor, *, backend: str = "auto",
                      block: int | None = None, validate: bool = True) -> torch.Tensor:
    """Log-softmax within each ragged group of a flat batch (differentiable w.r.t. ``x``).

    x:       [M] float (fp32/bf16/fp16; accumulated in fp32)
    offsets: [G+1] int (cu_seqlens: offsets[0] = 0, offsets[-1] = M, non-decreasing); group g is
             x[offsets[g]:offsets[g+1]]
    backend: "triton", "torch" or "auto" (CUDA -> triton, CPU -> torch)
    block:   Triton BLOCK (power of two, values per block; default 128); ignored by the torch path
    validate: check the offsets' values (one host sync on CUDA)
    returns  [M] fp32 log-softmax; the gradient w.r.t. x comes back in x's dtype. See the module docstring
             for -inf / all -inf groups.
    """
    offsets = _check_offsets(x, offsets, validate)
    use_triton = _choose_triton(backend, x)
    block = DEFAULT_BLOCK if block is None else int(block)
    if block < 1 or block & (block - 1):
        raise ValueError(f"block must be a power of two, got {block}")
    return _GroupLogSoftmax.apply(x.contiguous(), offsets, use_triton, block)


def group_kl(logp: torch.Tensor, logq: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_{i in group} p_i (log p_i - log q_i) per group, differentiable in both arguments.

    logp, logq: [M] normalized log-probabilities per group (e.g. from ``group_log_softmax``)
    offsets:    [G+1] as in ``group_log_softmax``
    returns     [G] fp32 (0 for an empty group). Terms with p_i = 0 count 0 (0 log 0 = 0) with a zero
                gradient; p_i > 0 where q_i = 0 gives +inf, the true divergence.
    """
    if logp.shape != logq.shape or logp.dim() != 1:
        raise ValueError(f"logp and logq must be the same [M] shape, got {tuple(logp.shape)} and "
                         f"{tuple(logq.shape)}")
    offsets = _check_offsets(logp, offsets, validate=False)
    logp, logq = logp.float(), logq.float()  # [M]
    live = logp > -math.inf  # p > 0
    lp = torch.where(live, logp, 0.0)  # safe values: no 0 * inf in the forward or the backward
    lq = torch.where(live, logq, 0.0)
    terms = torch.where(live, torch.exp(lp) * (lp - lq), 0.0)  # [M]
    seg = segment_ids(offsets, logp.numel())  # [M]
    return torch.zeros(offsets.numel() - 1, device=logp.device).index_add(0, seg, terms)  # [G]
