"""The near field kernels' shared Triton pieces: band and padding masks, dropout, and the two
loops of the forward and backward passes (``near.py``, ``near_bwd.py``, and the short-path FMM
kernels of ``fmm_short_kernels.py``).

Tiles: queries along rows, keys along columns (``_T``: transposed, keys along rows). Offsets
are within one (batch, head): the ``*_base`` pointers are already moved to it.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _band_mask(offs_m, offs_n, T, W, CAUSAL: tl.constexpr):
    """(BM x BN) bool: key j = offs_n is in query i = offs_m's band, and both lie in [0, T)."""
    diff = offs_m[:, None] - offs_n[None, :]  # i - j
    if CAUSAL:
        inside = (diff >= 0) & (diff < W)
    else:
        inside = (diff < W) & (diff > -W)
    return inside & (offs_n[None, :] < T) & (offs_m[:, None] < T)


@triton.jit
def _band_mask_t(offs_m, offs_n, T, W, CAUSAL: tl.constexpr):
    """The transpose of ``_band_mask``: (BN x BM), row = key j, column = query i."""
    diff = offs_m[None, :] - offs_n[:, None]  # i - j
    if CAUSAL:
        inside = (diff >= 0) & (diff < W)
    else:
        inside = (diff < W) & (diff > -W)
    return inside & (offs_n[:, None] < T) & (offs_m[None, :] < T)


@triton.jit
def _dropout_keep(seed, offs_m, offs_n, W, p_drop, TRANSPOSED: tl.constexpr):
    """Bool tile: the dropout keeps probability (i, j) (``TRANSPOSED``: rows are keys j).

    One uniform number per (batch * head, i, j): Philox keyed by ``seed`` (already offset by
    the batch * head index) at counter ``i * 2W + (j - i + W)``, the same in all three kernels.
    """
    if TRANSPOSED:
        counter = offs_m[None, :] * (2 * W) + (offs_n[:, None] - offs_m[None, :] + W)
    else:
        counter = offs_m[:, None] * (2 * W) + (offs_n[None, :] - offs_m[:, None] + W)
    return tl.rand(seed, counter) >= p_drop


@triton.jit
def _seed_of(seed, SEED_PTR: tl.constexpr):
    """The dropout seed: the argument itself, or (SEED_PTR) the integer it points to, a seed
    drawn on the device inside a compiled graph (no host sync, CUDA-graph safe). Read as an
    int32: the op draws seeds below 2**30, the same draws as that int passed directly."""
    if SEED_PTR:
        return tl.load(seed).to(tl.int32)
    else:
        return seed


@triton.jit
def _key_keep(mask_base, offs_n, T, smt, HAS_MASK: tl.constexpr):
    """(BN,) bool: key is not padding (and inside the sequence)."""
    keep = offs_n < T
    if HAS_MASK:
        pad = tl.load(mask_base + offs_n * smt, mask=offs_n < T, other=1)
        keep = keep & (pad == 0)
    return keep


@triton.jit
def _rows(base, offs, T, N, st, sd, BN: tl.constexpr):
    """The (rows, BN) tile of positions ``offs`` (stride st) and columns 0..BN-1 (stride sd),
    zeros at positions >= T and columns >= N."""
    cols = tl.arange(0, BN)
    mask = (offs[:, None] < T) & (cols[None, :] < N)
    return tl.load(base + offs[:, None] * st + cols[None, :] * sd, mask=mask, other=0.0)


@triton.jit
def _key_span(m0, T, W, CAUSAL: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """[lo, hi): the keys the band of queries [m0, m0 + BM) reaches, lo on a BN boundary."""
    lo = (tl.maximum(m0 - (W - 1), 0) // BN) * BN
    if CAUSAL:
        hi = tl.minimum(m0 + BM, T)
    else:
        hi = tl.minimum(m0 + BM + W - 1, T)
    return lo, hi


@triton.jit
def _key_tile(
    q, k_base, v_base, mask_base, offs_m, offs_n, T, W, D, DV, qk_scale, skt, skd, svt, svd,
    smt, HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    """k and v of the keys ``offs_n``, the scores q k^T * qk_scale of the queries ``offs_m``
    and which (query, key) pairs are visible (in the band, not padding)."""
    k = _rows(k_base, offs_n, T, D, skt, skd, BD)
    v = _rows(v_base, offs_n, T, DV, svt, svd, BDV)
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    valid = _band_mask(offs_m, offs_n, T, W, CAUSAL)
    valid = valid & _key_keep(mask_base, offs_n, T, smt, HAS_MASK)[None, :]
    return k, v, s, valid


@triton.jit
def _store_grad(ptrs, mask, grad, ACCUMULATE: tl.constexpr):
    """Store a float32 gradient tile in the tensor's dtype; ACCUMULATE: added to what is
    there (the far field's gradient, in the fused FMM backward)."""
    if ACCUMULATE:
        grad += tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptrs, grad.to(ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _fwd_loop(
    q, offs_m, m0, k_base, v_base, mask_base, seed_bh,
    T, W, D, DV, qk_scale, p_drop, skt, skd, svt, svd, smt,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    """The forward of the BM queries ``offs_m`` from m0 (q: (BM, BD) in the inputs' dtype),
    over the BN-key tiles their band reaches, with the online softmax of FlashAttention:
    (out (BM, BDV) float32, base-2 log-sum-exp (BM,)); out = 0, lse = inf where no key is
    visible."""
    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, BDV], dtype=tl.float32)
    lo, hi = _key_span(m0, T, W, CAUSAL, BM, BN)
    for n0 in range(lo, hi, BN):
        offs_n = n0 + tl.arange(0, BN)
        k, v, s, valid = _key_tile(
            q, k_base, v_base, mask_base, offs_m, offs_n, T, W, D, DV, qk_scale,
            skt, skd, svt, svd, smt, HAS_MASK, CAUSAL, BD, BDV, PREC,
        )  # fmt: skip
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # Rows with no visible key yet keep m = -inf; shift them by 0 so exp2 gives 0, not NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if DROPOUT:
            # Inverted dropout of the probabilities; the normaliser l keeps every term.
            keep = _dropout_keep(seed_bh, offs_m, offs_n, W, p_drop, False)
            p = tl.where(keep, p / (1.0 - p_drop), 0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("inf"))
    return out, lse


@triton.jit
def _dq_loop(
    dq, q, do, delta, lse, offs_m, m0, k_base, v_base, mask_base, seed_bh,
    T, W, D, DV, qk_scale, p_drop, skt, skd, svt, svd, smt,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    """dq + sum_j p_ij (dp_ij - delta_i) k_j (not yet times sm_scale) for the BM queries
    ``offs_m`` from m0, over the BN-key tiles their band reaches. q, do: (BM, BD), (BM, BDV)
    in the inputs' dtype; delta, lse (BM,) float32."""
    lo, hi = _key_span(m0, T, W, CAUSAL, BM, BN)
    for n0 in range(lo, hi, BN):
        offs_n = n0 + tl.arange(0, BN)
        k, v, s, valid = _key_tile(
            q, k_base, v_base, mask_base, offs_m, offs_n, T, W, D, DV, qk_scale,
            skt, skd, svt, svd, smt, HAS_MASK, CAUSAL, BD, BDV, PREC,
        )  # fmt: skip
        p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        if DROPOUT:
            keep = _dropout_keep(seed_bh, offs_m, offs_n, W, p_drop, False)
            dp = tl.where(keep, dp / (1.0 - p_drop), 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    return dq


@triton.jit
def _dkv_loop(
    dk, dv, k, v, keep, offs_n, n0, q_base, do_base, o_base, lse_bh, delta_bh, seed_bh,
    T, W, D, DV, qk_scale, p_drop, sqt, sqd, sdot, sdod, sot, sod,
    CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, DELTA_FROM_O: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr, do_scale, SCALE_DO: tl.constexpr,
):  # fmt: skip
    """(dk, dv) + the BN keys ``offs_n`` from n0's terms, over the BM-query tiles whose band
    reaches them (transposed tiles: keys along rows; dk not yet times sm_scale). k, v: (BN,
    BD), (BN, BDV); keep (BN,) the keys that are not padding. delta_i = do_i . out_i is read
    from ``delta_bh`` (written by the dq kernel), or (DELTA_FROM_O) formed from out and do.
    SCALE_DO: the output gradient is do * do_scale (BDV,) float32, the near field's blend
    weights applied to the layer's dy (the short-path FMM backward, ``fmm_short_kernels.py``),
    rounded to do's dtype as the blend backward would store it."""
    # Queries i that see a key of this block: j <= i < j + W (causal), |i - j| < W.
    if CAUSAL:
        lo = (n0 // BM) * BM
    else:
        lo = (tl.maximum(n0 - (W - 1), 0) // BM) * BM
    hi = tl.minimum(n0 + BN + W - 1, T)
    for m0 in range(lo, hi, BM):
        offs_m = m0 + tl.arange(0, BM)
        row_ok = offs_m < T
        q = _rows(q_base, offs_m, T, D, sqt, sqd, BD)
        do = _rows(do_base, offs_m, T, DV, sdot, sdod, BDV)
        if SCALE_DO:
            do = (do.to(tl.float32) * do_scale[None, :]).to(do.dtype)
        if DELTA_FROM_O:
            o = _rows(o_base, offs_m, T, DV, sot, sod, BDV)
            delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)
        else:
            delta = tl.load(delta_bh + offs_m, mask=row_ok, other=0.0)
        do = do.to(k.dtype)
        lse = tl.load(lse_bh + offs_m, mask=row_ok, other=float("inf"))
        sT = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale  # (keys, queries)
        validT = _band_mask_t(offs_m, offs_n, T, W, CAUSAL) & keep[:, None]
        pT = tl.where(validT, tl.exp2(sT - lse[None, :]), 0.0)
        dpT = tl.dot(v, tl.trans(do), input_precision=PREC)
        if DROPOUT:
            keepT = _dropout_keep(seed_bh, offs_m, offs_n, W, p_drop, True)
            pdT = tl.where(keepT, pT / (1.0 - p_drop), 0.0)
            dpT = tl.where(keepT, dpT / (1.0 - p_drop), 0.0)
        else:
            pdT = pT
        dv += tl.dot(pdT.to(k.dtype), do, input_precision=PREC)
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(k.dtype), q, input_precision=PREC)
    return dk, dv


@triton.jit
def _query_rows(
    q_base, do_base, o_base, lse_bh, offs_m, T, D, DV, sqt, sqd, sdot, sdod, sot, sod,
    BD: tl.constexpr, BDV: tl.constexpr, do_scale, SCALE_DO: tl.constexpr,
):  # fmt: skip
    """What the dq loop takes of the queries ``offs_m``: q, do (in q's dtype), delta_i =
    do_i . out_i and the log-sum-exp (float32). SCALE_DO: do is dout * do_scale, rounded as in
    ``_dkv_loop``."""
    q = _rows(q_base, offs_m, T, D, sqt, sqd, BD)
    do = _rows(do_base, offs_m, T, DV, sdot, sdod, BDV)
    if SCALE_DO:
        do = (do.to(tl.float32) * do_scale[None, :]).to(do.dtype)
    o = _rows(o_base, offs_m, T, DV, sot, sod, BDV)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)
    lse = tl.load(lse_bh + offs_m, mask=offs_m < T, other=float("inf"))
    return q, do.to(q.dtype), delta, lse


@triton.jit
def _key_rows(
    k_base, v_base, mask_base, offs_n, T, D, DV, skt, skd, svt, svd, smt,
    HAS_MASK: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
):  # fmt: skip
    """What the dk/dv loop takes of the keys ``offs_n``: k, v and which are not padding."""
    k = _rows(k_base, offs_n, T, D, skt, skd, BD)
    v = _rows(v_base, offs_n, T, DV, svt, svd, BDV)
    return k, v, _key_keep(mask_base, offs_n, T, smt, HAS_MASK)
