"""Far field on the GPU: the causal kernels. One program per segment walks its chunks with the
state in registers: forward (out, den), backward dq (forward walk) and dk, dv (backward walk).
``op.py`` explains the algorithm and launches these.

Each walk's work on one chunk for one feature map is a ``_*_step`` helper. With two maps a
kernel either walks the segment once per map (PAIR False: one map's state in registers at a
time) or once for both (PAIR True: both states in registers, and the inputs and outputs the
maps share, v, q and the gradients, read and written once per chunk instead of once per map).

FEATURE_NORMALIZE: a and b below are phi(q) / sum_d phi(q) and phi(k) / sum_d phi(k); the
feature buffer holds phi unnormalised (``tiles.stored_features``, ``through_normalize``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..common.tiles import (
    blend_add,
    blend_start,
    dphi_of_map,
    feature_base,
    gs_bases,
    inverse_row_sum,
    keep_keys,
    load_features,
    load_g_s,
    load_tile,
    normalize_features,
    phi_keys,
    phi_queries,
    program_ids,
    store_features,
    store_tile,
    stored_features,
    through_normalize,
    walk_states,
)


@triton.jit
def _fwd_step(
    qq, vv, t, S, z, phi_ptr, pid_bh, n_bh, k_base, mask_base, causal_mask, offs_d,
    T, D, skt, skd, smt,
    M: tl.constexpr, NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_INIT: tl.constexpr, FEATURE_NORMALIZE: tl.constexpr,
    FAST: tl.constexpr, PREC: tl.constexpr, DOT_DTYPE: tl.constexpr,
):  # fmt: skip
    """(num, den, S, z) of map M on one chunk: num = a S + tril(a b^T) v, den = a z +
    rowsum(tril(a b^T)); the state moves past the chunk. Stores phi_M(q), and phi_M(k) where
    the state pass did not (not HAS_INIT)."""
    a_base = feature_base(phi_ptr, 0, M, NM, pid_bh, n_bh, T, D)
    b_base = feature_base(phi_ptr, 1, M, NM, pid_bh, n_bh, T, D)
    p = phi_queries(qq, t, offs_d, T, D, M, PHI0, PHI1, FAST)
    a = normalize_features(p, FEATURE_NORMALIZE)
    den = tl.sum(a * z[None, :], axis=1)
    a = a.to(DOT_DTYPE)
    if FEATURE_NORMALIZE:
        store_features(a_base, t, offs_d, T, D, p)
    else:
        store_features(a_base, t, offs_d, T, D, a)
    num = tl.dot(a, S.to(DOT_DTYPE), input_precision=PREC)
    if HAS_INIT:  # the state pass has stored phi(k)
        b = stored_features(load_features(b_base, t, offs_d, T, D), FEATURE_NORMALIZE)
        z += tl.sum(b.to(tl.float32), axis=0)
    else:
        kk = load_tile(k_base, t, offs_d, T, D, skt, skd)
        keep2 = keep_keys(mask_base, t, offs_d, T, D, smt, HAS_MASK)
        p = phi_keys(kk, keep2, M, PHI0, PHI1, FAST)
        b = normalize_features(p, FEATURE_NORMALIZE)
        z += tl.sum(b, axis=0)
        b = b.to(DOT_DTYPE)
        if FEATURE_NORMALIZE:
            store_features(b_base, t, offs_d, T, D, p)
        else:
            store_features(b_base, t, offs_d, T, D, b)
    A = tl.dot(a, tl.trans(b), input_precision=PREC)
    A = tl.where(causal_mask, A, 0.0)
    num += tl.dot(A.to(DOT_DTYPE), vv, input_precision=PREC)
    den += tl.sum(A, axis=1)
    S += tl.dot(tl.trans(b), vv, input_precision=PREC)
    return num, den, S, z


@triton.jit
def _fwd_store(
    o_base, den_base, t, offs_dv, T, DV, sot, sod, num, den, scale, eps,
    NORMALIZE: tl.constexpr,
):  # fmt: skip
    """Store out = num / (den + eps) (0 where that is 0) and den + eps, or num * scale without
    normalisation; returns out (float32)."""
    if NORMALIZE:
        den = den + eps
        pos = den > 0
        out = tl.where(pos[:, None], num / tl.where(pos, den, 1.0)[:, None], 0.0)
        tl.store(den_base + t, den, mask=t < T)
    else:
        out = num * scale
    store_tile(o_base, t, offs_dv, T, DV, sot, sod, out, False)
    return out


@triton.jit
def fwd_causal_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, st_ptr, o0_ptr, o1_ptr, den_ptr, phi_ptr,
    near_ptr, c_ptr, y_ptr,
    H, T, D, DV, CPS, scale, eps,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sob, soh, sot, sod, smb, smt,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_INIT: tl.constexpr, NORMALIZE: tl.constexpr, FEATURE_NORMALIZE: tl.constexpr,
    FAST: tl.constexpr, PAIR: tl.constexpr,
    BLEND: tl.constexpr, HAS_NEAR: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr, DOT_DTYPE: tl.constexpr, SLOT: tl.constexpr,
):  # fmt: skip
    """Causal out_m (and den_m) of one segment's chunks. Grid (segments, batch * heads).

    BLEND (the fused FMM forward; one walk over every map): also y = c_near * near +
    sum_m c_m out_m (``tiles.blend_start``, ``blend_add``; near, y laid out like out).

    HAS_INIT: st holds the inclusive cumsum over segments of the state kernel's slots
    (bh, segment, map); this program (= segment pid_s) starts from slot pid_s - 1. a = phi_m(q)
    goes to the feature buffer for the backward; b = phi_m(k) is read from it where the state
    pass ran (HAS_INIT), else computed and stored. PAIR: see the module doc.
    """
    pid_s, pid_bh, n_prog, n_bh, bb, hh = program_ids(H)
    q_base = q_ptr + bb * sqb + hh * sqh
    k_base = k_ptr + bb * skb + hh * skh
    v_base = v_ptr + bb * svb + hh * svh
    mask_base = mask_ptr + bb * smb
    offs_t = tl.arange(0, BT)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    causal_mask = offs_t[:, None] >= offs_t[None, :]
    t0 = pid_s * CPS * BT
    slot = (pid_bh * n_prog + pid_s - 1) * NM
    TWO: tl.constexpr = PAIR and NM == 2  # both maps in one walk
    tl.static_assert(not BLEND or TWO or NM == 1, "the fused blend needs one walk for all maps")
    FIRST: tl.constexpr = 1 if HAS_NEAR else 0  # coefficient row of map 0
    o0_base = o0_ptr + bb * sob + hh * soh
    o1_base = o1_ptr + bb * sob + hh * soh
    for m in tl.static_range(1 if TWO else NM):
        S0, z0, S1, z1 = walk_states(
            st_ptr, slot, m, pid_s > 0, offs_d, offs_dv, NM, BD, BDV, SLOT, HAS_INIT, TWO
        )  # fmt: skip
        for c in range(0, CPS):
            t = t0 + c * BT + offs_t
            qq = load_tile(q_base, t, offs_d, T, D, sqt, sqd)
            vv = load_tile(v_base, t, offs_dv, T, DV, svt, svd).to(DOT_DTYPE)
            num, den, S0, z0 = _fwd_step(
                qq, vv, t, S0, z0, phi_ptr, pid_bh, n_bh, k_base, mask_base, causal_mask, offs_d,
                T, D, skt, skd, smt, m, NM, PHI0, PHI1, HAS_MASK, HAS_INIT, FEATURE_NORMALIZE,
                FAST, PREC, DOT_DTYPE,
            )  # fmt: skip
            out = _fwd_store(
                o0_base if m == 0 else o1_base, den_ptr + (m * n_bh + pid_bh) * T,
                t, offs_dv, T, DV, sot, sod, num, den, scale, eps, NORMALIZE,
            )  # fmt: skip
            if BLEND:
                y = blend_start(
                    near_ptr + bb * sob + hh * soh, c_ptr, hh, t, offs_dv, T, DV, sot, sod,
                    HAS_NEAR, BT, BDV,
                )  # fmt: skip
                y = blend_add(y, out, o0_base, c_ptr, FIRST, H, hh, offs_dv, DV)
            if TWO:
                num, den, S1, z1 = _fwd_step(
                    qq, vv, t, S1, z1, phi_ptr, pid_bh, n_bh, k_base, mask_base, causal_mask,
                    offs_d, T, D, skt, skd, smt, 1, NM, PHI0, PHI1, HAS_MASK, HAS_INIT,
                    FEATURE_NORMALIZE, FAST, PREC, DOT_DTYPE,
                )  # fmt: skip
                out = _fwd_store(
                    o1_base, den_ptr + (n_bh + pid_bh) * T,
                    t, offs_dv, T, DV, sot, sod, num, den, scale, eps, NORMALIZE,
                )  # fmt: skip
                if BLEND:
                    y = blend_add(y, out, o1_base, c_ptr, FIRST + 1, H, hh, offs_dv, DV)
            if BLEND:
                store_tile(y_ptr + bb * sob + hh * soh, t, offs_dv, T, DV, sot, sod, y, False)


@triton.jit
def _dq_step(
    phi_ptr, g_ptr, s_ptr, pid_bh, n_bh, q_base, vv, t, S, z, causal_mask, offs_d, offs_dv,
    T, D, DV, sqt, sqd,
    M: tl.constexpr, NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr,
    FEATURE_NORMALIZE: tl.constexpr, FAST: tl.constexpr, PREC: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):  # fmt: skip
    """(map M's share of dq, S, z) on one chunk: da = (g S^T + s z^T) + tril(g v^T + s) b,
    times phi_M'(q) (through the feature normalisation first where FEATURE_NORMALIZE); the
    state moves past the chunk."""
    a_base = feature_base(phi_ptr, 0, M, NM, pid_bh, n_bh, T, D)
    b_base = feature_base(phi_ptr, 1, M, NM, pid_bh, n_bh, T, D)
    g_base, s_base = gs_bases(g_ptr, s_ptr, M, pid_bh, n_bh, T, DV)
    b = stored_features(load_features(b_base, t, offs_d, T, D), FEATURE_NORMALIZE)
    g, s = load_g_s(g_base, s_base, t, offs_dv, T, DV)
    da = tl.dot(g, tl.trans(S.to(DOT_DTYPE)), input_precision=PREC)
    da += s[:, None] * z[None, :]
    P = tl.dot(g, tl.trans(vv), input_precision=PREC)
    P = tl.where(causal_mask, P + s[:, None], 0.0)
    z += tl.sum(b.to(tl.float32), axis=0)
    da += tl.dot(P.to(DOT_DTYPE), b, input_precision=PREC)
    S += tl.dot(tl.trans(b), vv, input_precision=PREC)
    a = load_features(a_base, t, offs_d, T, D).to(tl.float32)
    dphi_q = dphi_of_map(a, q_base, t, offs_d, T, D, sqt, sqd, M, PHI0, PHI1, FAST)
    inv = inverse_row_sum(a, FEATURE_NORMALIZE)
    return through_normalize(da, a, inv, FEATURE_NORMALIZE) * dphi_q, S, z


@triton.jit
def dq_causal_kernel(
    q_ptr, v_ptr, phi_ptr, g_ptr, s_ptr, st_ptr, dq_ptr,
    H, T, D, DV, CPS,
    sqb, sqh, sqt, sqd, svb, svh, svt, svd, sdqb, sdqh, sdqt, sdqd,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, FEATURE_NORMALIZE: tl.constexpr,
    HAS_INIT: tl.constexpr, FAST: tl.constexpr, PAIR: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr, DOT_DTYPE: tl.constexpr, SLOT: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Causal dq, forward over a segment's chunks (``_dq_step``).

    st: the forward's inclusive cumsum of states (segment pid_s starts from slot pid_s - 1).
    a and b come from the forward's feature buffer (zero at padding, so no mask is needed), g
    and s from the state pass. Walking once per map, the second walk adds to the first's dq;
    ACC: the first adds too (to another field's gradient, the fused FMM backward).
    """
    pid_s, pid_bh, n_seg, n_bh, bb, hh = program_ids(H)
    q_base = q_ptr + bb * sqb + hh * sqh
    v_base = v_ptr + bb * svb + hh * svh
    dq_base = dq_ptr + bb * sdqb + hh * sdqh
    offs_t = tl.arange(0, BT)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    causal_mask = offs_t[:, None] >= offs_t[None, :]
    t0 = pid_s * CPS * BT
    slot = (pid_bh * n_seg + pid_s - 1) * NM
    TWO: tl.constexpr = PAIR and NM == 2
    for m in tl.static_range(1 if TWO else NM):
        if m == 1:
            tl.debug_barrier()  # map 0's dq is stored before map 1 reads it back
        S0, z0, S1, z1 = walk_states(
            st_ptr, slot, m, pid_s > 0, offs_d, offs_dv, NM, BD, BDV, SLOT, HAS_INIT, TWO
        )  # fmt: skip
        for c in range(0, CPS):
            t = t0 + c * BT + offs_t
            vv = load_tile(v_base, t, offs_dv, T, DV, svt, svd).to(DOT_DTYPE)
            dq, S0, z0 = _dq_step(
                phi_ptr, g_ptr, s_ptr, pid_bh, n_bh, q_base, vv, t, S0, z0, causal_mask, offs_d,
                offs_dv, T, D, DV, sqt, sqd, m, NM, PHI0, PHI1, FEATURE_NORMALIZE, FAST, PREC,
                DOT_DTYPE,
            )  # fmt: skip
            if TWO:
                dq1, S1, z1 = _dq_step(
                    phi_ptr, g_ptr, s_ptr, pid_bh, n_bh, q_base, vv, t, S1, z1, causal_mask,
                    offs_d, offs_dv, T, D, DV, sqt, sqd, 1, NM, PHI0, PHI1, FEATURE_NORMALIZE,
                    FAST, PREC, DOT_DTYPE,
                )  # fmt: skip
                dq += dq1
            if m == 0:
                store_tile(dq_base, t, offs_d, T, D, sdqt, sdqd, dq, ACC)
            else:
                store_tile(dq_base, t, offs_d, T, D, sdqt, sdqd, dq, True)


@triton.jit
def _dkv_step(
    phi_ptr, g_ptr, s_ptr, pid_bh, n_bh, k_base, vv, t, R, r, causal_mask_t, offs_d, offs_dv,
    T, D, DV, skt, skd,
    M: tl.constexpr, NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr,
    FEATURE_NORMALIZE: tl.constexpr, FAST: tl.constexpr, PREC: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):  # fmt: skip
    """(map M's shares of dk and dv, R, r) on one chunk, with the reverse state R, r of the
    chunks after it:

        db = v R^T + r + (tril(g v^T + s))^T a,   dv = b R + (tril(a b^T))^T g,

    dk's share db * phi_M'(k); the reverse state moves back past the chunk."""
    a_base = feature_base(phi_ptr, 0, M, NM, pid_bh, n_bh, T, D)
    b_base = feature_base(phi_ptr, 1, M, NM, pid_bh, n_bh, T, D)
    g_base, s_base = gs_bases(g_ptr, s_ptr, M, pid_bh, n_bh, T, DV)
    b = load_features(b_base, t, offs_d, T, D)
    p = b.to(tl.float32)
    inv = inverse_row_sum(p, FEATURE_NORMALIZE)
    if FEATURE_NORMALIZE:
        b = (p * inv[:, None]).to(b.dtype)
    g, s = load_g_s(g_base, s_base, t, offs_dv, T, DV)
    db = tl.dot(vv, tl.trans(R.to(DOT_DTYPE)), input_precision=PREC) + r[None, :]
    dv = tl.dot(b, R.to(DOT_DTYPE), input_precision=PREC)
    a = stored_features(load_features(a_base, t, offs_d, T, D), FEATURE_NORMALIZE)
    r += tl.sum(a.to(tl.float32) * s[:, None], axis=0)
    Pt = tl.dot(vv, tl.trans(g), input_precision=PREC)
    Pt = tl.where(causal_mask_t, Pt + s[None, :], 0.0)
    db += tl.dot(Pt.to(DOT_DTYPE), a, input_precision=PREC)
    At = tl.dot(b, tl.trans(a), input_precision=PREC)
    At = tl.where(causal_mask_t, At, 0.0)
    dv += tl.dot(At.to(DOT_DTYPE), g, input_precision=PREC)
    R += tl.dot(tl.trans(a), g, input_precision=PREC)
    # dphi_k is 0 at padding (b is), so padded keys get no gradient.
    dphi_k = dphi_of_map(p, k_base, t, offs_d, T, D, skt, skd, M, PHI0, PHI1, FAST)
    return through_normalize(db, p, inv, FEATURE_NORMALIZE) * dphi_k, dv, R, r


@triton.jit
def dkv_causal_kernel(
    k_ptr, v_ptr, phi_ptr, g_ptr, s_ptr, rt_ptr, dk_ptr, dv_ptr,
    H, T, D, DV, CPS,
    skb, skh, skt, skd, svb, svh, svt, svd,
    sdkb, sdkh, sdkt, sdkd, sdvb, sdvh, sdvt, sdvd,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, FEATURE_NORMALIZE: tl.constexpr,
    HAS_INIT: tl.constexpr, FAST: tl.constexpr, PAIR: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr, DOT_DTYPE: tl.constexpr, SLOT: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Causal dk, dv, backward over a segment's chunks (``_dkv_step``).

    rt: cumsum of the reversed-order reverse states; the state after segment pid_s (the sum of
    every later segment) is at index n_seg - 2 - pid_s. a and b come from the forward's feature
    buffer, g and s from the state pass. Accumulation as in ``dq_causal_kernel``.
    """
    pid_s, pid_bh, n_seg, n_bh, bb, hh = program_ids(H)
    k_base = k_ptr + bb * skb + hh * skh
    v_base = v_ptr + bb * svb + hh * svh
    dk_base = dk_ptr + bb * sdkb + hh * sdkh
    dv_base = dv_ptr + bb * sdvb + hh * sdvh
    offs_t = tl.arange(0, BT)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    # Row j (key), column i (query) of the transposed intra-chunk products: i >= j.
    causal_mask_t = offs_t[None, :] >= offs_t[:, None]
    t0 = pid_s * CPS * BT
    slot = (pid_bh * n_seg + n_seg - 2 - pid_s) * NM
    TWO: tl.constexpr = PAIR and NM == 2
    for m in tl.static_range(1 if TWO else NM):
        if m == 1:
            tl.debug_barrier()  # map 0's dk, dv are stored before map 1 reads them back
        later = pid_s < n_seg - 1
        R0, r0, R1, r1 = walk_states(
            rt_ptr, slot, m, later, offs_d, offs_dv, NM, BD, BDV, SLOT, HAS_INIT, TWO
        )  # fmt: skip
        for cc in range(0, CPS):
            t = t0 + (CPS - 1 - cc) * BT + offs_t
            vv = load_tile(v_base, t, offs_dv, T, DV, svt, svd).to(DOT_DTYPE)
            dk, dv, R0, r0 = _dkv_step(
                phi_ptr, g_ptr, s_ptr, pid_bh, n_bh, k_base, vv, t, R0, r0, causal_mask_t,
                offs_d, offs_dv, T, D, DV, skt, skd, m, NM, PHI0, PHI1, FEATURE_NORMALIZE, FAST,
                PREC, DOT_DTYPE,
            )  # fmt: skip
            if TWO:
                dk1, dv1, R1, r1 = _dkv_step(
                    phi_ptr, g_ptr, s_ptr, pid_bh, n_bh, k_base, vv, t, R1, r1, causal_mask_t,
                    offs_d, offs_dv, T, D, DV, skt, skd, 1, NM, PHI0, PHI1, FEATURE_NORMALIZE,
                    FAST, PREC, DOT_DTYPE,
                )  # fmt: skip
                dk += dk1
                dv += dv1
            if m == 0:
                store_tile(dk_base, t, offs_d, T, D, sdkt, sdkd, dk, ACC)
                store_tile(dv_base, t, offs_dv, T, DV, sdvt, sdvd, dv, ACC)
            else:
                store_tile(dk_base, t, offs_d, T, D, sdkt, sdkd, dk, True)
                store_tile(dv_base, t, offs_dv, T, DV, sdvt, sdvd, dv, True)
