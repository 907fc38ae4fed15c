"""The near field's kernels (Triton): the forward, and the backward as two kernels.

* ``band_fwd_kernel``: out and the base-2 log-sum-exp of one block of queries over the key
  tiles its band reaches (the online softmax of FlashAttention); in the fused FMM forward
  also the blend y (``tiles.blend_add``).
* ``band_dq_kernel`` then ``band_dkv_kernel``: the probabilities recomputed from the
  log-sum-exp, dq over query blocks (writing delta_i = dout_i . out_i), then dk and dv over key
  blocks (no atomics).

Shapes as in ``op.py``; the loops are ``tiles.near_fwd_loop``, ``near_dq_loop`` and
``near_dkv_loop``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..common.tiles import (
    blend_add,
    key_rows,
    load_rows,
    near_dkv_loop,
    near_dq_loop,
    near_fwd_loop,
    query_rows,
    seed_of,
    store_grad,
)


@triton.jit
def band_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    mask_ptr,
    o_ptr,
    lse_ptr,
    f1_ptr,
    f2_ptr,
    f3_ptr,
    c_ptr,
    y_ptr,
    H,
    T,
    W,
    D,
    DV,
    qk_scale,
    seed,
    p_drop,
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
    HAS_MASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    DROPOUT: tl.constexpr,
    SEED_PTR: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    BDV: tl.constexpr,
    PREC: tl.constexpr,
    BLEND: tl.constexpr,
):
    """out and the base-2 log-sum-exp for one query block. Grid (query blocks, batch * heads).

    BLEND > 0 (the fused FMM forward, the far fields computed first): also the blend
    y = c_0 * out + sum_{f=1..BLEND} c_f * field_f, the far fields f1..f3 and y laid out like
    out, c (1 + BLEND, heads, head_dim_v) float32."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    bb = pid_bh // H
    hh = pid_bh % H
    seed_bh = seed_of(seed, SEED_PTR) + pid_bh  # dropout: this (batch, head)'s stream
    q_base = q_ptr + bb * sqb + hh * sqh
    k_base = k_ptr + bb * skb + hh * skh
    v_base = v_ptr + bb * svb + hh * svh
    o_base = o_ptr + bb * sob + hh * soh
    mask_base = mask_ptr + bb * smb
    m0 = pid_m * BM
    offs_m = m0 + tl.arange(0, BM)
    offs_dv = tl.arange(0, BDV)
    q = load_rows(q_base, offs_m, T, D, sqt, sqd, BD)
    out, lse = near_fwd_loop(
        q, offs_m, m0, k_base, v_base, mask_base, seed_bh,
        T, W, D, DV, qk_scale, p_drop, skt, skd, svt, svd, smt,
        HAS_MASK, CAUSAL, DROPOUT, BM, BN, BD, BDV, PREC,
    )  # fmt: skip
    tile = offs_m[:, None] * sot + offs_dv[None, :] * sod
    inside = (offs_m[:, None] < T) & (offs_dv[None, :] < DV)
    out = out.to(o_ptr.dtype.element_ty)
    tl.store(o_base + tile, out, mask=inside)
    tl.store(lse_ptr + pid_bh * T + offs_m, lse, mask=offs_m < T)
    if BLEND > 0:
        # The sum ops/blend forms from the stored fields, term for term (out rounded first).
        fields = bb * sob + hh * soh + tile
        y = blend_add(0.0, out, o_ptr, c_ptr, 0, H, hh, offs_dv, DV)
        f1 = tl.load(f1_ptr + fields, mask=inside, other=0.0)
        y = blend_add(y, f1, o_ptr, c_ptr, 1, H, hh, offs_dv, DV)
        if BLEND > 1:
            f2 = tl.load(f2_ptr + fields, mask=inside, other=0.0)
            y = blend_add(y, f2, o_ptr, c_ptr, 2, H, hh, offs_dv, DV)
        if BLEND > 2:
            f3 = tl.load(f3_ptr + fields, mask=inside, other=0.0)
            y = blend_add(y, f3, o_ptr, c_ptr, 3, H, hh, offs_dv, DV)
        tl.store(y_ptr + fields, y.to(y_ptr.dtype.element_ty), mask=inside)


@triton.jit
def band_dq_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, o_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    H, T, W, D, DV, qk_scale, sm_scale, seed, p_drop,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sob, soh, sot, sod,
    sdob, sdoh, sdot, sdod, sdqb, sdqh, sdqt, sdqd, smb, smt,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    SEED_PTR: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    BDV: tl.constexpr, PREC: tl.constexpr, ACCUMULATE: tl.constexpr,
):  # fmt: skip
    """dq = sm_scale sum_j p_ij (dp_ij - delta_i) k_j for one query block; writes delta too.
    Grid (query blocks, batch * heads)."""
    pid_bh = tl.program_id(1).to(tl.int64)
    bb = pid_bh // H
    hh = pid_bh % H
    seed_bh = seed_of(seed, SEED_PTR) + pid_bh  # dropout: this (batch, head)'s stream
    q_base = q_ptr + bb * sqb + hh * sqh
    o_base = o_ptr + bb * sob + hh * soh
    do_base = do_ptr + bb * sdob + hh * sdoh
    m0 = tl.program_id(0) * BM
    offs_m = m0 + tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    row_ok = offs_m < T
    q, do, delta, lse = query_rows(
        q_base, do_base, o_base, lse_ptr + pid_bh * T, offs_m, T, D, DV,
        sqt, sqd, sdot, sdod, sot, sod, BD, BDV, 0.0, False,
    )  # fmt: skip
    tl.store(delta_ptr + pid_bh * T + offs_m, delta, mask=row_ok)
    dq = tl.zeros([BM, BD], dtype=tl.float32)
    dq = near_dq_loop(
        dq, q, do, delta, lse, offs_m, m0, k_ptr + bb * skb + hh * skh,
        v_ptr + bb * svb + hh * svh, mask_ptr + bb * smb, seed_bh,
        T, W, D, DV, qk_scale, p_drop, skt, skd, svt, svd, smt,
        HAS_MASK, CAUSAL, DROPOUT, BM, BN, BD, BDV, PREC,
    )  # fmt: skip
    dq_ptrs = dq_ptr + bb * sdqb + hh * sdqh + offs_m[:, None] * sdqt + offs_d[None, :] * sdqd
    store_grad(dq_ptrs, row_ok[:, None] & (offs_d[None, :] < D), dq * sm_scale, ACCUMULATE)


@triton.jit
def band_dkv_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    H, T, W, D, DV, qk_scale, sm_scale, seed, p_drop,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd,
    sdob, sdoh, sdot, sdod, sdkb, sdkh, sdkt, sdkd, sdvb, sdvh, sdvt, sdvd, smb, smt,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    SEED_PTR: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    BDV: tl.constexpr, PREC: tl.constexpr, ACCUMULATE: tl.constexpr,
):  # fmt: skip
    """dk, dv for one key block, over the query blocks whose band reaches it (transposed);
    delta from the dq kernel. Grid (key blocks, batch * heads)."""
    pid_bh = tl.program_id(1).to(tl.int64)
    bb = pid_bh // H
    hh = pid_bh % H
    seed_bh = seed_of(seed, SEED_PTR) + pid_bh  # dropout: this (batch, head)'s stream
    n0 = tl.program_id(0) * BN
    offs_n = n0 + tl.arange(0, BN)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    col_ok = offs_n < T
    k, v, keep = key_rows(
        k_ptr + bb * skb + hh * skh, v_ptr + bb * svb + hh * svh, mask_ptr + bb * smb,
        offs_n, T, D, DV, skt, skd, svt, svd, smt, HAS_MASK, BD, BDV,
    )  # fmt: skip
    dk = tl.zeros([BN, BD], dtype=tl.float32)
    dv = tl.zeros([BN, BDV], dtype=tl.float32)
    do_base = do_ptr + bb * sdob + hh * sdoh
    dk, dv = near_dkv_loop(
        dk, dv, k, v, keep, offs_n, n0, q_ptr + bb * sqb + hh * sqh, do_base, do_base,
        lse_ptr + pid_bh * T, delta_ptr + pid_bh * T, seed_bh,
        T, W, D, DV, qk_scale, p_drop, sqt, sqd, sdot, sdod, sdot, sdod,
        CAUSAL, DROPOUT, False, BM, BN, BD, BDV, PREC, 0.0, False,
    )  # fmt: skip
    dk_ptrs = dk_ptr + bb * sdkb + hh * sdkh + offs_n[:, None] * sdkt + offs_d[None, :] * sdkd
    dv_ptrs = dv_ptr + bb * sdvb + hh * sdvh + offs_n[:, None] * sdvt + offs_dv[None, :] * sdvd
    store_grad(dk_ptrs, col_ok[:, None] & (offs_d[None, :] < D), dk * sm_scale, ACCUMULATE)
    store_grad(dv_ptrs, col_ok[:, None] & (offs_dv[None, :] < DV), dv, ACCUMULATE)
