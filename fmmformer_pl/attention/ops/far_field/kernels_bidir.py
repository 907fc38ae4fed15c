"""Far field on the GPU: the bidirectional kernels. Every program reads the total states once
and then its chunks; nothing is carried from chunk to chunk. ``op.py`` explains the algorithm
and launches these.
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
    load_features,
    load_g_s,
    load_tile,
    normalize_features,
    phi_queries,
    program_ids,
    readout,
    store_features,
    store_tile,
    through_normalize,
    total_states,
)


@triton.jit
def fwd_bidir_kernel(
    q_ptr, st_ptr, o0_ptr, o1_ptr, den_ptr, phi_ptr, near_ptr, c_ptr, y_ptr,
    H, T, D, DV, CPS, scale, eps,
    sqb, sqh, sqt, sqd, sob, soh, sot, sod,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, NORMALIZE: tl.constexpr,
    FEATURE_NORMALIZE: tl.constexpr, FAST: tl.constexpr, BLEND: tl.constexpr,
    HAS_NEAR: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr, DOT_DTYPE: tl.constexpr, SLOT: tl.constexpr,
):  # fmt: skip
    """Bidirectional out_m = a S_m / (a z_m + eps), a = phi_m(q) (FEATURE_NORMALIZE:
    phi_m(q) / sum_d phi_m(q)), from the totals (bh, map) in st.

    Grid (programs, batch * heads): each program reads the states once (rounded to the
    product dtype) and then CPS chunks of q; nothing is carried between chunks. phi_m(q)
    (unnormalised) goes to the feature buffer (side 0) for the backward. BLEND (the fused FMM forward): also
    y = c_near * near + sum_m c_m out_m (``tiles.blend_start``, ``blend_add``).
    """
    pid_p, pid_bh, _, n_bh, bb, hh = program_ids(H)
    q_base = q_ptr + bb * sqb + hh * sqh
    o0_base = o0_ptr + bb * sob + hh * soh
    o1_base = o1_ptr + bb * sob + hh * soh
    offs_t = tl.arange(0, BT)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    S0, z0, S1, z1 = total_states(st_ptr, pid_bh, offs_d, offs_dv, NM, BD, BDV, SLOT, DOT_DTYPE)
    t0 = pid_p * CPS * BT
    for c in range(0, CPS):
        t = t0 + c * BT + offs_t
        qq = load_tile(q_base, t, offs_d, T, D, sqt, sqd)
        if BLEND:
            y = blend_start(
                near_ptr + bb * sob + hh * soh, c_ptr, hh, t, offs_dv, T, DV, sot, sod,
                HAS_NEAR, BT, BDV,
            )  # fmt: skip
        for m in tl.static_range(NM):
            if m == 0:
                S, z, o_base = S0, z0, o0_base
            else:
                S, z, o_base = S1, z1, o1_base
            a = phi_queries(qq, t, offs_d, T, D, m, PHI0, PHI1, FAST)
            a_base = feature_base(phi_ptr, 0, m, NM, pid_bh, n_bh, T, D)
            store_features(a_base, t, offs_d, T, D, a)
            a = normalize_features(a, FEATURE_NORMALIZE)
            row = m * n_bh + pid_bh
            out = readout(a, S, z, den_ptr, row, t, T, scale, eps, NORMALIZE, PREC, DOT_DTYPE)
            store_tile(o_base, t, offs_dv, T, DV, sot, sod, out, False)
            if BLEND:
                row = (1 if HAS_NEAR else 0) + m
                y = blend_add(y, out, o_base, c_ptr, row, H, hh, offs_dv, DV)
        if BLEND:
            store_tile(y_ptr + bb * sob + hh * soh, t, offs_dv, T, DV, sot, sod, y, False)


@triton.jit
def dq_bidir_kernel(
    q_ptr, phi_ptr, g_ptr, s_ptr, st_ptr, dq_ptr,
    H, T, D, DV, CPS,
    sqb, sqh, sqt, sqd, sdqb, sdqh, sdqt, sdqd,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, FEATURE_NORMALIZE: tl.constexpr,
    FAST: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr, DOT_DTYPE: tl.constexpr, SLOT: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Bidirectional dq = sum_m (g S^T + s z^T) phi_m'(q) from the totals S, z (through the
    feature normalisation, ``tiles.through_normalize``, where FEATURE_NORMALIZE).

    Grid (programs, batch * heads); the states are read once per program.
    """
    pid_p, pid_bh, _, n_bh, bb, hh = program_ids(H)
    q_base = q_ptr + bb * sqb + hh * sqh
    dq_base = dq_ptr + bb * sdqb + hh * sdqh
    offs_t = tl.arange(0, BT)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    S0, z0, S1, z1 = total_states(st_ptr, pid_bh, offs_d, offs_dv, NM, BD, BDV, SLOT, DOT_DTYPE)
    t0 = pid_p * CPS * BT
    for c in range(0, CPS):
        t = t0 + c * BT + offs_t
        dq = tl.zeros([BT, BD], dtype=tl.float32)
        for m in tl.static_range(NM):
            if m == 0:
                S, z = S0, z0
            else:
                S, z = S1, z1
            g_base, s_base = gs_bases(g_ptr, s_ptr, m, pid_bh, n_bh, T, DV)
            g, s = load_g_s(g_base, s_base, t, offs_dv, T, DV)
            da = tl.dot(g, tl.trans(S), input_precision=PREC)
            a_base = feature_base(phi_ptr, 0, m, NM, pid_bh, n_bh, T, D)
            a = load_features(a_base, t, offs_d, T, D).to(tl.float32)
            dphi_q = dphi_of_map(a, q_base, t, offs_d, T, D, sqt, sqd, m, PHI0, PHI1, FAST)
            inv = inverse_row_sum(a, FEATURE_NORMALIZE)
            da = through_normalize(da + s[:, None] * z[None, :], a, inv, FEATURE_NORMALIZE)
            dq += da * dphi_q
        store_tile(dq_base, t, offs_d, T, D, sdqt, sdqd, dq, ACC)


@triton.jit
def dkv_bidir_kernel(
    k_ptr, v_ptr, phi_ptr, rt_ptr, dk_ptr, dv_ptr,
    H, T, D, DV, CPS,
    skb, skh, skt, skd, svb, svh, svt, svd,
    sdkb, sdkh, sdkt, sdkd, sdvb, sdvh, sdvt, sdvd,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, FEATURE_NORMALIZE: tl.constexpr,
    FAST: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr, DOT_DTYPE: tl.constexpr, SLOT: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Bidirectional dk = sum_m (v R^T + r) phi_m'(k), dv = sum_m b R from the totals R, r,
    with b from the forward's feature buffer (zero at padding, so no mask is needed; through
    the feature normalisation where FEATURE_NORMALIZE).

    Grid (programs, batch * heads); the states are read once per program.
    """
    pid_p, pid_bh, _, n_bh, bb, hh = program_ids(H)
    k_base = k_ptr + bb * skb + hh * skh
    v_base = v_ptr + bb * svb + hh * svh
    dk_base = dk_ptr + bb * sdkb + hh * sdkh
    dv_base = dv_ptr + bb * sdvb + hh * sdvh
    offs_t = tl.arange(0, BT)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    R0, r0, R1, r1 = total_states(rt_ptr, pid_bh, offs_d, offs_dv, NM, BD, BDV, SLOT, DOT_DTYPE)
    t0 = pid_p * CPS * BT
    for c in range(0, CPS):
        t = t0 + c * BT + offs_t
        vv = load_tile(v_base, t, offs_dv, T, DV, svt, svd).to(DOT_DTYPE)
        dk = tl.zeros([BT, BD], dtype=tl.float32)
        dv = tl.zeros([BT, BDV], dtype=tl.float32)
        for m in tl.static_range(NM):
            if m == 0:
                R, r = R0, r0
            else:
                R, r = R1, r1
            b = load_features(feature_base(phi_ptr, 1, m, NM, pid_bh, n_bh, T, D), t, offs_d, T, D)
            db = tl.dot(vv, tl.trans(R), input_precision=PREC) + r[None, :]
            p = b.to(tl.float32)
            inv = inverse_row_sum(p, FEATURE_NORMALIZE)
            if FEATURE_NORMALIZE:
                b = (p * inv[:, None]).to(b.dtype)
            dv += tl.dot(b, R, input_precision=PREC)
            dphi_k = dphi_of_map(p, k_base, t, offs_d, T, D, skt, skd, m, PHI0, PHI1, FAST)
            # dphi_k is 0 at padding: padded keys get no gradient
            dk += through_normalize(db, p, inv, FEATURE_NORMALIZE) * dphi_k
        store_tile(dk_base, t, offs_d, T, D, sdkt, sdkd, dk, ACC)
        store_tile(dv_base, t, offs_dv, T, DV, sdvt, sdvd, dv, ACC)


@triton.jit
def bwd_bidir_kernel(
    q_ptr, k_ptr, v_ptr, phi_ptr, g_ptr, s_ptr, st_ptr, rt_ptr, dq_ptr, dk_ptr, dv_ptr,
    H, T, D, DV, CPS,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd,
    sdqb, sdqh, sdqt, sdqd, sdkb, sdkh, sdkt, sdkd, sdvb, sdvh, sdvt, sdvd,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, FEATURE_NORMALIZE: tl.constexpr,
    FAST: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr, DOT_DTYPE: tl.constexpr, SLOT: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Both bidirectional backward passes in one launch (one launch less of host overhead):
    grid (programs, batch * heads, 2), axis 2 picks dq (0) or dk, dv (1)."""
    if tl.program_id(2) == 0:
        dq_bidir_kernel(
            q_ptr, phi_ptr, g_ptr, s_ptr, st_ptr, dq_ptr,
            H, T, D, DV, CPS,
            sqb, sqh, sqt, sqd, sdqb, sdqh, sdqt, sdqd,
            NM, PHI0, PHI1, FEATURE_NORMALIZE, FAST, BT, BD, BDV, PREC, DOT_DTYPE, SLOT, ACC,
        )  # fmt: skip
    else:
        dkv_bidir_kernel(
            k_ptr, v_ptr, phi_ptr, rt_ptr, dk_ptr, dv_ptr,
            H, T, D, DV, CPS,
            skb, skh, skt, skd, svb, svh, svt, svd,
            sdkb, sdkh, sdkt, sdkd, sdvb, sdvh, sdvt, sdvd,
            NM, PHI0, PHI1, FEATURE_NORMALIZE, FAST, BT, BD, BDV, PREC, DOT_DTYPE, SLOT, ACC,
        )  # fmt: skip
