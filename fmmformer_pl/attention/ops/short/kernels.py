"""The whole bidirectional FMM layer in two launches each way (Triton): near field, far fields
of one or two feature maps, and the blend, for short sequences (``op.py`` launches them).

A main-kernel program owns a run of BM-position blocks of one (batch, head). It reads the far
field's total states as the sums of the segment states that ``short_state_kernel`` (forward)
or ``short_rstate_kernel`` (backward) wrote, one program per segment; with NSEG = 0 it walks
every key (query) of its row itself instead (one launch each way, a longer dependent chain).

Forward: the near field of the program's blocks (``tiles.near_fwd_loop``), stored with its
log-sum-exp; then the far fields from the totals (``tiles.readout``) and y = c_0 near +
sum_m c_m far_m, per block, storing y, the far fields (the coefficients' gradient reads them)
and their denominators. The far states stay for the backward: the segments', or (NSEG = 0)
the totals, stored by each row's first program.

Backward, in two kinds of programs of one launch: side 0, per block of queries, dq of the far
fields (from the forward's states S_m, z_m) and of the near field (dout = c_0 * dy,
``tiles.near_dq_loop``), and the coefficients' partial sums sum dy * field (one atomic add
per field); side 1, per block of keys, dk and dv of the near field (``near_dkv_loop``), then of
the far fields from the reverse states R_m, r_m over every query (g, s formed from dy * c_m,
the stored far field and its denominator: summed from the segments or walked). Each block's
gradients are summed in registers and stored once.

The order puts what needs no far state first: launched with programmatic dependent launch
(PDL, on Hopper: ``op.py``), a main kernel starts while its state kernel runs, and
waits for the state kernel's results (``gdc_wait``) only where it reads them: the forward
after its near field, the backward's side 1 after its near field (side 0 never). The state
kernels let it launch at their start (``gdc_launch_dependents``). Everything the main kernel
reads before the wait was written before the state kernel started.

The feature maps are recomputed from q and k where needed: nothing per position but y, the
fields, the log-sum-exp and the denominators is stored. Shapes as in ``ops/near_field`` and
``ops/far_field``; c, dc ``(1 + maps, heads, head_dim_v)`` float32, the near field first.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from ..common.tiles import (
    blend_add,
    g_and_s,
    keep_keys,
    key_rows,
    load_rows,
    load_state,
    load_tile,
    near_dkv_loop,
    near_dq_loop,
    near_fwd_loop,
    phi_keys,
    phi_of_map,
    phi_queries,
    program_ids,
    query_rows,
    readout,
    seed_of,
    store_states,
    store_tile,
)


@triton.jit
def _sum_states(
    k_base, v_base, mask_base, t_lo, t_hi, T, D, DV, skt, skd, svt, svd, smt,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, FAST: tl.constexpr,
    HAS_MASK: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr, DOT_DTYPE: tl.constexpr,
):  # fmt: skip
    """(S0, z0, S1, z1) float32: S_m = sum_j b_j v_j^T, z_m = sum_j b_j over the keys
    [t_lo, t_hi) (t_lo a multiple of BT), b = phi_m(k) zeroed at padding (with one map, S1, z1
    stay zero and go unused)."""
    offs_t = tl.arange(0, BT)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    S0 = tl.zeros([BD, BDV], dtype=tl.float32)
    z0 = tl.zeros([BD], dtype=tl.float32)
    S1 = tl.zeros([BD, BDV], dtype=tl.float32)
    z1 = tl.zeros([BD], dtype=tl.float32)
    for t0 in range(t_lo, t_hi, BT):
        t = t0 + offs_t
        kk = load_tile(k_base, t, offs_d, T, D, skt, skd)
        keep2 = keep_keys(mask_base, t, offs_d, T, D, smt, HAS_MASK)
        vv = load_tile(v_base, t, offs_dv, T, DV, svt, svd).to(DOT_DTYPE)
        b = phi_keys(kk, keep2, 0, PHI0, PHI1, FAST)
        S0 += tl.dot(tl.trans(b.to(DOT_DTYPE)), vv, input_precision=PREC)
        z0 += tl.sum(b, axis=0)
        if NM == 2:
            b = phi_keys(kk, keep2, 1, PHI0, PHI1, FAST)
            S1 += tl.dot(tl.trans(b.to(DOT_DTYPE)), vv, input_precision=PREC)
            z1 += tl.sum(b, axis=0)
    return S0, z0, S1, z1


@triton.jit
def _coefficient(c_ptr, row, H, hh, offs_dv, DV):
    """Row ``row`` (a field) of the coefficients for head hh: (BDV,) float32."""
    return tl.load(c_ptr + (row * H + hh) * DV + offs_dv, mask=offs_dv < DV, other=0.0)


@triton.jit
def short_fwd_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, c_ptr, y_ptr, o_ptr, f0_ptr, f1_ptr, lse_ptr, den_ptr,
    st_ptr, H, T, W, D, DV, BPP, qk_scale, scale, seed, p_drop,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sob, soh, sot, sod, smb, smt,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, NORMALIZE: tl.constexpr,
    FAST: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, SEED_PTR: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    SLOT: tl.constexpr, PREC: tl.constexpr, DOT_DTYPE: tl.constexpr, NSEG: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    """y, the near field o (and its lse), the far fields f0, f1 (and their denominators) of
    blocks [BPP * program, BPP * (program + 1)). The far states: NSEG > 0, the sums of st's
    (batch * heads, segment, map) slots (``short_state_kernel``); else walked here in steps
    of BS positions, the row's first program storing the totals into st's (batch * heads, 0,
    map) slots for the backward. Grid (programs, batch * heads); y, o, f0, f1 share one
    layout (strides sob..sod)."""
    pid_p, pid_bh, _, n_bh, bb, hh = program_ids(H)
    seed_bh = seed_of(seed, SEED_PTR) + pid_bh  # dropout: the near kernels' stream
    q_base = q_ptr + bb * sqb + hh * sqh
    k_base = k_ptr + bb * skb + hh * skh
    v_base = v_ptr + bb * svb + hh * svh
    mask_base = mask_ptr + bb * smb
    fields = bb * sob + hh * soh
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    first = pid_p * BPP
    last = tl.minimum(first + BPP, tl.cdiv(T, BM))
    # The near field first: it needs no far state, so under PDL it runs while the state
    # kernel still does.
    for blk in range(first, last):
        m0 = blk * BM
        t = m0 + tl.arange(0, BM)
        q = load_rows(q_base, t, T, D, sqt, sqd, BD)
        out, lse = near_fwd_loop(
            q, t, m0, k_base, v_base, mask_base, seed_bh,
            T, W, D, DV, qk_scale, p_drop, skt, skd, svt, svd, smt,
            HAS_MASK, False, DROPOUT, BM, BN, BD, BDV, PREC,
        )  # fmt: skip
        store_tile(o_ptr + fields, t, offs_dv, T, DV, sot, sod, out, False)
        tl.store(lse_ptr + pid_bh * T + t, lse, mask=t < T)
    if PDL:
        gdc_wait()  # the state kernel has finished: its segment states are visible
    if NSEG > 0:  # the segments' states, from short_state_kernel
        S0, z0, S1, z1 = _segment_sums(st_ptr, pid_bh, NSEG, offs_d, offs_dv, NM, BD, BDV, SLOT)
    else:  # walked here; the row's first program stores the totals for the backward
        S0, z0, S1, z1 = _sum_states(
            k_base, v_base, mask_base, 0, T, T, D, DV, skt, skd, svt, svd, smt,
            NM, PHI0, PHI1, FAST, HAS_MASK, BS, BD, BDV, PREC, DOT_DTYPE,
        )  # fmt: skip
        if pid_p == 0:
            store_states(st_ptr, pid_bh * NM, S0, z0, S1, z1, offs_d, offs_dv, NM, BD, BDV, SLOT)
    S0 = S0.to(DOT_DTYPE)  # rounded where it is read, as tiles.total_states does
    S1 = S1.to(DOT_DTYPE)
    tl.debug_barrier()  # the near field's tiles stored above are read back below
    for blk in range(first, last):
        t = blk * BM + tl.arange(0, BM)
        out = load_tile(o_ptr + fields, t, offs_dv, T, DV, sot, sod)
        y = blend_add(0.0, out, o_ptr, c_ptr, 0, H, hh, offs_dv, DV)
        qq = load_tile(q_base, t, offs_d, T, D, sqt, sqd)
        for m in tl.static_range(NM):
            if m == 0:
                S, z, f_ptr = S0, z0, f0_ptr
            else:
                S, z, f_ptr = S1, z1, f1_ptr
            a = phi_queries(qq, t, offs_d, T, D, m, PHI0, PHI1, FAST)
            row = m * n_bh + pid_bh
            far = readout(a, S, z, den_ptr, row, t, T, scale, 0.0, NORMALIZE, PREC, DOT_DTYPE)
            store_tile(f_ptr + fields, t, offs_dv, T, DV, sot, sod, far, False)
            y = blend_add(y, far, f_ptr, c_ptr, 1 + m, H, hh, offs_dv, DV)
        store_tile(y_ptr + fields, t, offs_dv, T, DV, sot, sod, y, False)


@triton.jit
def _reverse_states(
    q_base, dy_base, f0_base, f1_base, den_ptr, c0, c1, pid_bh, n_bh, t_lo, t_hi,
    T, D, DV, scale, sqt, sqd, sdyt, sdyd, sot, sod,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, FAST: tl.constexpr,
    NORMALIZE: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr, DOT_DTYPE: tl.constexpr,
):  # fmt: skip
    """(R0, r0, R1, r1) float32: R_m = sum_i a_i g_i^T, r_m = sum_i s_i a_i over the queries
    [t_lo, t_hi) (t_lo a multiple of BT), a = phi_m(q), with g, s of the output gradient
    dy * c_m (``tiles.g_and_s``)."""
    offs_t = tl.arange(0, BT)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    R0 = tl.zeros([BD, BDV], dtype=tl.float32)
    r0 = tl.zeros([BD], dtype=tl.float32)
    R1 = tl.zeros([BD, BDV], dtype=tl.float32)
    r1 = tl.zeros([BD], dtype=tl.float32)
    for t0 in range(t_lo, t_hi, BT):
        t = t0 + offs_t
        qq = load_tile(q_base, t, offs_d, T, D, sqt, sqd)
        dy = load_tile(dy_base, t, offs_dv, T, DV, sdyt, sdyd)
        a = phi_queries(qq, t, offs_d, T, D, 0, PHI0, PHI1, FAST)
        o = dy  # a stand-in where the field is not read
        if NORMALIZE:
            o = load_tile(f0_base, t, offs_dv, T, DV, sot, sod)
        g, s = g_and_s(dy * c0[None, :], o, den_ptr + pid_bh * T, t, T, scale, NORMALIZE)
        R0 += tl.dot(tl.trans(a.to(DOT_DTYPE)), g.to(DOT_DTYPE), input_precision=PREC)
        r0 += tl.sum(a * s[:, None], axis=0)
        if NM == 2:
            a = phi_queries(qq, t, offs_d, T, D, 1, PHI0, PHI1, FAST)
            if NORMALIZE:
                o = load_tile(f1_base, t, offs_dv, T, DV, sot, sod)
            den_base = den_ptr + (n_bh + pid_bh) * T
            g, s = g_and_s(dy * c1[None, :], o, den_base, t, T, scale, NORMALIZE)
            R1 += tl.dot(tl.trans(a.to(DOT_DTYPE)), g.to(DOT_DTYPE), input_precision=PREC)
            r1 += tl.sum(a * s[:, None], axis=0)
    return R0, r0, R1, r1


@triton.jit
def short_state_kernel(
    k_ptr, v_ptr, mask_ptr, seg_ptr, H, T, D, DV, SEG,
    skb, skh, skt, skd, svb, svh, svt, svd, smb, smt,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, FAST: tl.constexpr,
    HAS_MASK: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    SLOT: tl.constexpr, PREC: tl.constexpr, DOT_DTYPE: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    """The far states S_m, z_m of the SEG keys of segment (program 0) into slots (batch *
    heads, segment, map) of seg, for ``short_fwd_kernel`` (and the backward) to sum.
    Grid (segments, batch * heads)."""
    if PDL:  # the main kernel may launch now: it waits for these states itself
        gdc_launch_dependents()
    pid_s, pid_bh, n_seg, n_bh, bb, hh = program_ids(H)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    S0, z0, S1, z1 = _sum_states(
        k_ptr + bb * skb + hh * skh, v_ptr + bb * svb + hh * svh, mask_ptr + bb * smb,
        pid_s * SEG, tl.minimum(pid_s * SEG + SEG, T), T, D, DV, skt, skd, svt, svd, smt,
        NM, PHI0, PHI1, FAST, HAS_MASK, BS, BD, BDV, PREC, DOT_DTYPE,
    )  # fmt: skip
    slot = (pid_bh * n_seg + pid_s) * NM
    store_states(seg_ptr, slot, S0, z0, S1, z1, offs_d, offs_dv, NM, BD, BDV, SLOT)


@triton.jit
def short_rstate_kernel(
    q_ptr, dy_ptr, f0_ptr, f1_ptr, den_ptr, c_ptr, rseg_ptr, H, T, D, DV, SEG, scale,
    sqb, sqh, sqt, sqd, sdyb, sdyh, sdyt, sdyd, sob, soh, sot, sod,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, FAST: tl.constexpr,
    NORMALIZE: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    SLOT: tl.constexpr, PREC: tl.constexpr, DOT_DTYPE: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    """The reverse states R_m, r_m of the SEG queries of segment (program 0) into slots
    (batch * heads, segment, map) of rseg, for ``short_bwd_kernel`` to sum (NSEG > 0): a
    walk of SEG / BS steps instead of seq / BS. Grid (segments, batch * heads)."""
    if PDL:  # the main kernel may launch now: it waits for these states itself
        gdc_launch_dependents()
    pid_s, pid_bh, n_seg, n_bh, bb, hh = program_ids(H)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    fields = bb * sob + hh * soh
    R0, r0, R1, r1 = _reverse_states(
        q_ptr + bb * sqb + hh * sqh, dy_ptr + bb * sdyb + hh * sdyh, f0_ptr + fields,
        f1_ptr + fields, den_ptr, _coefficient(c_ptr, 1, H, hh, offs_dv, DV),
        _coefficient(c_ptr, NM, H, hh, offs_dv, DV), pid_bh, n_bh, pid_s * SEG,
        tl.minimum(pid_s * SEG + SEG, T), T, D, DV, scale, sqt, sqd, sdyt, sdyd, sot, sod,
        NM, PHI0, PHI1, FAST, NORMALIZE, BS, BD, BDV, PREC, DOT_DTYPE,
    )  # fmt: skip
    slot = (pid_bh * n_seg + pid_s) * NM
    store_states(rseg_ptr, slot, R0, r0, R1, r1, offs_d, offs_dv, NM, BD, BDV, SLOT)


@triton.jit
def _segment_sum(
    ptr, pid_bh, NSEG: tl.constexpr, m, offs_d, offs_dv, NM: tl.constexpr,
    BD: tl.constexpr, BDV: tl.constexpr, SLOT: tl.constexpr,
):  # fmt: skip
    """(R, r) of map m: the sum over the NSEG segment slots of row pid_bh."""
    R = tl.zeros([BD, BDV], dtype=tl.float32)
    r = tl.zeros([BD], dtype=tl.float32)
    for seg in tl.static_range(NSEG):
        slot = (pid_bh * NSEG + seg) * NM + m
        R_seg, r_seg = load_state(ptr, slot, offs_d, offs_dv, BD, BDV, SLOT)
        R += R_seg
        r += r_seg
    return R, r


@triton.jit
def _segment_sums(
    ptr, pid_bh, NSEG: tl.constexpr, offs_d, offs_dv, NM: tl.constexpr,
    BD: tl.constexpr, BDV: tl.constexpr, SLOT: tl.constexpr,
):  # fmt: skip
    """(R0, r0, R1, r1): both maps' ``_segment_sum`` (with one map, R1, r1 are zeros)."""
    R0, r0 = _segment_sum(ptr, pid_bh, NSEG, 0, offs_d, offs_dv, NM, BD, BDV, SLOT)
    R1 = tl.zeros([BD, BDV], dtype=tl.float32)
    r1 = tl.zeros([BD], dtype=tl.float32)
    if NM == 2:
        R1, r1 = _segment_sum(ptr, pid_bh, NSEG, 1, offs_d, offs_dv, NM, BD, BDV, SLOT)
    return R0, r0, R1, r1


@triton.jit
def short_bwd_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, c_ptr, dc_ptr, dy_ptr, o_ptr, f0_ptr, f1_ptr, lse_ptr,
    den_ptr, st_ptr, rseg_ptr, dq_ptr, dk_ptr, dv_ptr,
    H, T, W, D, DV, BPP, qk_scale, sm_scale, scale, seed, p_drop,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sob, soh, sot, sod,
    sdyb, sdyh, sdyt, sdyd, sdqb, sdqh, sdqt, sdqd, sdkb, sdkh, sdkt, sdkd,
    sdvb, sdvh, sdvt, sdvd, smb, smt,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, NORMALIZE: tl.constexpr,
    FAST: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, SEED_PTR: tl.constexpr,
    BM: tl.constexpr, TN: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr,
    BDV: tl.constexpr, SLOT: tl.constexpr, PREC: tl.constexpr, DOT_DTYPE: tl.constexpr,
    NSEG: tl.constexpr, FSEG: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """dq, dk, dv of blocks [BPP * program, BPP * (program + 1)) and their share of dc
    (added atomically; dc starts at zero). Grid (programs, batch * heads, 2): side 0 takes the
    queries, dq of the far fields (from the forward's states st: the sums of its FSEG
    (batch * heads, segment, map) slots) and of the near field, and the dc partial sums; side
    1 the keys, dk and dv of the near field and then of the far fields (from the reverse
    states: NSEG segments of rseg, or walked in steps of BS). Each side sums a block's
    gradients in registers and stores them once. Under PDL only side 1 waits for the
    reverse-state kernel, after its near field. TN: the near loops' tile across the band."""
    pid_p, pid_bh, _, n_bh, bb, hh = program_ids(H)
    side = tl.program_id(2)
    seed_bh = seed_of(seed, SEED_PTR) + pid_bh
    q_base = q_ptr + bb * sqb + hh * sqh
    k_base = k_ptr + bb * skb + hh * skh
    v_base = v_ptr + bb * svb + hh * svh
    dy_base = dy_ptr + bb * sdyb + hh * sdyh
    o_base = o_ptr + bb * sob + hh * soh
    f0_base = f0_ptr + bb * sob + hh * soh
    f1_base = f1_ptr + bb * sob + hh * soh
    mask_base = mask_ptr + bb * smb
    lse_bh = lse_ptr + pid_bh * T
    offs_dv = tl.arange(0, BDV)
    c_near = _coefficient(c_ptr, 0, H, hh, offs_dv, DV)
    c0 = _coefficient(c_ptr, 1, H, hh, offs_dv, DV)
    c1 = _coefficient(c_ptr, NM, H, hh, offs_dv, DV)
    first = pid_p * BPP
    last = tl.minimum(first + BPP, tl.cdiv(T, BM))
    if side == 0:
        _short_bwd_queries(
            q_base, k_base, v_base, mask_base, dy_base, o_base, f0_base, f1_base, lse_bh,
            den_ptr, st_ptr, dc_ptr, dq_ptr + bb * sdqb + hh * sdqh, c_near, c0, c1,
            pid_bh, n_bh, hh, seed_bh, first, last, H, T, W, D, DV, qk_scale, sm_scale, scale,
            p_drop, sqt, sqd, skt, skd, svt, svd, sot, sod, sdyt, sdyd, sdqt, sdqd, smt,
            NM, PHI0, PHI1, NORMALIZE, FAST, HAS_MASK, DROPOUT, BM, TN, BD, BDV, SLOT, PREC,
            DOT_DTYPE, FSEG,
        )  # fmt: skip
    else:
        _short_bwd_keys(
            q_base, k_base, v_base, mask_base, dy_base, o_base, f0_base, f1_base, lse_bh,
            den_ptr, rseg_ptr, dk_ptr + bb * sdkb + hh * sdkh, dv_ptr + bb * sdvb + hh * sdvh,
            c_near, c0, c1, pid_bh, n_bh, seed_bh, first, last, T, W, D, DV, qk_scale,
            sm_scale, scale, p_drop, sqt, sqd, skt, skd, svt, svd, sot, sod, sdyt, sdyd,
            sdkt, sdkd, sdvt, sdvd, smt,
            NM, PHI0, PHI1, NORMALIZE, FAST, HAS_MASK, DROPOUT, BM, TN, BS, BD, BDV, SLOT,
            PREC, DOT_DTYPE, NSEG, PDL,
        )  # fmt: skip


@triton.jit
def _short_bwd_queries(
    q_base, k_base, v_base, mask_base, dy_base, o_base, f0_base, f1_base, lse_bh,
    den_ptr, st_ptr, dc_ptr, dq_base, c_near, c0, c1,
    pid_bh, n_bh, hh, seed_bh, first, last, H, T, W, D, DV, qk_scale, sm_scale, scale,
    p_drop, sqt, sqd, skt, skd, svt, svd, sot, sod, sdyt, sdyd, sdqt, sdqd, smt,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, NORMALIZE: tl.constexpr,
    FAST: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, BM: tl.constexpr,
    TN: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr, SLOT: tl.constexpr,
    PREC: tl.constexpr, DOT_DTYPE: tl.constexpr, FSEG: tl.constexpr,
):  # fmt: skip
    """Side 0 of ``short_bwd_kernel``: per block, dq = the far fields' (from the forward's
    states) + the near field's (dout = c_near * dy); then the program's dc partial sums
    sum dy * field, one atomic add per field."""
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    S0, z0 = _segment_sum(st_ptr, pid_bh, FSEG, 0, offs_d, offs_dv, NM, BD, BDV, SLOT)
    S0 = S0.to(DOT_DTYPE)  # each map rounded once summed: fewer registers live
    S1, z1 = S0, z0
    if NM == 2:
        S1, z1 = _segment_sum(st_ptr, pid_bh, FSEG, 1, offs_d, offs_dv, NM, BD, BDV, SLOT)
        S1 = S1.to(DOT_DTYPE)
    dc_near = tl.zeros([BDV], dtype=tl.float32)
    dc0 = tl.zeros([BDV], dtype=tl.float32)
    dc1 = tl.zeros([BDV], dtype=tl.float32)
    for blk in range(first, last):
        b0 = blk * BM
        t = b0 + tl.arange(0, BM)
        inside = (t[:, None] < T) & (offs_d[None, :] < D)
        qq = load_tile(q_base, t, offs_d, T, D, sqt, sqd)
        dy = load_tile(dy_base, t, offs_dv, T, DV, sdyt, sdyd)
        dc_near += tl.sum(dy * load_tile(o_base, t, offs_dv, T, DV, sot, sod), axis=0)
        dq = tl.zeros([BM, BD], dtype=tl.float32)
        for m in tl.static_range(NM):
            if m == 0:
                S, z, c, f_base = S0, z0, c0, f0_base
            else:
                S, z, c, f_base = S1, z1, c1, f1_base
            o = load_tile(f_base, t, offs_dv, T, DV, sot, sod)
            if m == 0:
                dc0 += tl.sum(dy * o, axis=0)
            else:
                dc1 += tl.sum(dy * o, axis=0)
            g, s = g_and_s(
                dy * c[None, :], o, den_ptr + (m * n_bh + pid_bh) * T, t, T, scale, NORMALIZE
            )
            phi_unused, dphi = phi_of_map(qq, m, PHI0, PHI1, FAST)
            da = tl.dot(g.to(DOT_DTYPE), tl.trans(S), input_precision=PREC)
            dq += tl.where(inside, (da + s[:, None] * z[None, :]) * dphi, 0.0)

        q, do, delta, lse = query_rows(
            q_base, dy_base, o_base, lse_bh, t, T, D, DV, sqt, sqd, sdyt, sdyd, sot, sod,
            BD, BDV, c_near, True,
        )  # fmt: skip
        near = tl.zeros([BM, BD], dtype=tl.float32)
        near = near_dq_loop(
            near, q, do, delta, lse, t, b0, k_base, v_base, mask_base, seed_bh,
            T, W, D, DV, qk_scale, p_drop, skt, skd, svt, svd, smt,
            HAS_MASK, False, DROPOUT, BM, TN, BD, BDV, PREC,
        )  # fmt: skip
        store_tile(dq_base, t, offs_d, T, D, sdqt, sdqd, dq + near * sm_scale, False)

    keep_dv = offs_dv < DV
    tl.atomic_add(dc_ptr + hh * DV + offs_dv, dc_near, mask=keep_dv)
    tl.atomic_add(dc_ptr + (H + hh) * DV + offs_dv, dc0, mask=keep_dv)
    if NM == 2:
        tl.atomic_add(dc_ptr + (2 * H + hh) * DV + offs_dv, dc1, mask=keep_dv)


@triton.jit
def _short_bwd_keys(
    q_base, k_base, v_base, mask_base, dy_base, o_base, f0_base, f1_base, lse_bh,
    den_ptr, rseg_ptr, dk_base, dv_base, c_near, c0, c1, pid_bh, n_bh, seed_bh, first, last,
    T, W, D, DV, qk_scale, sm_scale, scale, p_drop, sqt, sqd, skt, skd, svt, svd, sot, sod,
    sdyt, sdyd, sdkt, sdkd, sdvt, sdvd, smt,
    NM: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, NORMALIZE: tl.constexpr,
    FAST: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, BM: tl.constexpr,
    TN: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    SLOT: tl.constexpr, PREC: tl.constexpr, DOT_DTYPE: tl.constexpr, NSEG: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    """Side 1 of ``short_bwd_kernel``: per block, dk and dv of the near field (dout =
    c_near * dy), then (after the reverse-state kernel under PDL) of the far fields, from
    the reverse states R_m, r_m: summed from the NSEG segments per block (one map at a time,
    fewer registers live), or (NSEG = 0) walked here once, before the blocks."""
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    if NSEG == 0:  # no reverse-state kernel: the program walks the row's queries, once
        R0, r0, R1, r1 = _reverse_states(
            q_base, dy_base, f0_base, f1_base, den_ptr, c0, c1, pid_bh, n_bh, 0, T,
            T, D, DV, scale, sqt, sqd, sdyt, sdyd, sot, sod,
            NM, PHI0, PHI1, FAST, NORMALIZE, BS, BD, BDV, PREC, DOT_DTYPE,
        )  # fmt: skip
    for blk in range(first, last):
        b0 = blk * BM
        t = b0 + tl.arange(0, BM)
        k, v, keep = key_rows(
            k_base, v_base, mask_base, t, T, D, DV, skt, skd, svt, svd, smt, HAS_MASK, BD, BDV
        )  # fmt: skip
        dk = tl.zeros([BM, BD], dtype=tl.float32)
        dv = tl.zeros([BM, BDV], dtype=tl.float32)
        dk, dv = near_dkv_loop(
            dk, dv, k, v, keep, t, b0, q_base, dy_base, o_base, lse_bh, lse_bh, seed_bh,
            T, W, D, DV, qk_scale, p_drop, sqt, sqd, sdyt, sdyd, sot, sod,
            False, DROPOUT, True, TN, BM, BD, BDV, PREC, c_near, True,
        )  # fmt: skip
        dk = dk * sm_scale

        if PDL:
            gdc_wait()  # the reverse-state kernel has finished (at once after the first time)
        kk = load_tile(k_base, t, offs_d, T, D, skt, skd)
        keep2 = keep_keys(mask_base, t, offs_d, T, D, smt, HAS_MASK)
        vv = load_tile(v_base, t, offs_dv, T, DV, svt, svd).to(DOT_DTYPE)
        for m in tl.static_range(NM):
            if NSEG > 0:  # one map's sum at a time: fewer registers live
                R, r = _segment_sum(rseg_ptr, pid_bh, NSEG, m, offs_d, offs_dv, NM, BD, BDV, SLOT)
            elif m == 0:
                R, r = R0, r0
            else:
                R, r = R1, r1
            R = R.to(DOT_DTYPE)
            b, dphi = phi_of_map(kk, m, PHI0, PHI1, FAST)
            b = tl.where(keep2, b, 0.0)
            db = tl.dot(vv, tl.trans(R), input_precision=PREC) + r[None, :]
            dv += tl.dot(b.to(DOT_DTYPE), R, input_precision=PREC)
            dk += tl.where(keep2, db * dphi, 0.0)  # padded keys get no gradient
        store_tile(dk_base, t, offs_d, T, D, sdkt, sdkd, dk, False)
        store_tile(dv_base, t, offs_dv, T, DV, sdvt, sdvd, dv, False)
