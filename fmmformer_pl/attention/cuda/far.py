"""Far field on the GPU: fused chunked linear attention in Triton (float32 states).

Shapes: q, k ``(batch, heads, seq, head_dim)``, v ``(batch, heads, seq, head_dim_v)``,
key_padding_mask bool ``(batch, seq)`` (True = padding). One call computes the far fields of
up to two feature maps phi_0, phi_1 (the paper's rank r = 2) from one pass over q, k, v; the
semantics per map are exactly those of ``fmmformer_pl.attention.far_field`` (its docstring is
the specification):

    a_i = phi(q_i),  b_j = phi(k_j) * [j not padding],  V(i) = {j} or {j <= i} (causal)
    num_i = sum_{j in V(i)} (a_i . b_j) v_j,   den_i = sum_{j in V(i)} a_i . b_j
    out_i = num_i / den_i   (0 where den_i = 0)   if normalize
    out_i = num_i / sqrt(seq)                      otherwise

Algorithm. The sequence is cut into chunks of BT positions and the chunks into *segments*.
A state kernel sums each segment's state S = sum_j b_j v_j^T (head_dim x head_dim_v) and
z = sum_j b_j, one program per (segment, batch * head); one ``cumsum_`` over the segments then
gives every segment the state of everything before it (causal), one ``sum`` the total
(bidirectional). The main kernels read that state once and need no sequential walk beyond
their own segment:

* bidirectional: num_c = a_c S_total. Nothing is carried from chunk to chunk, so the main
  kernels run one program per chunk (the whole GPU busy at any length), both feature maps
  inside the same program (q, k, v, dout read once).
* causal: each program walks its segment's chunks with the state in registers,
  num_c = a_c S + tril(a_c b_c^T) v_c, den_c = a_c z + rowsum(tril(a_c b_c^T)),
  S += b_c^T v_c, z += colsum(b_c); the feature maps one after the other.

Backward, with g_i = dout_i / den_i and s_i = -(dout_i . out_i) / den_i (normalize; else
g_i = dout_i / sqrt(seq), s_i = 0), i.e. the gradient of an unnormalised linear attention
whose values carry an extra all-ones column:

    da_i = sum_{j in V(i)} (g_i . v_j + s_i) b_j
    db_j = sum_{i: j in V(i)} (g_i . v_j + s_i) a_i,   dv_j = sum_{i: j in V(i)} (a_i . b_j) g_i

with the reverse state R = sum_i a_i g_i^T, r = sum_i s_i a_i summed per segment the same way
(causal: stored in reversed segment order, so that the same ``cumsum_`` gives each segment the
sum of everything after it). Causal da walks forward over a segment's chunks, db and dv
backward. The gradients of the two maps add up in dq, dk, dv.

Nothing of size (seq x seq) or (seq x head_dim x head_dim) is allocated: the extra memory is
one float32 per position and map (the denominators) and one state per segment and map.

Every matrix product takes bf16 operands for bf16 or fp16 inputs (fp16 is widened to bf16 so
that 1 / den cannot underflow; a state is rounded to bf16 where it is read, as in
flash-linear-attention) and accumulates in float32; states and sums stay float32. float32
inputs use float32 operands: TF32, or exact float32 under
``torch.get_float32_matmul_precision() == "highest"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ._common import (
    block_dim,
    cdiv,
    empty_like_layout,
    fp32_precision,
    offsets_fit,
    padding_as_uint8,
    strides,
    supported,
)

# Feature maps the kernels compute in registers (names of ``FEATURE_MAPS``).
PHI_CODES = {"elu": 0, "elu_flip": 1, "tanh": 2, "relu": 3, "softplus": 4}
# Most feature maps one kernel call computes (its NM); more are computed in groups.
MAPS_PER_CALL = 2

# Launch plan (tuned on an H200, bf16, head_dim 64; see docs/gpu.md). ``bench/far_tune.py``
# times alternatives by overwriting these module attributes.
PLAN = {
    # Positions per chunk. Causal chunks carry a (chunk x chunk) intra-chunk product.
    "chunk_causal": 64,
    "chunk_bidir": 64,
    # Positions per step of the state kernels (a divisor of the chunk: segments are whole
    # chunks, the state kernels may walk them in smaller steps, with fewer registers; 32 was
    # slower on the H200: 1.16 vs 0.95 ms bidirectional, docs/kernel_tune_graph2.csv).
    "state_chunk": 64,
    # Chunks per program of the bidirectional main kernels (no state carried between them).
    "main_chunks_bidir": 1,
    # Segments: aim for this many programs per SM, and no segment under this many chunks.
    "programs_per_sm": 2,
    "min_segment_chunks": 4,
    # Up to this many chunks a causal (batch, head) is one segment: no state pass, no cumsum
    # (two launches fewer). Longer ones are split so that more programs run: at 1K tokens
    # (16 chunks) one segment took 0.62 ms of GPU time, split 0.21 (docs/kernel_tune_1k.csv).
    "single_segment_chunks": 4,
    # Feature maps per call (1 or MAPS_PER_CALL). Two read the inputs once; one per call
    # keeps a causal walk's registers to one map's tiles.
    "maps_per_call_causal": 2,
    "maps_per_call_bidir": 2,
}
# bench/far_tune.py --graph, H200, 64K tokens, r = 2 (docs/kernel_tune_graph.csv: kernel time
# without launch overhead): a 128-register cap (two programs per SM) for the bidirectional
# kernels (0.96 vs 1.32 ms); 4 warps and 3 stages for the causal ones (2.29 vs 2.88 ms with
# chunks of 64, 8 warps: 4.1 ms).
_CAPPED = dict(num_warps=8, num_stages=2, maxnreg=128)
_CAUSAL = dict(num_warps=4, num_stages=3)
LAUNCH = {
    "state_fwd": dict(_CAPPED),
    "state_bwd": dict(_CAPPED),
    "fwd_bidir": dict(_CAPPED),
    "bwd_bidir": dict(_CAPPED),
    "state_fwd_causal": dict(_CAUSAL),
    "state_bwd_causal": dict(_CAUSAL),
    "fwd": dict(_CAUSAL),
    "dq": dict(_CAUSAL),
    "dkv": dict(_CAUSAL),
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
def _phi_m(x, M: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr):
    """phi_M(x), phi_M'(x) for feature map M (0 or 1) of the call."""
    if M == 0:
        return _phi(x, PHI0)
    else:
        return _phi(x, PHI1)


@triton.jit
def _load_tile(base, t, offs_d, T, D, stride_t, stride_d):
    """A (chunk x dim) tile as float32, zero outside t < T, d < D."""
    ptrs = base + t[:, None] * stride_t + offs_d[None, :] * stride_d
    mask = (t[:, None] < T) & (offs_d[None, :] < D)
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_tile(base, t, offs_d, T, D, stride_t, stride_d, x, ACCUMULATE: tl.constexpr):
    """Store a (chunk x dim) tile (cast to the pointer's type); add to what is there if
    ACCUMULATE (written by an earlier launch, or by this program before a barrier)."""
    ptrs = base + t[:, None] * stride_t + offs_d[None, :] * stride_d
    mask = (t[:, None] < T) & (offs_d[None, :] < D)
    if ACCUMULATE:
        x += tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptrs, x.to(base.dtype.element_ty), mask=mask)


@triton.jit
def _keep_keys(mask_base, t, offs_d, T, D, smt, HAS_MASK: tl.constexpr):
    """(chunk x dim) bool: key t inside the sequence, not padding, and d < D."""
    keep = t < T
    if HAS_MASK:
        pad = tl.load(mask_base + t * smt, mask=t < T, other=1)
        keep = keep & (pad == 0)
    return keep[:, None] & (offs_d[None, :] < D)


@triton.jit
def _phi_k(kk, keep2, M: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr):
    """b = phi(k) and phi'(k), zeroed at padding, outside the sequence and outside head_dim."""
    b, db = _phi_m(kk, M, PHI0, PHI1)
    return tl.where(keep2, b, 0.0), tl.where(keep2, db, 0.0)


@triton.jit
def _phi_q(qq, t, offs_d, T, D, M: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr):
    """a = phi(q) and phi'(q), zeroed outside the sequence and head_dim (phi(0) != 0)."""
    a, da = _phi_m(qq, M, PHI0, PHI1)
    inside = (t[:, None] < T) & (offs_d[None, :] < D)
    return tl.where(inside, a, 0.0), tl.where(inside, da, 0.0)


@triton.jit
def _load_g_s(
    do_base, o_base, den_base, t, offs_dv, T, DV, sdot, sdod, sot, sod, scale,
    NORMALIZE: tl.constexpr,
):  # fmt: skip
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
def _load_state(
    ptr, slot, offs_d, offs_dv, BD: tl.constexpr, BDV: tl.constexpr, SLOT: tl.constexpr
):
    """State (S: BD x BDV, z: BD) of a slot.

    A slot is SLOT = BD * BDV + BD float32 numbers: S row-major, then z.
    """
    base = ptr + slot.to(tl.int64) * SLOT
    S = tl.load(base + offs_d[:, None] * BDV + offs_dv[None, :])
    z = tl.load(base + BD * BDV + offs_d)
    return S, z


@triton.jit
def _load_state_if(
    ptr, slot, valid, offs_d, offs_dv, BD: tl.constexpr, BDV: tl.constexpr, SLOT: tl.constexpr
):
    """The state of a slot where ``valid`` (a scalar), else zeros (slot may then be < 0)."""
    base = ptr + slot.to(tl.int64) * SLOT
    S = tl.load(base + offs_d[:, None] * BDV + offs_dv[None, :], mask=valid, other=0.0)
    z = tl.load(base + BD * BDV + offs_d, mask=valid, other=0.0)
    return S, z


@triton.jit
def _store_state(
    ptr, slot, S, z, offs_d, offs_dv, BD: tl.constexpr, BDV: tl.constexpr, SLOT: tl.constexpr
):
    base = ptr + slot.to(tl.int64) * SLOT
    tl.store(base + offs_d[:, None] * BDV + offs_dv[None, :], S)
    tl.store(base + BD * BDV + offs_d, z)


@triton.jit
def _state_fwd_kernel(
    k_ptr, v_ptr, mask_ptr, seg_ptr,
    H, T, D, DV, CPS,
    skb, skh, skt, skd, svb, svh, svt, svd, smb, smt,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, HAS_MASK: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr, DOT_DTYPE: tl.constexpr, SLOT: tl.constexpr,
):  # fmt: skip
    """Per segment and map: S = sum_j b_j v_j^T, z = sum_j b_j into slot (bh, segment, map).

    Grid (segments, batch * heads); both maps' states live in registers.
    """
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
    S0 = tl.zeros([BD, BDV], dtype=tl.float32)
    z0 = tl.zeros([BD], dtype=tl.float32)
    S1 = tl.zeros([BD, BDV], dtype=tl.float32)
    z1 = tl.zeros([BD], dtype=tl.float32)
    t0 = pid_s * CPS * BT
    for c in range(0, CPS):
        t = t0 + c * BT + offs_t
        kk = _load_tile(k_base, t, offs_d, T, D, skt, skd)
        keep2 = _keep_keys(mask_base, t, offs_d, T, D, smt, HAS_MASK)
        vv = _load_tile(v_base, t, offs_dv, T, DV, svt, svd).to(DOT_DTYPE)
        b, _ = _phi_k(kk, keep2, 0, PHI0, PHI1)
        S0 += tl.dot(tl.trans(b.to(DOT_DTYPE)), vv, input_precision=PREC)
        z0 += tl.sum(b, axis=0)
        if NM == 2:
            b, _ = _phi_k(kk, keep2, 1, PHI0, PHI1)
            S1 += tl.dot(tl.trans(b.to(DOT_DTYPE)), vv, input_precision=PREC)
            z1 += tl.sum(b, axis=0)
    slot = (pid_bh * n_seg + pid_s) * NM
    _store_state(seg_ptr, slot, S0, z0, offs_d, offs_dv, BD, BDV, SLOT)
    if NM == 2:
        _store_state(seg_ptr, slot + 1, S1, z1, offs_d, offs_dv, BD, BDV, SLOT)


@triton.jit
def _fwd_causal_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, st_ptr, o0_ptr, o1_ptr, den_ptr,
    H, T, D, DV, CPS, scale,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sob, soh, sot, sod, smb, smt,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_INIT: tl.constexpr, NORMALIZE: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr, DOT_DTYPE: tl.constexpr, SLOT: tl.constexpr,
):  # fmt: skip
    """Causal out_m (and den_m) of one segment's chunks. Grid (segments, batch * heads).

    HAS_INIT: st holds the inclusive cumsum over segments of the state kernel's slots
    (bh, segment, map); this program (= segment pid_s) starts from slot pid_s - 1. The maps
    run one after the other, each walking the segment with its state in registers.
    """
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    n_prog = tl.num_programs(0)
    n_bh = tl.num_programs(1)
    bb = pid_bh // H
    hh = pid_bh % H
    q_base = q_ptr + bb * sqb + hh * sqh
    k_base = k_ptr + bb * skb + hh * skh
    v_base = v_ptr + bb * svb + hh * svh
    mask_base = mask_ptr + bb * smb
    offs_t = tl.arange(0, BT)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    causal_mask = offs_t[:, None] >= offs_t[None, :]
    t0 = pid_s * CPS * BT
    for m in tl.static_range(NM):
        if m == 0:
            o_base = o0_ptr + bb * sob + hh * soh
        else:
            o_base = o1_ptr + bb * sob + hh * soh
        den_base = den_ptr + (m * n_bh + pid_bh) * T
        if HAS_INIT:
            S, z = _load_state_if(
                st_ptr, (pid_bh * n_prog + pid_s - 1) * NM + m, pid_s > 0,
                offs_d, offs_dv, BD, BDV, SLOT,
            )  # fmt: skip
        else:
            S = tl.zeros([BD, BDV], dtype=tl.float32)
            z = tl.zeros([BD], dtype=tl.float32)
        for c in range(0, CPS):
            t = t0 + c * BT + offs_t
            qq = _load_tile(q_base, t, offs_d, T, D, sqt, sqd)
            a, _ = _phi_q(qq, t, offs_d, T, D, m, PHI0, PHI1)
            den = tl.sum(a * z[None, :], axis=1)
            a = a.to(DOT_DTYPE)
            num = tl.dot(a, S.to(DOT_DTYPE), input_precision=PREC)
            kk = _load_tile(k_base, t, offs_d, T, D, skt, skd)
            keep2 = _keep_keys(mask_base, t, offs_d, T, D, smt, HAS_MASK)
            b, _ = _phi_k(kk, keep2, m, PHI0, PHI1)
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
            _store_tile(o_base, t, offs_dv, T, DV, sot, sod, out, False)


@triton.jit
def _state_bwd_kernel(
    q_ptr, do0_ptr, do1_ptr, o0_ptr, o1_ptr, den_ptr, seg_ptr,
    H, T, D, DV, CPS, scale,
    sqb, sqh, sqt, sqd, sdob, sdoh, sdot, sdod, sob, soh, sot, sod,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr,
    NORMALIZE: tl.constexpr, REVERSED: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr, DOT_DTYPE: tl.constexpr, SLOT: tl.constexpr,
):  # fmt: skip
    """Per segment and map: R = sum_i a_i g_i^T, r = sum_i s_i a_i. Grid (segments, bh).

    REVERSED stores segment s at index n_seg - 1 - s, so that a cumsum over the index gives
    each segment the sum of itself and every later one.
    """
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    n_seg = tl.num_programs(0)
    n_bh = tl.num_programs(1)
    bb = pid_bh // H
    hh = pid_bh % H
    q_base = q_ptr + bb * sqb + hh * sqh
    do0_base = do0_ptr + bb * sdob + hh * sdoh
    do1_base = do1_ptr + bb * sdob + hh * sdoh
    o0_base = o0_ptr + bb * sob + hh * soh
    o1_base = o1_ptr + bb * sob + hh * soh
    den0_base = den_ptr + pid_bh * T
    den1_base = den_ptr + (n_bh + pid_bh) * T
    offs_t = tl.arange(0, BT)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    R0 = tl.zeros([BD, BDV], dtype=tl.float32)
    r0 = tl.zeros([BD], dtype=tl.float32)
    R1 = tl.zeros([BD, BDV], dtype=tl.float32)
    r1 = tl.zeros([BD], dtype=tl.float32)
    t0 = pid_s * CPS * BT
    for c in range(0, CPS):
        t = t0 + c * BT + offs_t
        qq = _load_tile(q_base, t, offs_d, T, D, sqt, sqd)
        a, _ = _phi_q(qq, t, offs_d, T, D, 0, PHI0, PHI1)
        g, s = _load_g_s(
            do0_base, o0_base, den0_base, t, offs_dv, T, DV, sdot, sdod, sot, sod, scale,
            NORMALIZE,
        )  # fmt: skip
        r0 += tl.sum(a * s[:, None], axis=0)
        R0 += tl.dot(tl.trans(a.to(DOT_DTYPE)), g.to(DOT_DTYPE), input_precision=PREC)
        if NM == 2:
            a, _ = _phi_q(qq, t, offs_d, T, D, 1, PHI0, PHI1)
            g, s = _load_g_s(
                do1_base, o1_base, den1_base, t, offs_dv, T, DV, sdot, sdod, sot, sod, scale,
                NORMALIZE,
            )  # fmt: skip
            r1 += tl.sum(a * s[:, None], axis=0)
            R1 += tl.dot(tl.trans(a.to(DOT_DTYPE)), g.to(DOT_DTYPE), input_precision=PREC)
    if REVERSED:
        slot = (pid_bh * n_seg + n_seg - 1 - pid_s) * NM
    else:
        slot = (pid_bh * n_seg + pid_s) * NM
    _store_state(seg_ptr, slot, R0, r0, offs_d, offs_dv, BD, BDV, SLOT)
    if NM == 2:
        _store_state(seg_ptr, slot + 1, R1, r1, offs_d, offs_dv, BD, BDV, SLOT)


@triton.jit
def _fwd_bidir_kernel(
    q_ptr, st_ptr, o0_ptr, o1_ptr, den_ptr,
    H, T, D, DV, CPS, scale,
    sqb, sqh, sqt, sqd, sob, soh, sot, sod,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, NORMALIZE: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr, DOT_DTYPE: tl.constexpr, SLOT: tl.constexpr,
):  # fmt: skip
    """Bidirectional out_m = phi_m(q) S_m / phi_m(q) z_m from the totals (bh, map) in st.

    Grid (programs, batch * heads): each program reads the states once (rounded to the
    product dtype) and then CPS chunks of q; nothing is carried between chunks.
    """
    pid_p = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    n_bh = tl.num_programs(1)
    bb = pid_bh // H
    hh = pid_bh % H
    q_base = q_ptr + bb * sqb + hh * sqh
    o0_base = o0_ptr + bb * sob + hh * soh
    o1_base = o1_ptr + bb * sob + hh * soh
    offs_t = tl.arange(0, BT)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    S0, z0 = _load_state(st_ptr, pid_bh * NM, offs_d, offs_dv, BD, BDV, SLOT)
    S0 = S0.to(DOT_DTYPE)
    if NM == 2:
        S1, z1 = _load_state(st_ptr, pid_bh * NM + 1, offs_d, offs_dv, BD, BDV, SLOT)
        S1 = S1.to(DOT_DTYPE)
    t0 = pid_p * CPS * BT
    for c in range(0, CPS):
        t = t0 + c * BT + offs_t
        qq = _load_tile(q_base, t, offs_d, T, D, sqt, sqd)
        for m in tl.static_range(NM):
            if m == 0:
                S, z, o_base = S0, z0, o0_base
            else:
                S, z, o_base = S1, z1, o1_base
            a, _ = _phi_q(qq, t, offs_d, T, D, m, PHI0, PHI1)
            num = tl.dot(a.to(DOT_DTYPE), S, input_precision=PREC)
            if NORMALIZE:
                den = tl.sum(a * z[None, :], axis=1)
                pos = den > 0
                out = tl.where(pos[:, None], num / tl.where(pos, den, 1.0)[:, None], 0.0)
                tl.store(den_ptr + (m * n_bh + pid_bh) * T + t, den, mask=t < T)
            else:
                out = num * scale
            _store_tile(o_base, t, offs_dv, T, DV, sot, sod, out, False)


@triton.jit
def _dq_bidir_kernel(
    q_ptr, do0_ptr, do1_ptr, o0_ptr, o1_ptr, den_ptr, st_ptr, dq_ptr,
    H, T, D, DV, CPS, scale,
    sqb, sqh, sqt, sqd, sdob, sdoh, sdot, sdod, sob, soh, sot, sod, sdqb, sdqh, sdqt, sdqd,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, NORMALIZE: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr, DOT_DTYPE: tl.constexpr, SLOT: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Bidirectional dq = sum_m (g S^T + s z^T) phi_m'(q) from the totals S, z.

    Grid (programs, batch * heads); the states are read once per program.
    """
    pid_p = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    n_bh = tl.num_programs(1)
    bb = pid_bh // H
    hh = pid_bh % H
    q_base = q_ptr + bb * sqb + hh * sqh
    dq_base = dq_ptr + bb * sdqb + hh * sdqh
    offs_t = tl.arange(0, BT)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    S0, z0 = _load_state(st_ptr, pid_bh * NM, offs_d, offs_dv, BD, BDV, SLOT)
    S0 = S0.to(DOT_DTYPE)
    if NM == 2:
        S1, z1 = _load_state(st_ptr, pid_bh * NM + 1, offs_d, offs_dv, BD, BDV, SLOT)
        S1 = S1.to(DOT_DTYPE)
    t0 = pid_p * CPS * BT
    for c in range(0, CPS):
        t = t0 + c * BT + offs_t
        qq = _load_tile(q_base, t, offs_d, T, D, sqt, sqd)
        dq = tl.zeros([BT, BD], dtype=tl.float32)
        for m in tl.static_range(NM):
            if m == 0:
                S, z = S0, z0
                do_base = do0_ptr + bb * sdob + hh * sdoh
                o_base = o0_ptr + bb * sob + hh * soh
            else:
                S, z = S1, z1
                do_base = do1_ptr + bb * sdob + hh * sdoh
                o_base = o1_ptr + bb * sob + hh * soh
            den_base = den_ptr + (m * n_bh + pid_bh) * T
            g, s = _load_g_s(
                do_base, o_base, den_base, t, offs_dv, T, DV, sdot, sdod, sot, sod, scale,
                NORMALIZE,
            )  # fmt: skip
            da = tl.dot(g.to(DOT_DTYPE), tl.trans(S), input_precision=PREC)
            _, dphi_q = _phi_q(qq, t, offs_d, T, D, m, PHI0, PHI1)
            dq += (da + s[:, None] * z[None, :]) * dphi_q
        _store_tile(dq_base, t, offs_d, T, D, sdqt, sdqd, dq, ACC)


@triton.jit
def _dkv_bidir_kernel(
    k_ptr, v_ptr, mask_ptr, rt_ptr, dk_ptr, dv_ptr,
    H, T, D, DV, CPS,
    skb, skh, skt, skd, svb, svh, svt, svd,
    sdkb, sdkh, sdkt, sdkd, sdvb, sdvh, sdvt, sdvd, smb, smt,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, HAS_MASK: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr, DOT_DTYPE: tl.constexpr, SLOT: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Bidirectional dk = sum_m (v R^T + r) phi_m'(k), dv = sum_m b R from the totals R, r.

    Grid (programs, batch * heads); the states are read once per program.
    """
    pid_p = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    bb = pid_bh // H
    hh = pid_bh % H
    k_base = k_ptr + bb * skb + hh * skh
    v_base = v_ptr + bb * svb + hh * svh
    mask_base = mask_ptr + bb * smb
    dk_base = dk_ptr + bb * sdkb + hh * sdkh
    dv_base = dv_ptr + bb * sdvb + hh * sdvh
    offs_t = tl.arange(0, BT)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    R0, r0 = _load_state(rt_ptr, pid_bh * NM, offs_d, offs_dv, BD, BDV, SLOT)
    R0 = R0.to(DOT_DTYPE)
    if NM == 2:
        R1, r1 = _load_state(rt_ptr, pid_bh * NM + 1, offs_d, offs_dv, BD, BDV, SLOT)
        R1 = R1.to(DOT_DTYPE)
    t0 = pid_p * CPS * BT
    for c in range(0, CPS):
        t = t0 + c * BT + offs_t
        kk = _load_tile(k_base, t, offs_d, T, D, skt, skd)
        keep2 = _keep_keys(mask_base, t, offs_d, T, D, smt, HAS_MASK)
        vv = _load_tile(v_base, t, offs_dv, T, DV, svt, svd).to(DOT_DTYPE)
        dk = tl.zeros([BT, BD], dtype=tl.float32)
        dv = tl.zeros([BT, BDV], dtype=tl.float32)
        for m in tl.static_range(NM):
            if m == 0:
                R, r = R0, r0
            else:
                R, r = R1, r1
            b, dphi_k = _phi_k(kk, keep2, m, PHI0, PHI1)
            db = tl.dot(vv, tl.trans(R), input_precision=PREC) + r[None, :]
            dk += db * dphi_k  # dphi_k is 0 at padding: padded keys get no gradient
            dv += tl.dot(b.to(DOT_DTYPE), R, input_precision=PREC)
        _store_tile(dk_base, t, offs_d, T, D, sdkt, sdkd, dk, ACC)
        _store_tile(dv_base, t, offs_dv, T, DV, sdvt, sdvd, dv, ACC)


@triton.jit
def _bwd_bidir_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, do0_ptr, do1_ptr, o0_ptr, o1_ptr, den_ptr, st_ptr, rt_ptr,
    dq_ptr, dk_ptr, dv_ptr,
    H, T, D, DV, CPS, scale,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd,
    sdob, sdoh, sdot, sdod, sob, soh, sot, sod,
    sdqb, sdqh, sdqt, sdqd, sdkb, sdkh, sdkt, sdkd, sdvb, sdvh, sdvt, sdvd, smb, smt,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, HAS_MASK: tl.constexpr,
    NORMALIZE: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr, DOT_DTYPE: tl.constexpr, SLOT: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Both bidirectional backward passes in one launch (one launch less of host overhead):
    grid (programs, batch * heads, 2), axis 2 picks dq (0) or dk, dv (1)."""
    if tl.program_id(2) == 0:
        _dq_bidir_kernel(
            q_ptr, do0_ptr, do1_ptr, o0_ptr, o1_ptr, den_ptr, st_ptr, dq_ptr,
            H, T, D, DV, CPS, scale,
            sqb, sqh, sqt, sqd, sdob, sdoh, sdot, sdod, sob, soh, sot, sod,
            sdqb, sdqh, sdqt, sdqd,
            NM, PHI0, PHI1, NORMALIZE, BT, BD, BDV, PREC, DOT_DTYPE, SLOT, ACC,
        )  # fmt: skip
    else:
        _dkv_bidir_kernel(
            k_ptr, v_ptr, mask_ptr, rt_ptr, dk_ptr, dv_ptr,
            H, T, D, DV, CPS,
            skb, skh, skt, skd, svb, svh, svt, svd,
            sdkb, sdkh, sdkt, sdkd, sdvb, sdvh, sdvt, sdvd, smb, smt,
            NM, PHI0, PHI1, HAS_MASK, BT, BD, BDV, PREC, DOT_DTYPE, SLOT, ACC,
        )  # fmt: skip


@triton.jit
def _dq_causal_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, do0_ptr, do1_ptr, o0_ptr, o1_ptr, den_ptr, st_ptr, dq_ptr,
    H, T, D, DV, CPS, scale,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd,
    sdob, sdoh, sdot, sdod, sob, soh, sot, sod, sdqb, sdqh, sdqt, sdqd, smb, smt,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_INIT: tl.constexpr, NORMALIZE: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr, DOT_DTYPE: tl.constexpr, SLOT: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Causal dq, forward over a segment's chunks: da = (g S^T + s z^T) + tril(g v^T + s) b.

    st: the forward's inclusive cumsum of states (segment pid_s starts from slot pid_s - 1).
    The maps run one after the other; the second adds to the first's dq.
    """
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    n_seg = tl.num_programs(0)
    n_bh = tl.num_programs(1)
    bb = pid_bh // H
    hh = pid_bh % H
    q_base = q_ptr + bb * sqb + hh * sqh
    k_base = k_ptr + bb * skb + hh * skh
    v_base = v_ptr + bb * svb + hh * svh
    dq_base = dq_ptr + bb * sdqb + hh * sdqh
    mask_base = mask_ptr + bb * smb
    offs_t = tl.arange(0, BT)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    causal_mask = offs_t[:, None] >= offs_t[None, :]
    t0 = pid_s * CPS * BT
    for m in tl.static_range(NM):
        if m == 0:
            do_base = do0_ptr + bb * sdob + hh * sdoh
            o_base = o0_ptr + bb * sob + hh * soh
        else:
            do_base = do1_ptr + bb * sdob + hh * sdoh
            o_base = o1_ptr + bb * sob + hh * soh
            tl.debug_barrier()  # map 0's dq is stored before map 1 reads it back
        den_base = den_ptr + (m * n_bh + pid_bh) * T
        if HAS_INIT:
            S, z = _load_state_if(
                st_ptr, (pid_bh * n_seg + pid_s - 1) * NM + m, pid_s > 0,
                offs_d, offs_dv, BD, BDV, SLOT,
            )  # fmt: skip
        else:
            S = tl.zeros([BD, BDV], dtype=tl.float32)
            z = tl.zeros([BD], dtype=tl.float32)
        for c in range(0, CPS):
            t = t0 + c * BT + offs_t
            kk = _load_tile(k_base, t, offs_d, T, D, skt, skd)
            keep2 = _keep_keys(mask_base, t, offs_d, T, D, smt, HAS_MASK)
            b, _ = _phi_k(kk, keep2, m, PHI0, PHI1)
            vv = _load_tile(v_base, t, offs_dv, T, DV, svt, svd).to(DOT_DTYPE)
            g, s = _load_g_s(
                do_base, o_base, den_base, t, offs_dv, T, DV, sdot, sdod, sot, sod, scale,
                NORMALIZE,
            )  # fmt: skip
            g = g.to(DOT_DTYPE)
            da = tl.dot(g, tl.trans(S.to(DOT_DTYPE)), input_precision=PREC)
            da += s[:, None] * z[None, :]
            P = tl.dot(g, tl.trans(vv), input_precision=PREC)
            P = tl.where(causal_mask, P + s[:, None], 0.0)
            z += tl.sum(b, axis=0)
            b = b.to(DOT_DTYPE)
            da += tl.dot(P.to(DOT_DTYPE), b, input_precision=PREC)
            S += tl.dot(tl.trans(b), vv, input_precision=PREC)
            qq = _load_tile(q_base, t, offs_d, T, D, sqt, sqd)
            _, dphi_q = _phi_q(qq, t, offs_d, T, D, m, PHI0, PHI1)
            if m == 0:  # ACC: add to another field's gradient (the fused FMM backward)
                _store_tile(dq_base, t, offs_d, T, D, sdqt, sdqd, da * dphi_q, ACC)
            else:
                _store_tile(dq_base, t, offs_d, T, D, sdqt, sdqd, da * dphi_q, True)


@triton.jit
def _dkv_causal_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, do0_ptr, do1_ptr, o0_ptr, o1_ptr, den_ptr, rt_ptr,
    dk_ptr, dv_ptr,
    H, T, D, DV, CPS, scale,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd,
    sdob, sdoh, sdot, sdod, sob, soh, sot, sod,
    sdkb, sdkh, sdkt, sdkd, sdvb, sdvh, sdvt, sdvd, smb, smt,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_INIT: tl.constexpr, NORMALIZE: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr, DOT_DTYPE: tl.constexpr, SLOT: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Causal dk, dv, backward over a segment's chunks with the reverse state R, r:

        db = v R^T + r + (tril(g v^T + s))^T a,   dv = b R + (tril(a b^T))^T g.

    rt: cumsum of the reversed-order reverse states; the state after segment pid_s (the sum of
    every later segment) is at index n_seg - 2 - pid_s.
    """
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    n_seg = tl.num_programs(0)
    n_bh = tl.num_programs(1)
    bb = pid_bh // H
    hh = pid_bh % H
    q_base = q_ptr + bb * sqb + hh * sqh
    k_base = k_ptr + bb * skb + hh * skh
    v_base = v_ptr + bb * svb + hh * svh
    dk_base = dk_ptr + bb * sdkb + hh * sdkh
    dv_base = dv_ptr + bb * sdvb + hh * sdvh
    mask_base = mask_ptr + bb * smb
    offs_t = tl.arange(0, BT)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    # Row j (key), column i (query) of the transposed intra-chunk products: i >= j.
    causal_mask_t = offs_t[None, :] >= offs_t[:, None]
    t0 = pid_s * CPS * BT
    for m in tl.static_range(NM):
        if m == 0:
            do_base = do0_ptr + bb * sdob + hh * sdoh
            o_base = o0_ptr + bb * sob + hh * soh
        else:
            do_base = do1_ptr + bb * sdob + hh * sdoh
            o_base = o1_ptr + bb * sob + hh * soh
            tl.debug_barrier()  # map 0's dk, dv are stored before map 1 reads them back
        den_base = den_ptr + (m * n_bh + pid_bh) * T
        if HAS_INIT:
            R, r = _load_state_if(
                rt_ptr, (pid_bh * n_seg + n_seg - 2 - pid_s) * NM + m, pid_s < n_seg - 1,
                offs_d, offs_dv, BD, BDV, SLOT,
            )  # fmt: skip
        else:
            R = tl.zeros([BD, BDV], dtype=tl.float32)
            r = tl.zeros([BD], dtype=tl.float32)
        for cc in range(0, CPS):
            c = CPS - 1 - cc
            t = t0 + c * BT + offs_t
            kk = _load_tile(k_base, t, offs_d, T, D, skt, skd)
            keep2 = _keep_keys(mask_base, t, offs_d, T, D, smt, HAS_MASK)
            b, dphi_k = _phi_k(kk, keep2, m, PHI0, PHI1)
            b = b.to(DOT_DTYPE)
            vv = _load_tile(v_base, t, offs_dv, T, DV, svt, svd).to(DOT_DTYPE)
            g, s = _load_g_s(
                do_base, o_base, den_base, t, offs_dv, T, DV, sdot, sdod, sot, sod, scale,
                NORMALIZE,
            )  # fmt: skip
            g = g.to(DOT_DTYPE)
            db = tl.dot(vv, tl.trans(R.to(DOT_DTYPE)), input_precision=PREC) + r[None, :]
            dv = tl.dot(b, R.to(DOT_DTYPE), input_precision=PREC)
            qq = _load_tile(q_base, t, offs_d, T, D, sqt, sqd)
            a, _ = _phi_q(qq, t, offs_d, T, D, m, PHI0, PHI1)
            r += tl.sum(a * s[:, None], axis=0)
            a = a.to(DOT_DTYPE)
            Pt = tl.dot(vv, tl.trans(g), input_precision=PREC)
            Pt = tl.where(causal_mask_t, Pt + s[None, :], 0.0)
            db += tl.dot(Pt.to(DOT_DTYPE), a, input_precision=PREC)
            At = tl.dot(b, tl.trans(a), input_precision=PREC)
            At = tl.where(causal_mask_t, At, 0.0)
            dv += tl.dot(At.to(DOT_DTYPE), g, input_precision=PREC)
            R += tl.dot(tl.trans(a), g, input_precision=PREC)
            # dphi_k is 0 at padding, so padded keys get no gradient (b was 0 there too).
            if m == 0:
                _store_tile(dk_base, t, offs_d, T, D, sdkt, sdkd, db * dphi_k, ACC)
                _store_tile(dv_base, t, offs_dv, T, DV, sdvt, sdvd, dv, ACC)
            else:
                _store_tile(dk_base, t, offs_d, T, D, sdkt, sdkd, db * dphi_k, True)
                _store_tile(dv_base, t, offs_dv, T, DV, sdvt, sdvd, dv, True)


def map_groups(codes: Sequence[int], causal: bool) -> list[tuple[int, ...]]:
    """The feature-map codes cut into the groups that one kernel call computes."""
    n = PLAN["maps_per_call_causal" if causal else "maps_per_call_bidir"]
    if n not in range(1, MAPS_PER_CALL + 1):
        raise ValueError(f"PLAN: maps per call must be 1..{MAPS_PER_CALL}, got {n}")
    return [tuple(codes[i : i + n]) for i in range(0, len(codes), n)]


_SM_COUNTS: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 8  # the Triton interpreter on the CPU (tests of the kernels' logic)
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNTS:
        _SM_COUNTS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNTS[index]


def _segments(batch_heads: int, n_chunks: int, device: torch.device) -> tuple[int, int]:
    """(chunks per segment, segments per (batch, head)) for the state passes."""
    target = PLAN["programs_per_sm"] * _sm_count(device)
    per_bh = max(1, min(n_chunks, cdiv(target, batch_heads)))
    cps = max(cdiv(n_chunks, per_bh), min(PLAN["min_segment_chunks"], n_chunks))
    return cps, cdiv(n_chunks, cps)


def _dot_dtype(dtype: torch.dtype):
    return tl.float32 if dtype == torch.float32 else tl.bfloat16


class _Plan:
    """Chunking, segments and the constexpr arguments shared by one call's kernels."""

    def __init__(self, q, v, causal, n_maps, phi_codes):
        batch, heads, seq, dim = q.shape
        self.bh, self.heads, self.seq = batch * heads, heads, seq
        self.dim, self.dim_v = dim, v.shape[-1]
        self.bd, self.bdv = block_dim(dim), block_dim(self.dim_v)
        self.slot = self.bd * self.bdv + self.bd  # float32 per state: S (bd x bdv), then z
        self.bt = PLAN["chunk_causal"] if causal else PLAN["chunk_bidir"]
        n_chunks = cdiv(seq, self.bt)
        if causal and n_chunks <= PLAN["single_segment_chunks"]:
            self.cps, self.n_seg = n_chunks, 1
        else:
            self.cps, self.n_seg = _segments(self.bh, n_chunks, q.device)
        # Bidirectional main kernels: a few chunks per program, no carried state.
        self.main_cps = PLAN["main_chunks_bidir"]
        self.n_main = cdiv(n_chunks, self.main_cps)
        self.state_bt = min(PLAN["state_chunk"], self.bt)
        if self.bt % self.state_bt:
            raise ValueError(f"PLAN: state_chunk {self.state_bt} must divide chunk {self.bt}")
        self.state_cps = self.cps * (self.bt // self.state_bt)
        self.constexprs = dict(
            NM=n_maps,
            PHI0=phi_codes[0],
            PHI1=phi_codes[-1],
            BT=self.bt,
            BD=self.bd,
            BDV=self.bdv,
            PREC=fp32_precision(q.dtype),
            DOT_DTYPE=_dot_dtype(q.dtype),
            SLOT=self.slot,
        )

    @property
    def scale(self) -> float:
        """1 / sqrt(seq) of normalize=False. A property: the custom op's fake implementation
        builds a plan from a symbolic length, and math.sqrt there would pin the length (a
        recompile per sequence length under torch.compile)."""
        return 1.0 / math.sqrt(self.seq)

    @property
    def state_constexprs(self):
        return {**self.constexprs, "BT": self.state_bt}

    def states(self, q, n_maps):
        return torch.empty(
            self.bh, self.n_seg, n_maps, self.slot, device=q.device, dtype=torch.float32
        )


def _far_settings(q, v, key_padding_mask, phi_codes, causal, normalize):
    """(the mask as uint8, the settings ``far_backward`` takes): the plan is a function of the
    shapes, so a backward that rebuilds them gets the forward's segments."""
    mask, smb, smt = padding_as_uint8(key_padding_mask, q)
    plan = _Plan(q, v, causal, len(phi_codes), phi_codes)
    has_mask = key_padding_mask is not None
    return mask, (phi_codes, causal, normalize, smb, smt, has_mask, plan)


def far_saved(q, k, v, key_padding_mask, den, state, outs, phi_codes, causal, normalize):
    """What ``far_backward`` needs (tensors first, then the settings), as ``far_forward``
    returns it, rebuilt by a caller that kept only the tensors (the custom op of
    ``fmm_op.py``)."""
    mask, settings = _far_settings(q, v, key_padding_mask, phi_codes, causal, normalize)
    return (q, k, v, mask, den, state, *outs), settings


def far_forward(q, k, v, key_padding_mask, phi_codes, causal, normalize):
    """The far fields of one or two feature maps: ``(outs, saved)``; ``saved`` is what
    ``far_backward`` needs (tensors first, then the settings)."""
    nm = len(phi_codes)
    mask, settings = _far_settings(q, v, key_padding_mask, phi_codes, causal, normalize)
    *_, smb, smt, has_mask, plan = settings
    outs = [empty_like_layout(q, plan.dim_v) for _ in range(nm)]
    o1 = outs[-1]
    # float32 denominators (map, bh, seq); normalize=False needs none (out: a stand-in).
    den = (
        torch.empty(nm, plan.bh, plan.seq, device=q.device, dtype=torch.float32)
        if normalize
        else outs[0]
    )
    sizes = (plan.heads, plan.seq, plan.dim, plan.dim_v)
    state = None
    if not causal or plan.n_seg > 1:
        seg = plan.states(q, nm)  # (bh, n_seg, map, slot)
        _state_fwd_kernel[(plan.n_seg, plan.bh)](
            k, v, mask, seg, *sizes, plan.state_cps, *strides(k), *strides(v), smb, smt,
            HAS_MASK=has_mask, **plan.state_constexprs,
            **LAUNCH["state_fwd_causal" if causal else "state_fwd"],
        )  # fmt: skip
        if causal:
            state = seg.cumsum_(dim=1)  # inclusive: segment s starts from slot s - 1
        else:
            state = seg[:, 0] if plan.n_seg == 1 else seg.sum(dim=1)  # (bh, map, slot)
    if causal:
        _fwd_causal_kernel[(plan.n_seg, plan.bh)](
            q, k, v, mask, state if state is not None else den, outs[0], o1, den,
            *sizes, plan.cps, plan.scale,
            *strides(q), *strides(k), *strides(v), *strides(outs[0]), smb, smt,
            HAS_MASK=has_mask, HAS_INIT=state is not None, NORMALIZE=normalize,
            **plan.constexprs, **LAUNCH["fwd"],
        )  # fmt: skip
    else:
        _fwd_bidir_kernel[(plan.n_main, plan.bh)](
            q, state, outs[0], o1, den, *sizes, plan.main_cps, plan.scale,
            *strides(q), *strides(outs[0]),
            NORMALIZE=normalize, **plan.constexprs, **LAUNCH["fwd_bidir"],
        )  # fmt: skip
    return outs, ((q, k, v, mask, den, state, *outs), settings)


def far_backward(saved, douts, grads=None):
    """dq, dk, dv of the far fields (``saved`` from ``far_forward``; a None in ``douts`` is a
    zero gradient); with ``grads`` = (dq, dk, dv) the kernels add to those tensors."""
    (q, k, v, mask, den, state, *outs), settings = saved
    # The forward's plan: the saved states are laid out by its segments.
    phi_codes, causal, normalize, smb, smt, has_mask, plan = settings
    nm = len(phi_codes)
    douts = [torch.zeros_like(o) if g is None else g for g, o in zip(douts, outs, strict=True)]
    # The kernels take one layout for all douts, with 32-bit offsets inside a (batch, head).
    if any(g.stride() != douts[0].stride() for g in douts) or not offsets_fit(douts[0]):
        douts = [g.contiguous() for g in douts]
    do1, o1 = douts[-1], outs[-1]
    sizes = (plan.heads, plan.seq, plan.dim, plan.dim_v)
    accumulate = grads is not None
    if grads is None:
        grads = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dq, dk, dv = grads
    cx = plan.constexprs
    rstate = None
    if not causal or plan.n_seg > 1:
        rseg = plan.states(q, nm)
        _state_bwd_kernel[(plan.n_seg, plan.bh)](
            q, douts[0], do1, outs[0], o1, den, rseg, *sizes, plan.state_cps, plan.scale,
            *strides(q), *strides(douts[0]), *strides(outs[0]),
            NORMALIZE=normalize, REVERSED=causal, **plan.state_constexprs,
            **LAUNCH["state_bwd_causal" if causal else "state_bwd"],
        )  # fmt: skip
        if causal:
            rstate = rseg.cumsum_(dim=1)  # reversed order: sums of this and later segments
        else:
            rstate = rseg[:, 0] if plan.n_seg == 1 else rseg.sum(dim=1)
    if not causal:
        _bwd_bidir_kernel[(plan.n_main, plan.bh, 2)](
            q, k, v, mask, douts[0], do1, outs[0], o1, den, state, rstate, dq, dk, dv,
            *sizes, plan.main_cps, plan.scale,
            *strides(q), *strides(k), *strides(v), *strides(douts[0]), *strides(outs[0]),
            *strides(dq), *strides(dk), *strides(dv), smb, smt,
            HAS_MASK=has_mask, NORMALIZE=normalize, ACC=accumulate, **cx,
            **LAUNCH["bwd_bidir"],
        )  # fmt: skip
        return dq, dk, dv
    has_init = state is not None
    _dq_causal_kernel[(plan.n_seg, plan.bh)](
        q, k, v, mask, douts[0], do1, outs[0], o1, den, state if has_init else den, dq,
        *sizes, plan.cps, plan.scale,
        *strides(q), *strides(k), *strides(v), *strides(douts[0]), *strides(outs[0]),
        *strides(dq), smb, smt,
        HAS_MASK=has_mask, HAS_INIT=has_init, NORMALIZE=normalize, ACC=accumulate, **cx,
        **LAUNCH["dq"],
    )  # fmt: skip
    _dkv_causal_kernel[(plan.n_seg, plan.bh)](
        q, k, v, mask, douts[0], do1, outs[0], o1, den, rstate if has_init else den, dk, dv,
        *sizes, plan.cps, plan.scale,
        *strides(q), *strides(k), *strides(v), *strides(douts[0]), *strides(outs[0]),
        *strides(dk), *strides(dv), smb, smt,
        HAS_MASK=has_mask, HAS_INIT=has_init, NORMALIZE=normalize, ACC=accumulate, **cx,
        **LAUNCH["dkv"],
    )  # fmt: skip
    return dq, dk, dv


class _FarFields(torch.autograd.Function):
    """The far fields of one or two feature maps: (q, k, v) -> (out_0[, out_1])."""

    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, phi_codes, causal, normalize):
        outs, (tensors, settings) = far_forward(
            q, k, v, key_padding_mask, phi_codes, causal, normalize
        )
        ctx.save_for_backward(*tensors)
        ctx.settings = settings
        return tuple(outs)

    @staticmethod
    def backward(ctx, *douts):
        dq, dk, dv = far_backward((ctx.saved_tensors, ctx.settings), douts)
        return dq, dk, dv, None, None, None, None


def far_fields_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    feature_maps: Sequence,
    causal: bool = False,
    normalize: bool = True,
    key_padding_mask: torch.Tensor | None = None,
) -> list[torch.Tensor] | None:
    """The far fields of several feature maps through the Triton kernels (one output per map),
    or None for a case they do not cover.

    Covered: named feature maps of ``PHI_CODES`` (a callable returns None), fp16/bf16/fp32,
    head_dim and head_dim_v up to 128, any sequence length. The maps are computed
    in groups (``map_groups``), each from one pass over the inputs. Inputs are validated by the
    caller (``far_field`` / ``far_fields``).
    """
    names = list(feature_maps)
    if not names or not all(isinstance(n, str) and n in PHI_CODES for n in names):
        return None
    if not supported(q, k, v) or q.shape[2] == 0:
        return None
    codes = [PHI_CODES[n] for n in names]
    outs: list[torch.Tensor] = []
    for group in map_groups(codes, bool(causal)):
        outs.extend(
            _FarFields.apply(q, k, v, key_padding_mask, group, bool(causal), bool(normalize))
        )
    return outs


def far_field_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    feature_map="elu",
    causal: bool = False,
    normalize: bool = True,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """One feature map's far field through the Triton kernels, or None (see
    ``far_fields_triton``)."""
    outs = far_fields_triton(q, k, v, [feature_map], causal, normalize, key_padding_mask)
    return None if outs is None else outs[0]
