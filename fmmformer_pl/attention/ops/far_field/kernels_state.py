"""Far field on the GPU: the state kernels. Per segment of the sequence and per feature map,
the forward sums S = sum_j b_j v_j^T, z = sum_j b_j and the backward R = sum_i a_i g_i^T,
r = sum_i s_i a_i (``op.py`` explains the algorithm; the host code there launches these).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..common.tiles import (
    feature_base,
    g_and_s,
    gs_bases,
    keep_keys,
    load_features,
    load_tile,
    normalize_features,
    phi_keys,
    program_ids,
    store_features,
    store_g_s,
    store_states,
    stored_features,
)


@triton.jit
def state_fwd_kernel(
    k_ptr, v_ptr, mask_ptr, seg_ptr, phi_ptr,
    H, T, D, DV, CPS,
    skb, skh, skt, skd, svb, svh, svt, svd, smb, smt,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, HAS_MASK: tl.constexpr,
    FEATURE_NORMALIZE: tl.constexpr, FAST: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr, DOT_DTYPE: tl.constexpr, SLOT: tl.constexpr,
):  # fmt: skip
    """Per segment and map: S = sum_j b_j v_j^T, z = sum_j b_j into slot (bh, segment, map),
    and phi_m(k) into the feature buffer (side 1) for the main passes and the backward.
    FEATURE_NORMALIZE: b = phi_m(k) / sum_d phi_m(k); the buffer holds phi_m(k) unnormalised.

    Grid (segments, batch * heads); both maps' states live in registers.
    """
    pid_s, pid_bh, n_seg, n_bh, bb, hh = program_ids(H)
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
        kk = load_tile(k_base, t, offs_d, T, D, skt, skd)
        keep2 = keep_keys(mask_base, t, offs_d, T, D, smt, HAS_MASK)
        vv = load_tile(v_base, t, offs_dv, T, DV, svt, svd).to(DOT_DTYPE)
        p = phi_keys(kk, keep2, 0, PHI0, PHI1, FAST)
        b = normalize_features(p, FEATURE_NORMALIZE)
        S0 += tl.dot(tl.trans(b.to(DOT_DTYPE)), vv, input_precision=PREC)
        z0 += tl.sum(b, axis=0)
        store_features(feature_base(phi_ptr, 1, 0, NM, pid_bh, n_bh, T, D), t, offs_d, T, D, p)
        if NM == 2:
            p = phi_keys(kk, keep2, 1, PHI0, PHI1, FAST)
            b = normalize_features(p, FEATURE_NORMALIZE)
            S1 += tl.dot(tl.trans(b.to(DOT_DTYPE)), vv, input_precision=PREC)
            z1 += tl.sum(b, axis=0)
            base = feature_base(phi_ptr, 1, 1, NM, pid_bh, n_bh, T, D)
            store_features(base, t, offs_d, T, D, p)
    slot = (pid_bh * n_seg + pid_s) * NM
    store_states(seg_ptr, slot, S0, z0, S1, z1, offs_d, offs_dv, NM, BD, BDV, SLOT)


@triton.jit
def state_bwd_kernel(
    phi_ptr, do0_ptr, do1_ptr, o0_ptr, o1_ptr, den_ptr, seg_ptr, g_ptr, s_ptr, c_ptr, dc_ptr,
    H, T, D, DV, CPS, scale,
    sdob, sdoh, sdot, sdod, sob, soh, sot, sod,
    NM: tl.constexpr, NORMALIZE: tl.constexpr, REVERSED: tl.constexpr, HAS_SCALE: tl.constexpr,
    HAS_DC: tl.constexpr, FEATURE_NORMALIZE: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr, DOT_DTYPE: tl.constexpr, SLOT: tl.constexpr,
):  # fmt: skip
    """Per segment and map: R = sum_i a_i g_i^T, r = sum_i s_i a_i, with a = phi_m(q) read
    from the feature buffer (side 0; normalised there where FEATURE_NORMALIZE). Grid (segments, bh). Also stores g and s of every
    position for the main backward kernels, which then need neither dout, out nor den.
    HAS_SCALE: do0 is the fused FMM layer's dy and map m's dout is dy * c_m, with c (map, heads,
    head_dim_v) float32 the far fields' blend coefficients (dy is read once for both maps).
    HAS_DC (with HAS_SCALE): the kernel also adds the coefficients' gradient sum_t dy * out_m
    to dc (same shape, float32), one atomic add per program and map.

    REVERSED stores segment s at index n_seg - 1 - s, so that a cumsum over the index gives
    each segment the sum of itself and every later one.
    """
    pid_s, pid_bh, n_seg, n_bh, bb, hh = program_ids(H)
    a0_base = feature_base(phi_ptr, 0, 0, NM, pid_bh, n_bh, T, D)
    a1_base = feature_base(phi_ptr, 0, NM - 1, NM, pid_bh, n_bh, T, D)
    g0_base, s0_base = gs_bases(g_ptr, s_ptr, 0, pid_bh, n_bh, T, DV)
    g1_base, s1_base = gs_bases(g_ptr, s_ptr, NM - 1, pid_bh, n_bh, T, DV)
    do0_base = do0_ptr + bb * sdob + hh * sdoh
    do1_base = do1_ptr + bb * sdob + hh * sdoh
    o0_base = o0_ptr + bb * sob + hh * soh
    o1_base = o1_ptr + bb * sob + hh * soh
    den0_base = den_ptr + pid_bh * T
    den1_base = den_ptr + (n_bh + pid_bh) * T
    offs_t = tl.arange(0, BT)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    row0 = hh * DV + offs_dv
    row1 = ((NM - 1) * H + hh) * DV + offs_dv
    if HAS_SCALE:
        c0 = tl.load(c_ptr + row0, mask=offs_dv < DV, other=0.0)
        c1 = tl.load(c_ptr + row1, mask=offs_dv < DV, other=0.0)
    dc0 = tl.zeros([BDV], dtype=tl.float32)
    dc1 = tl.zeros([BDV], dtype=tl.float32)
    R0 = tl.zeros([BD, BDV], dtype=tl.float32)
    r0 = tl.zeros([BD], dtype=tl.float32)
    R1 = tl.zeros([BD, BDV], dtype=tl.float32)
    r1 = tl.zeros([BD], dtype=tl.float32)
    t0 = pid_s * CPS * BT
    for c in range(0, CPS):
        t = t0 + c * BT + offs_t
        a = stored_features(load_features(a0_base, t, offs_d, T, D), FEATURE_NORMALIZE)
        do = load_tile(do0_base, t, offs_dv, T, DV, sdot, sdod)
        o = do  # a stand-in where out is not needed
        if NORMALIZE or HAS_DC:
            o = load_tile(o0_base, t, offs_dv, T, DV, sot, sod)
        if HAS_DC:
            dc0 += tl.sum(do * o, axis=0)
        if HAS_SCALE:
            do0 = do * c0[None, :]
        else:
            do0 = do
        g, s = g_and_s(do0, o, den0_base, t, T, scale, NORMALIZE)
        store_g_s(g0_base, s0_base, t, offs_dv, T, DV, g, s)
        r0 += tl.sum(a.to(tl.float32) * s[:, None], axis=0)
        R0 += tl.dot(tl.trans(a), g.to(DOT_DTYPE), input_precision=PREC)
        if NM == 2:
            a = stored_features(load_features(a1_base, t, offs_d, T, D), FEATURE_NORMALIZE)
            if NORMALIZE or HAS_DC:
                o = load_tile(o1_base, t, offs_dv, T, DV, sot, sod)
            if HAS_DC:
                dc1 += tl.sum(do * o, axis=0)
            if HAS_SCALE:
                do1 = do * c1[None, :]
            else:
                do1 = load_tile(do1_base, t, offs_dv, T, DV, sdot, sdod)
            g, s = g_and_s(do1, o, den1_base, t, T, scale, NORMALIZE)
            store_g_s(g1_base, s1_base, t, offs_dv, T, DV, g, s)
            r1 += tl.sum(a.to(tl.float32) * s[:, None], axis=0)
            R1 += tl.dot(tl.trans(a), g.to(DOT_DTYPE), input_precision=PREC)
    if REVERSED:
        slot = (pid_bh * n_seg + n_seg - 1 - pid_s) * NM
    else:
        slot = (pid_bh * n_seg + pid_s) * NM
    store_states(seg_ptr, slot, R0, r0, R1, r1, offs_d, offs_dv, NM, BD, BDV, SLOT)
    if HAS_DC:
        tl.atomic_add(dc_ptr + row0, dc0, mask=offs_dv < DV)
        if NM == 2:
            tl.atomic_add(dc_ptr + row1, dc1, mask=offs_dv < DV)
