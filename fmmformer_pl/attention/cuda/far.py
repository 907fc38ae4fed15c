"""Far field on the GPU: fused chunked linear attention in Triton (float32 states).

Shapes: q, k ``(batch, heads, seq, head_dim)``, v ``(batch, heads, seq, head_dim_v)``,
key_padding_mask bool ``(batch, seq)`` (True = padding). Semantics are exactly those of
``fmmformer_pl.attention.far_field`` (its docstring is the specification):

    a_i = phi(q_i),  b_j = phi(k_j) * [j not padding],  V(i) = {j} or {j <= i} (causal)
    num_i = sum_{j in V(i)} (a_i . b_j) v_j,   den_i = sum_{j in V(i)} a_i . b_j
    out_i = num_i / den_i   (0 where den_i = 0)   if normalize
    out_i = num_i / sqrt(seq)                      otherwise

Algorithm. The sequence is cut into chunks of ``_CHUNK`` positions and the chunks into
*segments*, one program per (segment, batch * head), so a single long sequence still fills
the GPU. A first kernel sums each segment's state S = sum_j b_j v_j^T (head_dim x head_dim_v)
and z = sum_j b_j; the main kernel starts from the sum of the earlier segments' states (it
adds them itself, from L2: no scan kernel in between; bidirectional: the total, one
``sum``), then walks its chunks with the state in registers:

    num_c = a_c S + tril(a_c b_c^T) v_c,  den_c = a_c z + rowsum(tril(a_c b_c^T)),
    S += b_c^T v_c,  z += colsum(b_c)          (causal; bidirectional: num_c = a_c S_total)

Backward, with g_i = dout_i / den_i and s_i = -(dout_i . out_i) / den_i (normalize; else
g_i = dout_i / sqrt(seq), s_i = 0), i.e. the gradient of an unnormalised linear attention
whose values carry an extra all-ones column:

    da_i = sum_{j in V(i)} (g_i . v_j + s_i) b_j
    db_j = sum_{i: j in V(i)} (g_i . v_j + s_i) a_i,   dv_j = sum_{i: j in V(i)} (a_i . b_j) g_i

da runs forward over the chunks (state S, z as in the forward pass); db and dv run backward
with the reverse state R = sum_i a_i g_i^T and r = sum_i s_i a_i. Nothing of size
(seq x seq) or (seq x head_dim x head_dim) is ever allocated: the extra memory is one
float32 per position (the denominators) and one state per segment.

Every matrix product takes bf16 operands for bf16 or fp16 inputs (fp16 is widened to bf16 so
that 1 / den cannot underflow; a state is rounded to bf16 where it is read, as in
flash-linear-attention) and accumulates in float32; states and sums stay float32. float32
inputs use float32 operands: TF32, or exact float32 under
``torch.get_float32_matmul_precision() == "highest"``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import (
    block_dim,
    empty_like_layout,
    fp32_precision,
    padding_as_uint8,
    strides,
    supported,
)

# Feature maps the kernels compute in registers (names of ``FEATURE_MAPS``).
PHI_CODES = {"elu": 0, "elu_flip": 1, "tanh": 2, "relu": 3, "softplus": 4}

# Positions per chunk: the intra-chunk product is (_CHUNK x _CHUNK) per chunk. 32 rather
# than 64 keeps the backward kernels free of register spills at 8 warps (ptxas, sm_90).
_CHUNK = 32
# Aim for this many programs per SM so that one long sequence still fills the GPU.
_PROGRAMS_PER_SM = 4
# Up to this many chunks a (batch, head) is one segment: no state pass and no scan, which
# saves three launches where launch overhead dominates (short sequences).
_SINGLE_SEGMENT_CHUNKS = 16


# Launch settings per kernel (tuned on an H200, bf16, head_dim 64; see docs/gpu.md).
LAUNCH = {
    name: dict(num_warps=8, num_stages=2) for name in ("state_fwd", "fwd", "state_bwd", "dq", "dkv")
}


@triton.jit
def _phi(x, PHI: tl.constexpr):
    """phi(x) and phi'(x), elementwise, float32 (same formulas as ``FEATURE_MAPS``)."""
    if PHI == 0:  # elu(x) + 1
        e = tl.exp(tl.minimum(x, 0.0))
        y = tl.where(x > 0, x + 1.0, e)
        dy = tl.where(x > 0, 1.0, e)
    elif PHI == 1:  # elu(-x) + 1
        e = tl.exp(tl.minimum(-x, 0.0))
        y = tl.where(x < 0, 1.0 - x, e)
        dy = tl.where(x < 0, -1.0, -e)
    elif PHI == 2:  # tanh(x) + 1 = 2 sigmoid(2x)
        sg = 1.0 / (1.0 + tl.exp(-2.0 * x))
        y = 2.0 * sg
        dy = 4.0 * sg * (1.0 - sg)
    elif PHI == 3:  # relu
        y = tl.maximum(x, 0.0)
        dy = tl.where(x > 0, 1.0, 0.0)
    else:  # softplus, with torch's threshold 20 (identity above it)
        e = tl.exp(tl.minimum(x, 20.0))
        # log(1 + e) loses e entirely below ~1e-7; there softplus(x) = e to float32 precision.
        y = tl.where(x > 20.0, x, tl.where(x < -15.0, e, tl.log(1.0 + e)))
        dy = e / (1.0 + e)
    return y, dy


@triton.jit
def _load_tile(base, t, offs_d, T, D, stride_t, stride_d):
    """A (chunk x dim) tile as float32, zero outside t < T, d < D."""
    ptrs = base + t[:, None] * stride_t + offs_d[None, :] * stride_d
    mask = (t[:, None] < T) & (offs_d[None, :] < D)
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_phi_k(
    k_base, mask_base, t, offs_d, T, D, skt, skd, smt, PHI: tl.constexpr, HAS_MASK: tl.constexpr
):
    """b = phi(k) zeroed at padding, outside the sequence and outside head_dim; and phi'(k)."""
    kk = _load_tile(k_base, t, offs_d, T, D, skt, skd)
    b, db = _phi(kk, PHI)
    keep = t < T
    if HAS_MASK:
        pad = tl.load(mask_base + t * smt, mask=t < T, other=1)
        keep = keep & (pad == 0)
    keep2 = keep[:, None] & (offs_d[None, :] < D)
    return tl.where(keep2, b, 0.0), tl.where(keep2, db, 0.0)


@triton.jit
def _load_phi_q(q_base, t, offs_d, T, D, sqt, sqd, PHI: tl.constexpr):
    """a = phi(q) zeroed outside head_dim (phi(0) != 0 for most maps), and phi'(q)."""
    qq = _load_tile(q_base, t, offs_d, T, D, sqt, sqd)
    a, da = _phi(qq, PHI)
    dm = offs_d[None, :] < D
    return tl.where(dm, a, 0.0), tl.where(dm, da, 0.0)


@triton.jit
def _load_g_s(
    do_base,
    o_base,
    den_base,
    t,
    offs_dv,
    T,
    DV,
    sdot,
    sdod,
    sot,
    sod,
    scale,
    NORMALIZE: tl.constexpr,
):
    """g = dout / den and s = -(dout . out) / den (0 where den = 0); or g = dout * scale."""
    do = _load_tile(do_base, t, offs_dv, T, DV, sdot, sdod)
    if NORMALIZE:
        o = _load_tile(o_base, t, offs_dv, T, DV, sot, sod)
        den = tl.load(den_base + t, mask=t < T, other=0.0)
        inv = tl.where(den > 0, 1.0 / tl.where(den > 0, den, 1.0), 0.0)
        g = do * inv[:, None]
        s = -tl.sum(do * o, axis=1) * inv
    else:
        g = do * scale
        s = tl.zeros([do.shape[0]], dtype=tl.float32)
    return g, s


@triton.jit
def _sum_states(
    S_ptr,
    z_ptr,
    first,
    lo,
    hi,
    offs_d,
    offs_dv,
    BD: tl.constexpr,
    BDV: tl.constexpr,
    SLOT: tl.constexpr,
):
    """Sum of the states in slots first + lo .. first + hi - 1 (S: BD x BDV, z: BD).

    A slot is SLOT = BD * BDV + BD float32 numbers: S row-major, then z (z_ptr = S_ptr + BD *
    BDV). Summing the earlier segments here replaces a scan kernel between the two passes.
    """
    S = tl.zeros([BD, BDV], dtype=tl.float32)
    z = tl.zeros([BD], dtype=tl.float32)
    for sp in range(lo, hi):
        slot = first + sp
        S += tl.load(S_ptr + slot * SLOT + offs_d[:, None] * BDV + offs_dv[None, :])
        z += tl.load(z_ptr + slot * SLOT + offs_d)
    return S, z


@triton.jit
def _far_state_fwd_kernel(
    k_ptr,
    v_ptr,
    mask_ptr,
    S_ptr,
    z_ptr,
    H,
    T,
    D,
    DV,
    CPS,
    skb,
    skh,
    skt,
    skd,
    svb,
    svh,
    svt,
    svd,
    smb,
    smt,
    PHI: tl.constexpr,
    HAS_MASK: tl.constexpr,
    BT: tl.constexpr,
    BD: tl.constexpr,
    BDV: tl.constexpr,
    PREC: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    SLOT: tl.constexpr,
):
    """Per segment: S = sum_j b_j v_j^T, z = sum_j b_j. Grid (segments, batch * heads)."""
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    n_seg = tl.num_programs(0)
    bb = pid_bh // H
    hh = pid_bh % H
    k_base = k_ptr + bb * skb + hh * skh
    v_base = v_ptr + bb * svb + hh * svh
    mask_base = mask_ptr + bb * smb
    offs_t = tl.arange(0, BT)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    S = tl.zeros([BD, BDV], dtype=tl.float32)
    z = tl.zeros([BD], dtype=tl.float32)
    t0 = pid_s * CPS * BT
    for c in range(0, CPS):
        t = t0 + c * BT + offs_t
        b, _ = _load_phi_k(k_base, mask_base, t, offs_d, T, D, skt, skd, smt, PHI, HAS_MASK)
        vv = _load_tile(v_base, t, offs_dv, T, DV, svt, svd).to(DOT_DTYPE)
        S += tl.dot(tl.trans(b.to(DOT_DTYPE)), vv, input_precision=PREC)
        z += tl.sum(b, axis=0)
    slot = pid_bh * n_seg + pid_s
    tl.store(S_ptr + slot * SLOT + offs_d[:, None] * BDV + offs_dv[None, :], S)
    tl.store(z_ptr + slot * SLOT + offs_d, z)


@triton.jit
def _far_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    mask_ptr,
    S_ptr,
    z_ptr,
    o_ptr,
    den_ptr,
    H,
    T,
    D,
    DV,
    CPS,
    scale,
    sqb,
    sqh,
    sqt,
    sqd,
    skb,
    skh,
    skt,
    skd,
    svb,
    svh,
    svt,
    svd,
    sob,
    soh,
    sot,
    sod,
    smb,
    smt,
    PHI: tl.constexpr,
    HAS_MASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_INIT: tl.constexpr,
    NORMALIZE: tl.constexpr,
    BT: tl.constexpr,
    BD: tl.constexpr,
    BDV: tl.constexpr,
    PREC: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    SLOT: tl.constexpr,
):
    """out (and den) for one segment's chunks. Grid (segments, batch * heads).

    The initial state: causal, the sum of the earlier segments' states (slots of
    ``_far_state_fwd_kernel``); bidirectional, the total of slot pid_bh.
    """
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    bb = pid_bh // H
    hh = pid_bh % H
    q_base = q_ptr + bb * sqb + hh * sqh
    k_base = k_ptr + bb * skb + hh * skh
    v_base = v_ptr + bb * svb + hh * svh
    o_base = o_ptr + bb * sob + hh * soh
    mask_base = mask_ptr + bb * smb
    den_base = den_ptr + pid_bh * T
    offs_t = tl.arange(0, BT)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    if HAS_INIT:
        if CAUSAL:
            S, z = _sum_states(
                S_ptr, z_ptr, pid_bh * tl.num_programs(0), 0, pid_s, offs_d, offs_dv, BD, BDV, SLOT
            )
        else:
            S, z = _sum_states(S_ptr, z_ptr, pid_bh, 0, 1, offs_d, offs_dv, BD, BDV, SLOT)
    else:
        S = tl.zeros([BD, BDV], dtype=tl.float32)
        z = tl.zeros([BD], dtype=tl.float32)
    causal_mask = offs_t[:, None] >= offs_t[None, :]
    t0 = pid_s * CPS * BT
    for c in range(0, CPS):
        t = t0 + c * BT + offs_t
        a, _ = _load_phi_q(q_base, t, offs_d, T, D, sqt, sqd, PHI)
        den = tl.sum(a * z[None, :], axis=1)
        a = a.to(DOT_DTYPE)
        num = tl.dot(a, S.to(DOT_DTYPE), input_precision=PREC)
        if CAUSAL:
            b, _ = _load_phi_k(k_base, mask_base, t, offs_d, T, D, skt, skd, smt, PHI, HAS_MASK)
            z += tl.sum(b, axis=0)
            b = b.to(DOT_DTYPE)
            vv = _load_tile(v_base, t, offs_dv, T, DV, svt, svd).to(DOT_DTYPE)
            A = tl.dot(a, tl.trans(b), input_precision=PREC)
            A = tl.where(causal_mask, A, 0.0)
            num += tl.dot(A.to(DOT_DTYPE), vv, input_precision=PREC)
            den += tl.sum(A, axis=1)
            S += tl.dot(tl.trans(b), vv, input_precision=PREC)
        if NORMALIZE:
            pos = den > 0
            out = tl.where(pos[:, None], num / tl.where(pos, den, 1.0)[:, None], 0.0)
            tl.store(den_base + t, den, mask=t < T)
        else:
            out = num * scale
        o_ptrs = o_base + t[:, None] * sot + offs_dv[None, :] * sod
        tl.store(
            o_ptrs, out.to(o_ptr.dtype.element_ty), mask=(t[:, None] < T) & (offs_dv[None, :] < DV)
        )


@triton.jit
def _far_state_bwd_kernel(
    q_ptr,
    do_ptr,
    o_ptr,
    den_ptr,
    R_ptr,
    r_ptr,
    H,
    T,
    D,
    DV,
    CPS,
    scale,
    sqb,
    sqh,
    sqt,
    sqd,
    sdob,
    sdoh,
    sdot,
    sdod,
    sob,
    soh,
    sot,
    sod,
    PHI: tl.constexpr,
    NORMALIZE: tl.constexpr,
    BT: tl.constexpr,
    BD: tl.constexpr,
    BDV: tl.constexpr,
    PREC: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    SLOT: tl.constexpr,
):
    """Per segment: R = sum_i a_i g_i^T, r = sum_i s_i a_i. Grid (segments, batch * heads)."""
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    n_seg = tl.num_programs(0)
    bb = pid_bh // H
    hh = pid_bh % H
    q_base = q_ptr + bb * sqb + hh * sqh
    do_base = do_ptr + bb * sdob + hh * sdoh
    o_base = o_ptr + bb * sob + hh * soh
    den_base = den_ptr + pid_bh * T
    offs_t = tl.arange(0, BT)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    R = tl.zeros([BD, BDV], dtype=tl.float32)
    r = tl.zeros([BD], dtype=tl.float32)
    t0 = pid_s * CPS * BT
    for c in range(0, CPS):
        t = t0 + c * BT + offs_t
        a, _ = _load_phi_q(q_base, t, offs_d, T, D, sqt, sqd, PHI)
        a = tl.where(t[:, None] < T, a, 0.0)
        g, s = _load_g_s(
            do_base, o_base, den_base, t, offs_dv, T, DV, sdot, sdod, sot, sod, scale, NORMALIZE
        )
        r += tl.sum(a * s[:, None], axis=0)
        R += tl.dot(tl.trans(a.to(DOT_DTYPE)), g.to(DOT_DTYPE), input_precision=PREC)
    slot = pid_bh * n_seg + pid_s
    tl.store(R_ptr + slot * SLOT + offs_d[:, None] * BDV + offs_dv[None, :], R)
    tl.store(r_ptr + slot * SLOT + offs_d, r)


@triton.jit
def _far_dq_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    mask_ptr,
    do_ptr,
    o_ptr,
    den_ptr,
    S_ptr,
    z_ptr,
    dq_ptr,
    H,
    T,
    D,
    DV,
    CPS,
    scale,
    sqb,
    sqh,
    sqt,
    sqd,
    skb,
    skh,
    skt,
    skd,
    svb,
    svh,
    svt,
    svd,
    sdob,
    sdoh,
    sdot,
    sdod,
    sob,
    soh,
    sot,
    sod,
    sdqb,
    sdqh,
    sdqt,
    sdqd,
    smb,
    smt,
    PHI: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_INIT: tl.constexpr,
    NORMALIZE: tl.constexpr,
    BT: tl.constexpr,
    BD: tl.constexpr,
    BDV: tl.constexpr,
    PREC: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    SLOT: tl.constexpr,
):
    """Causal dq, forward over the chunks: da = (g S^T + s z^T) + tril(g v^T + s) b."""
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    n_seg = tl.num_programs(0)
    bb = pid_bh // H
    hh = pid_bh % H
    q_base = q_ptr + bb * sqb + hh * sqh
    k_base = k_ptr + bb * skb + hh * skh
    v_base = v_ptr + bb * svb + hh * svh
    do_base = do_ptr + bb * sdob + hh * sdoh
    o_base = o_ptr + bb * sob + hh * soh
    dq_base = dq_ptr + bb * sdqb + hh * sdqh
    mask_base = mask_ptr + bb * smb
    den_base = den_ptr + pid_bh * T
    offs_t = tl.arange(0, BT)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    if HAS_INIT:
        S, z = _sum_states(S_ptr, z_ptr, pid_bh * n_seg, 0, pid_s, offs_d, offs_dv, BD, BDV, SLOT)
    else:
        S = tl.zeros([BD, BDV], dtype=tl.float32)
        z = tl.zeros([BD], dtype=tl.float32)
    causal_mask = offs_t[:, None] >= offs_t[None, :]
    t0 = pid_s * CPS * BT
    for c in range(0, CPS):
        t = t0 + c * BT + offs_t
        b, _ = _load_phi_k(k_base, mask_base, t, offs_d, T, D, skt, skd, smt, PHI, HAS_MASK)
        vv = _load_tile(v_base, t, offs_dv, T, DV, svt, svd).to(DOT_DTYPE)
        g, s = _load_g_s(
            do_base, o_base, den_base, t, offs_dv, T, DV, sdot, sdod, sot, sod, scale, NORMALIZE
        )
        g = g.to(DOT_DTYPE)
        da = tl.dot(g, tl.trans(S.to(DOT_DTYPE)), input_precision=PREC) + s[:, None] * z[None, :]
        P = tl.dot(g, tl.trans(vv), input_precision=PREC)
        P = tl.where(causal_mask, P + s[:, None], 0.0)
        z += tl.sum(b, axis=0)
        b = b.to(DOT_DTYPE)
        da += tl.dot(P.to(DOT_DTYPE), b, input_precision=PREC)
        S += tl.dot(tl.trans(b), vv, input_precision=PREC)
        _, dphi_q = _load_phi_q(q_base, t, offs_d, T, D, sqt, sqd, PHI)
        dq = da * dphi_q
        tl.store(
            dq_base + t[:, None] * sdqt + offs_d[None, :] * sdqd,
            dq.to(dq_ptr.dtype.element_ty),
            mask=(t[:, None] < T) & (offs_d[None, :] < D),
        )


@triton.jit
def _far_dkv_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    mask_ptr,
    do_ptr,
    o_ptr,
    den_ptr,
    S_ptr,
    z_ptr,
    R_ptr,
    r_ptr,
    dq_ptr,
    dk_ptr,
    dv_ptr,
    H,
    T,
    D,
    DV,
    CPS,
    scale,
    sqb,
    sqh,
    sqt,
    sqd,
    skb,
    skh,
    skt,
    skd,
    svb,
    svh,
    svt,
    svd,
    sdob,
    sdoh,
    sdot,
    sdod,
    sob,
    soh,
    sot,
    sod,
    sdqb,
    sdqh,
    sdqt,
    sdqd,
    sdkb,
    sdkh,
    sdkt,
    sdkd,
    sdvb,
    sdvh,
    sdvt,
    sdvd,
    smb,
    smt,
    PHI: tl.constexpr,
    HAS_MASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_INIT: tl.constexpr,
    NORMALIZE: tl.constexpr,
    BT: tl.constexpr,
    BD: tl.constexpr,
    BDV: tl.constexpr,
    PREC: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    SLOT: tl.constexpr,
):
    """dk, dv, backward over the chunks with the reverse state R, r.

    Causal: db = v R^T + r + (tril(g v^T + s))^T a, dv = b R + (tril(a b^T))^T g.
    Bidirectional: R, r (and S, z for dq) are the totals, there is no intra-chunk term, and
    dq = (g S^T + s z^T) phi'(q) is written here too.
    """
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    n_seg = tl.num_programs(0)
    bb = pid_bh // H
    hh = pid_bh % H
    q_base = q_ptr + bb * sqb + hh * sqh
    k_base = k_ptr + bb * skb + hh * skh
    v_base = v_ptr + bb * svb + hh * svh
    do_base = do_ptr + bb * sdob + hh * sdoh
    o_base = o_ptr + bb * sob + hh * soh
    dq_base = dq_ptr + bb * sdqb + hh * sdqh
    dk_base = dk_ptr + bb * sdkb + hh * sdkh
    dv_base = dv_ptr + bb * sdvb + hh * sdvh
    mask_base = mask_ptr + bb * smb
    den_base = den_ptr + pid_bh * T
    offs_t = tl.arange(0, BT)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    if HAS_INIT:
        if CAUSAL:  # the later segments' reverse states
            R, r = _sum_states(
                R_ptr, r_ptr, pid_bh * n_seg, pid_s + 1, n_seg, offs_d, offs_dv, BD, BDV, SLOT
            )
        else:
            R, r = _sum_states(R_ptr, r_ptr, pid_bh, 0, 1, offs_d, offs_dv, BD, BDV, SLOT)
    else:
        R = tl.zeros([BD, BDV], dtype=tl.float32)
        r = tl.zeros([BD], dtype=tl.float32)
    if not CAUSAL:
        S, z = _sum_states(S_ptr, z_ptr, pid_bh, 0, 1, offs_d, offs_dv, BD, BDV, SLOT)
    # Row j (key), column i (query) of the transposed intra-chunk products: i >= j.
    causal_mask_t = offs_t[None, :] >= offs_t[:, None]
    t0 = pid_s * CPS * BT
    for cc in range(0, CPS):
        c = CPS - 1 - cc
        t = t0 + c * BT + offs_t
        b, dphi_k = _load_phi_k(k_base, mask_base, t, offs_d, T, D, skt, skd, smt, PHI, HAS_MASK)
        b = b.to(DOT_DTYPE)
        vv = _load_tile(v_base, t, offs_dv, T, DV, svt, svd).to(DOT_DTYPE)
        g, s = _load_g_s(
            do_base, o_base, den_base, t, offs_dv, T, DV, sdot, sdod, sot, sod, scale, NORMALIZE
        )
        g = g.to(DOT_DTYPE)
        db = tl.dot(vv, tl.trans(R.to(DOT_DTYPE)), input_precision=PREC) + r[None, :]
        dv = tl.dot(b, R.to(DOT_DTYPE), input_precision=PREC)
        if CAUSAL:
            a, _ = _load_phi_q(q_base, t, offs_d, T, D, sqt, sqd, PHI)
            a = tl.where(t[:, None] < T, a, 0.0)
            r += tl.sum(a * s[:, None], axis=0)
            a = a.to(DOT_DTYPE)
            Pt = tl.dot(vv, tl.trans(g), input_precision=PREC)
            Pt = tl.where(causal_mask_t, Pt + s[None, :], 0.0)
            db += tl.dot(Pt.to(DOT_DTYPE), a, input_precision=PREC)
            At = tl.dot(b, tl.trans(a), input_precision=PREC)
            At = tl.where(causal_mask_t, At, 0.0)
            dv += tl.dot(At.to(DOT_DTYPE), g, input_precision=PREC)
            R += tl.dot(tl.trans(a), g, input_precision=PREC)
        else:
            da = (
                tl.dot(g, tl.trans(S.to(DOT_DTYPE)), input_precision=PREC) + s[:, None] * z[None, :]
            )
            _, dphi_q = _load_phi_q(q_base, t, offs_d, T, D, sqt, sqd, PHI)
            dq = da * dphi_q
            tl.store(
                dq_base + t[:, None] * sdqt + offs_d[None, :] * sdqd,
                dq.to(dq_ptr.dtype.element_ty),
                mask=(t[:, None] < T) & (offs_d[None, :] < D),
            )
        # dphi_k is 0 at padding, so padded keys get no gradient (b was 0 there too).
        dk = db * dphi_k
        tl.store(
            dk_base + t[:, None] * sdkt + offs_d[None, :] * sdkd,
            dk.to(dk_ptr.dtype.element_ty),
            mask=(t[:, None] < T) & (offs_d[None, :] < D),
        )
        tl.store(
            dv_base + t[:, None] * sdvt + offs_dv[None, :] * sdvd,
            dv.to(dv_ptr.dtype.element_ty),
            mask=(t[:, None] < T) & (offs_dv[None, :] < DV),
        )


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 8  # the Triton interpreter on the CPU (tests of the kernels' logic)


def _segments(batch_heads: int, seq: int, device: torch.device) -> tuple[int, int]:
    """(chunks per segment, segments per (batch, head))."""
    n_chunks = triton.cdiv(max(seq, 1), _CHUNK)
    if n_chunks <= _SINGLE_SEGMENT_CHUNKS:
        return n_chunks, 1
    per_bh = max(1, min(n_chunks, triton.cdiv(_PROGRAMS_PER_SM * _sm_count(device), batch_heads)))
    cps = triton.cdiv(n_chunks, per_bh)
    return cps, triton.cdiv(n_chunks, cps)


def _dot_dtype(dtype: torch.dtype):
    return tl.float32 if dtype == torch.float32 else tl.bfloat16


def _state_slots(bd: int, bdv: int) -> int:
    """float32 numbers per state slot: S (bd x bdv) then z (bd)."""
    return bd * bdv + bd


class _FarField(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, phi_code, causal, normalize):
        batch, heads, seq, dim = q.shape
        dim_v = v.shape[-1]
        bh = batch * heads
        bd, bdv = block_dim(dim), block_dim(dim_v)
        slot = _state_slots(bd, bdv)
        cps, n_seg = _segments(bh, seq, q.device)
        mask, smb, smt = padding_as_uint8(key_padding_mask, q)
        scale = 1.0 / math.sqrt(seq)
        common = dict(
            PHI=phi_code,
            BT=_CHUNK,
            BD=bd,
            BDV=bdv,
            PREC=fp32_precision(q.dtype),
            DOT_DTYPE=_dot_dtype(q.dtype),
            SLOT=slot,
        )

        out = empty_like_layout(q, dim_v)
        # Per-segment states (bh, n_seg, slot); the main kernel sums the earlier ones
        # (causal); bidirectional reads their total (bh, slot). None: one causal segment.
        init = None
        if (not causal) or n_seg > 1:
            seg = torch.empty(bh, n_seg, slot, device=q.device, dtype=torch.float32)
            _far_state_fwd_kernel[(n_seg, bh)](
                k,
                v,
                mask,
                seg,
                seg[..., bd * bdv :],
                heads,
                seq,
                dim,
                dim_v,
                cps,
                *strides(k),
                *strides(v),
                smb,
                smt,
                HAS_MASK=key_padding_mask is not None,
                **common,
                **LAUNCH["state_fwd"],
            )
            init = seg if causal else seg.sum(dim=1)
        state = init if init is not None else out  # out: a never-read stand-in
        den = torch.empty(bh, seq, device=q.device, dtype=torch.float32) if normalize else out
        _far_fwd_kernel[(n_seg, bh)](
            q,
            k,
            v,
            mask,
            state,
            state[..., bd * bdv :],
            out,
            den,
            heads,
            seq,
            dim,
            dim_v,
            cps,
            scale,
            *strides(q),
            *strides(k),
            *strides(v),
            *strides(out),
            smb,
            smt,
            HAS_MASK=key_padding_mask is not None,
            CAUSAL=causal,
            HAS_INIT=init is not None,
            NORMALIZE=normalize,
            **common,
            **LAUNCH["fwd"],
        )
        ctx.save_for_backward(q, k, v, mask, out, den, init)
        ctx.cfg = (phi_code, causal, normalize, cps, n_seg, smb, smt, key_padding_mask is not None)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, mask, out, den, init = ctx.saved_tensors
        phi_code, causal, normalize, cps, n_seg, smb, smt, has_mask = ctx.cfg
        batch, heads, seq, dim = q.shape
        dim_v = v.shape[-1]
        bh = batch * heads
        bd, bdv = block_dim(dim), block_dim(dim_v)
        slot = _state_slots(bd, bdv)
        scale = 1.0 / math.sqrt(seq)
        common = dict(
            PHI=phi_code,
            BT=_CHUNK,
            BD=bd,
            BDV=bdv,
            PREC=fp32_precision(q.dtype),
            DOT_DTYPE=_dot_dtype(q.dtype),
            SLOT=slot,
        )
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        has_init = init is not None
        state = init if has_init else out  # out: a never-read stand-in

        rstate = out
        if has_init:
            rseg = torch.empty(bh, n_seg, slot, device=q.device, dtype=torch.float32)
            _far_state_bwd_kernel[(n_seg, bh)](
                q,
                dout,
                out,
                den,
                rseg,
                rseg[..., bd * bdv :],
                heads,
                seq,
                dim,
                dim_v,
                cps,
                scale,
                *strides(q),
                *strides(dout),
                *strides(out),
                NORMALIZE=normalize,
                **common,
                **LAUNCH["state_bwd"],
            )
            rstate = rseg if causal else rseg.sum(dim=1)

        if causal:
            _far_dq_kernel[(n_seg, bh)](
                q,
                k,
                v,
                mask,
                dout,
                out,
                den,
                state,
                state[..., bd * bdv :],
                dq,
                heads,
                seq,
                dim,
                dim_v,
                cps,
                scale,
                *strides(q),
                *strides(k),
                *strides(v),
                *strides(dout),
                *strides(out),
                *strides(dq),
                smb,
                smt,
                HAS_MASK=has_mask,
                HAS_INIT=has_init,
                NORMALIZE=normalize,
                **common,
                **LAUNCH["dq"],
            )
        _far_dkv_kernel[(n_seg, bh)](
            q,
            k,
            v,
            mask,
            dout,
            out,
            den,
            state,
            state[..., bd * bdv :],
            rstate,
            rstate[..., bd * bdv :],
            dq,
            dk,
            dv,
            heads,
            seq,
            dim,
            dim_v,
            cps,
            scale,
            *strides(q),
            *strides(k),
            *strides(v),
            *strides(dout),
            *strides(out),
            *strides(dq),
            *strides(dk),
            *strides(dv),
            smb,
            smt,
            HAS_MASK=has_mask,
            CAUSAL=causal,
            HAS_INIT=has_init,
            NORMALIZE=normalize,
            **common,
            **LAUNCH["dkv"],
        )
        return dq, dk, dv, None, None, None, None


def far_field_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    feature_map="elu",
    causal: bool = False,
    normalize: bool = True,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """The far field through the Triton kernels, or None for a case they do not cover.

    Covered: named feature maps of ``PHI_CODES`` (a callable returns None), fp16/bf16/fp32,
    head_dim and head_dim_v up to 128, any sequence length. Inputs are validated by the caller
    (``far_field``).
    """
    if not isinstance(feature_map, str) or feature_map not in PHI_CODES:
        return None
    if not supported(q, k, v) or q.shape[2] == 0:
        return None
    return _FarField.apply(
        q, k, v, key_padding_mask, PHI_CODES[feature_map], bool(causal), bool(normalize)
    )
