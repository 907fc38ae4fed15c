"""The blend's kernels (Triton): y = sum_f c_f * field_f forward, and backward the fields'
gradients c_f * dy with the coefficients' gradients sum dy * field_f (``op.py`` launches them).
"""

from __future__ import annotations

import triton
import triton.language as tl


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
def blend_fwd_kernel(
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
def blend_bwd_kernel(
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
