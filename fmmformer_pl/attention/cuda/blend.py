"""The blend on the GPU: ``y = sum_f c_f * field_f`` in one Triton pass each way.

Shapes: every field ``(batch, heads, seq, head_dim)`` (the same shape and strides), the
coefficients c ``(n_fields, heads, head_dim)`` float32: each field's weight per head and lane,
already multiplied out (``Blend`` builds them from its scalar / head / channel weights, so the
weights' own gradients follow by autograd from dc).

    forward:  y = sum_f c_f * field_f                        (float32 sums, one rounding)
    backward: dfield_f = c_f * dy,   dc_f = sum_{batch, seq} dy * field_f

PyTorch runs the blend as ~6 element-wise kernels forward and ~15 backward (a product and a
reduction per weight), each a full pass over a (seq x dim) tensor: 1.1 ms of 2.6 ms of GPU time
for fmm r = 2 at 64K tokens on the H200 (``bench/attention_profile.py``). Here it is one read of
the fields forward and one read of dy and the fields backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import block_dim, cdiv, offsets_fit
from .launch import launch

# Most fields one call takes (the near field and three far fields).
MAX_FIELDS = 4
# Positions per tile, and tiles per program of the backward pass (its dc partial sums are
# added to the result with one atomic add per program, so fewer programs contend less).
_BLOCK_T = 64
_BWD_TILES = 4
LAUNCH = {"fwd": dict(num_warps=4, num_stages=2), "bwd": dict(num_warps=4, num_stages=2)}


@triton.jit
def _field_ptr(f0, f1, f2, f3, F: tl.constexpr):
    if F == 0:
        return f0
    elif F == 1:
        return f1
    elif F == 2:
        return f2
    else:
        return f3


@triton.jit
def _blend_fwd_kernel(
    f0, f1, f2, f3, c_ptr, y_ptr,
    H, T, D,
    sfb, sfh, sft, sfd, syb, syh, syt, syd,
    NF: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    """y = sum_f c_f * field_f for one (BT x head_dim) tile. Grid (seq tiles, batch * heads)."""
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    bb = pid_bh // H
    hh = pid_bh % H
    t = pid_t * BT + tl.arange(0, BT)
    d = tl.arange(0, BD)
    inside = (t[:, None] < T) & (d[None, :] < D)
    offs_f = bb * sfb + hh * sfh + t[:, None] * sft + d[None, :] * sfd
    y = tl.zeros([BT, BD], dtype=tl.float32)
    for f in tl.static_range(NF):
        c = tl.load(c_ptr + (f * H + hh) * D + d, mask=d < D, other=0.0)
        x = tl.load(_field_ptr(f0, f1, f2, f3, f) + offs_f, mask=inside, other=0.0)
        y += x.to(tl.float32) * c[None, :]
    offs_y = bb * syb + hh * syh + t[:, None] * syt + d[None, :] * syd
    tl.store(y_ptr + offs_y, y.to(y_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _blend_bwd_kernel(
    f0, f1, f2, f3, g0, g1, g2, g3, c_ptr, dy_ptr, dc_ptr,
    H, T, D, TILES,
    sfb, sfh, sft, sfd, syb, syh, syt, syd,
    NF: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, GRADS: tl.constexpr,
):  # fmt: skip
    """dfield_f = c_f * dy for the first GRADS fields and the partial sums of
    dc_f = sum dy * field_f over TILES tiles.

    Grid (groups of TILES seq tiles, batch * heads); dc (n_fields, heads, head_dim) float32
    receives one atomic add per program and field. The field gradients take the fields'
    strides (the caller allocates them like the fields, which are dense).
    """
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    bb = pid_bh // H
    hh = pid_bh % H
    d = tl.arange(0, BD)
    dc0 = tl.zeros([BD], dtype=tl.float32)
    dc1 = tl.zeros([BD], dtype=tl.float32)
    dc2 = tl.zeros([BD], dtype=tl.float32)
    dc3 = tl.zeros([BD], dtype=tl.float32)
    for i in range(0, TILES):
        t = (pid_t * TILES + i) * BT + tl.arange(0, BT)
        inside = (t[:, None] < T) & (d[None, :] < D)
        offs_f = bb * sfb + hh * sfh + t[:, None] * sft + d[None, :] * sfd
        offs_y = bb * syb + hh * syh + t[:, None] * syt + d[None, :] * syd
        dy = tl.load(dy_ptr + offs_y, mask=inside, other=0.0).to(tl.float32)
        for f in tl.static_range(NF):
            c = tl.load(c_ptr + (f * H + hh) * D + d, mask=d < D, other=0.0)
            x = tl.load(_field_ptr(f0, f1, f2, f3, f) + offs_f, mask=inside, other=0.0)
            partial = tl.sum(dy * x.to(tl.float32), axis=0)
            if f == 0:
                dc0 += partial
            elif f == 1:
                dc1 += partial
            elif f == 2:
                dc2 += partial
            else:
                dc3 += partial
            if f < GRADS:
                g_ptr = _field_ptr(g0, g1, g2, g3, f)
                y = (dy * c[None, :]).to(g_ptr.dtype.element_ty)
                tl.store(g_ptr + offs_f, y, mask=inside)
    for f in tl.static_range(NF):
        if f == 0:
            dc = dc0
        elif f == 1:
            dc = dc1
        elif f == 2:
            dc = dc2
        else:
            dc = dc3
        tl.atomic_add(dc_ptr + (f * H + hh) * D + d, dc, mask=d < D)


def _strides(t: torch.Tensor):
    return tuple(t.stride())


def blend_forward(fields, coeffs):
    """y = sum_f coeffs[f] * fields[f] (fields of one shape and layout, coeffs float32)."""
    f0 = fields[0]
    batch, heads, seq, dim = f0.shape
    ptrs = list(fields) + [f0] * (MAX_FIELDS - len(fields))  # unused slots: stand-ins
    y = torch.empty_like(f0)
    grid = (cdiv(seq, _BLOCK_T), batch * heads)
    launch(
        _blend_fwd_kernel, grid,
        *ptrs, coeffs, y, heads, seq, dim, *_strides(f0), *_strides(y),
        NF=len(fields), BT=_BLOCK_T, BD=block_dim(dim), **LAUNCH["fwd"],
    )  # fmt: skip
    return y


def blend_backward(fields, coeffs, dy, dc=None, n_grads=None):
    """(the fields' gradients, dcoeffs) of ``blend_forward`` for the output gradient dy.

    For the fused FMM backward: with ``dc`` (zeros, like coeffs) the dcoeffs are added to it;
    ``n_grads``: only the first n_grads fields' gradients are written and returned (the far
    fields' kernels scale dy by their coefficients themselves)."""
    f0 = fields[0]
    batch, heads, seq, dim = f0.shape
    if not offsets_fit(dy, _BLOCK_T):
        dy = dy.contiguous()
    n_grads = len(fields) if n_grads is None else n_grads
    grads = [torch.empty_like(f) for f in fields[:n_grads]]
    if dc is None:
        dc = torch.zeros_like(coeffs)
    pad = [f0] * (MAX_FIELDS - len(fields))
    grad_ptrs = grads + [f0] * (MAX_FIELDS - len(grads))  # stand-ins where none is written
    tiles = cdiv(seq, _BLOCK_T)
    per_program = min(_BWD_TILES, tiles)
    grid = (cdiv(tiles, per_program), batch * heads)
    launch(
        _blend_bwd_kernel, grid,
        *fields, *pad, *grad_ptrs, coeffs, dy, dc, heads, seq, dim, per_program,
        *_strides(f0), *_strides(dy), NF=len(fields), BT=_BLOCK_T, BD=block_dim(dim),
        GRADS=n_grads, **LAUNCH["bwd"],
    )  # fmt: skip
    return grads, dc


class _Blend(torch.autograd.Function):
    @staticmethod
    def forward(ctx, coeffs, *fields):
        ctx.save_for_backward(coeffs, *fields)
        return blend_forward(fields, coeffs)

    @staticmethod
    def backward(ctx, dy):
        coeffs, *fields = ctx.saved_tensors
        grads, dc = blend_backward(fields, coeffs, dy)
        return (dc, *grads)


def blend_triton(fields: list[torch.Tensor], coeffs: torch.Tensor) -> torch.Tensor | None:
    """``sum_f coeffs[f] * fields[f]`` (coeffs ``(n_fields, heads, head_dim)``), or None for a
    case the kernel does not cover (then the caller computes it with PyTorch)."""
    if not fields or len(fields) > MAX_FIELDS:
        return None
    f0 = fields[0]
    if f0.dim() != 4 or f0.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return None
    if any(f.shape != f0.shape or f.stride() != f0.stride() or f.dtype != f0.dtype for f in fields):
        return None
    # The gradients are allocated like the fields (empty_like) and written with the fields'
    # strides: that holds for dense fields only (a sliced view's empty_like is contiguous).
    if torch.empty_like(f0).stride() != f0.stride() or not offsets_fit(f0, _BLOCK_T):
        return None
    batch, heads, seq, dim = f0.shape
    if coeffs.shape != (len(fields), heads, dim) or dim > 256 or seq == 0:
        return None
    if batch * heads > 65535:
        return None
    return _Blend.apply(coeffs.float().contiguous(), *fields)
