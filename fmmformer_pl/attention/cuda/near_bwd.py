"""The near field's backward kernels (Triton): the probabilities are recomputed from the
forward's log-sum-exp, dq over query blocks, dk and dv over key blocks (no atomics).

* ``_band_bwd_kernel``: one program per block of B positions does both: dk, dv of its keys
  (over the query tiles their band reaches), then dq of its queries (over the key tiles).
  One launch; q, k, v, out and dout are read by neighbouring programs at about the same time
  (from L2), delta_i = dout_i . out_i is formed where it is used, nothing is written but the
  gradients.
* ``_band_dq_kernel`` then ``_band_dkv_kernel``: the same work in two launches, delta written
  by the first and read by the second (``near.MERGED_BACKWARD`` picks; see its measurement).

Shapes as in ``near.py``; the loops are ``near_tiles._dq_loop`` / ``_dkv_loop``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .near_tiles import _dkv_loop, _dq_loop, _key_rows, _query_rows, _seed_of, _store_grad


@triton.jit
def _band_bwd_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, o_ptr, do_ptr, lse_ptr, dq_ptr, dk_ptr, dv_ptr,
    H, T, W, D, DV, qk_scale, sm_scale, seed, p_drop,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sob, soh, sot, sod,
    sdob, sdoh, sdot, sdod, sdqb, sdqh, sdqt, sdqd, sdkb, sdkh, sdkt, sdkd,
    sdvb, sdvh, sdvt, sdvd, smb, smt,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    SEED_PTR: tl.constexpr, B: tl.constexpr, TQ: tl.constexpr, TK: tl.constexpr,
    BD: tl.constexpr, BDV: tl.constexpr, PREC: tl.constexpr, ACCUMULATE: tl.constexpr,
):  # fmt: skip
    """dk, dv of keys [b0, b0 + B) (query tiles of TQ) and dq of queries [b0, b0 + B) (key
    tiles of TK), b0 = B * program. Grid (blocks, batch * heads)."""
    pid_bh = tl.program_id(1).to(tl.int64)
    bb = pid_bh // H
    hh = pid_bh % H
    seed_bh = _seed_of(seed, SEED_PTR) + pid_bh  # dropout: this (batch, head)'s stream
    q_base = q_ptr + bb * sqb + hh * sqh
    k_base = k_ptr + bb * skb + hh * skh
    v_base = v_ptr + bb * svb + hh * svh
    o_base = o_ptr + bb * sob + hh * soh
    do_base = do_ptr + bb * sdob + hh * sdoh
    mask_base = mask_ptr + bb * smb
    lse_bh = lse_ptr + pid_bh * T
    b0 = tl.program_id(0) * B
    offs = b0 + tl.arange(0, B)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    ok = offs < T

    k, v, keep = _key_rows(
        k_base, v_base, mask_base, offs, T, D, DV, skt, skd, svt, svd, smt, HAS_MASK, BD, BDV
    )
    dk = tl.zeros([B, BD], dtype=tl.float32)
    dv = tl.zeros([B, BDV], dtype=tl.float32)
    dk, dv = _dkv_loop(
        dk, dv, k, v, keep, offs, b0, q_base, do_base, o_base, lse_bh, lse_bh, seed_bh,
        T, W, D, DV, qk_scale, p_drop, sqt, sqd, sdot, sdod, sot, sod,
        CAUSAL, DROPOUT, True, TQ, B, BD, BDV, PREC, 0.0, False,
    )  # fmt: skip
    dk_ptrs = dk_ptr + bb * sdkb + hh * sdkh + offs[:, None] * sdkt + offs_d[None, :] * sdkd
    dv_ptrs = dv_ptr + bb * sdvb + hh * sdvh + offs[:, None] * sdvt + offs_dv[None, :] * sdvd
    _store_grad(dk_ptrs, ok[:, None] & (offs_d[None, :] < D), dk * sm_scale, ACCUMULATE)
    _store_grad(dv_ptrs, ok[:, None] & (offs_dv[None, :] < DV), dv, ACCUMULATE)

    q, do, delta, lse = _query_rows(
        q_base,
        do_base,
        o_base,
        lse_bh,
        offs,
        T,
        D,
        DV,
        sqt,
        sqd,
        sdot,
        sdod,
        sot,
        sod,
        BD,
        BDV,
        0.0,
        False,
    )
    dq = tl.zeros([B, BD], dtype=tl.float32)
    dq = _dq_loop(
        dq, q, do, delta, lse, offs, b0, k_base, v_base, mask_base, seed_bh,
        T, W, D, DV, qk_scale, p_drop, skt, skd, svt, svd, smt,
        HAS_MASK, CAUSAL, DROPOUT, B, TK, BD, BDV, PREC,
    )  # fmt: skip
    dq_ptrs = dq_ptr + bb * sdqb + hh * sdqh + offs[:, None] * sdqt + offs_d[None, :] * sdqd
    _store_grad(dq_ptrs, ok[:, None] & (offs_d[None, :] < D), dq * sm_scale, ACCUMULATE)


@triton.jit
def _band_dq_kernel(
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
    seed_bh = _seed_of(seed, SEED_PTR) + pid_bh  # dropout: this (batch, head)'s stream
    q_base = q_ptr + bb * sqb + hh * sqh
    o_base = o_ptr + bb * sob + hh * soh
    do_base = do_ptr + bb * sdob + hh * sdoh
    m0 = tl.program_id(0) * BM
    offs_m = m0 + tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    row_ok = offs_m < T
    q, do, delta, lse = _query_rows(
        q_base, do_base, o_base, lse_ptr + pid_bh * T, offs_m, T, D, DV,
        sqt, sqd, sdot, sdod, sot, sod, BD, BDV, 0.0, False,
    )  # fmt: skip
    tl.store(delta_ptr + pid_bh * T + offs_m, delta, mask=row_ok)
    dq = tl.zeros([BM, BD], dtype=tl.float32)
    dq = _dq_loop(
        dq, q, do, delta, lse, offs_m, m0, k_ptr + bb * skb + hh * skh,
        v_ptr + bb * svb + hh * svh, mask_ptr + bb * smb, seed_bh,
        T, W, D, DV, qk_scale, p_drop, skt, skd, svt, svd, smt,
        HAS_MASK, CAUSAL, DROPOUT, BM, BN, BD, BDV, PREC,
    )  # fmt: skip
    dq_ptrs = dq_ptr + bb * sdqb + hh * sdqh + offs_m[:, None] * sdqt + offs_d[None, :] * sdqd
    _store_grad(dq_ptrs, row_ok[:, None] & (offs_d[None, :] < D), dq * sm_scale, ACCUMULATE)


@triton.jit
def _band_dkv_kernel(
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
    seed_bh = _seed_of(seed, SEED_PTR) + pid_bh  # dropout: this (batch, head)'s stream
    n0 = tl.program_id(0) * BN
    offs_n = n0 + tl.arange(0, BN)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    col_ok = offs_n < T
    k, v, keep = _key_rows(
        k_ptr + bb * skb + hh * skh, v_ptr + bb * svb + hh * svh, mask_ptr + bb * smb,
        offs_n, T, D, DV, skt, skd, svt, svd, smt, HAS_MASK, BD, BDV,
    )  # fmt: skip
    dk = tl.zeros([BN, BD], dtype=tl.float32)
    dv = tl.zeros([BN, BDV], dtype=tl.float32)
    do_base = do_ptr + bb * sdob + hh * sdoh
    dk, dv = _dkv_loop(
        dk, dv, k, v, keep, offs_n, n0, q_ptr + bb * sqb + hh * sqh, do_base, do_base,
        lse_ptr + pid_bh * T, delta_ptr + pid_bh * T, seed_bh,
        T, W, D, DV, qk_scale, p_drop, sqt, sqd, sdot, sdod, sdot, sdod,
        CAUSAL, DROPOUT, False, BM, BN, BD, BDV, PREC, 0.0, False,
    )  # fmt: skip
    dk_ptrs = dk_ptr + bb * sdkb + hh * sdkh + offs_n[:, None] * sdkt + offs_d[None, :] * sdkd
    dv_ptrs = dv_ptr + bb * sdvb + hh * sdvh + offs_n[:, None] * sdvt + offs_dv[None, :] * sdvd
    _store_grad(dk_ptrs, col_ok[:, None] & (offs_d[None, :] < D), dk * sm_scale, ACCUMULATE)
    _store_grad(dv_ptrs, col_ok[:, None] & (offs_dv[None, :] < DV), dv, ACCUMULATE)
