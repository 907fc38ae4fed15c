"""The Triton building blocks every kernel of ``ops/`` shares (public names, one module).

Far field: the feature maps in registers (``phi_and_derivative``: one branch per kernel code
of ``attention/feature_maps.py``), tile, feature and state loads and stores, the backward's
per-position g and s. Near field: band and padding masks, dropout, and the loops of the
forward and backward passes. Blend: ``blend_start`` / ``blend_add``, the terms every fused
kernel adds to y in the order ``ops/blend`` sums the stored fields.

Shapes: a tile is (chunk x head_dim) of one (batch, head); a state slot is S (head_dim x
head_dim_v, row-major) then z (head_dim), float32; the feature buffer is (side, map,
batch * heads, seq, head_dim), side 0 = phi(q), side 1 = phi(k), in the matrix products'
dtype. Near-field tiles: queries along rows, keys along columns (``_t``: transposed). Offsets
are within one (batch, head): the ``*_base`` pointers are already moved to it.
"""

from __future__ import annotations

import triton
import triton.language as tl

# ---------------------------------------------------------------------------- far field


@triton.jit
def exp_ftz(x, FAST: tl.constexpr):
    """exp(x), float32. ``tl.exp`` is the MUFU's approximate ex2 of x log2(e) plus three
    instructions per element that keep results below 2^-126 as denormals; FAST flushes those to
    zero instead (``ex2.approx.ftz``), the same accuracy above. The Triton interpreter on the CPU
    has no inline PTX: its tests run ``tl.exp``."""
    if FAST:
        return tl.inline_asm_elementwise(
            "ex2.approx.ftz.f32 $0, $1;", "=r,r", [x * 1.4426950408889634],
            dtype=tl.float32, is_pure=True, pack=1,
        )  # fmt: skip
    else:
        return tl.exp(x)


@triton.jit
def phi_and_derivative(x, PHI: tl.constexpr, FAST: tl.constexpr):
    """phi(x) and phi'(x), elementwise, float32: PHI is a ``kernel_code`` of
    ``attention/feature_maps.FEATURE_MAP_TABLE``, whose PyTorch function this branch matches."""
    if PHI == 0:  # elu(x) + 1
        e = exp_ftz(tl.minimum(x, 0.0), FAST)
        y = tl.where(x > 0, x + 1.0, e)
        dy = tl.where(x > 0, 1.0, e)
    elif PHI == 1:  # elu(-x) + 1
        e = exp_ftz(tl.minimum(-x, 0.0), FAST)
        y = tl.where(x < 0, 1.0 - x, e)
        dy = tl.where(x < 0, -1.0, -e)
    elif PHI == 2:  # tanh(x) + 1 = 2 sigmoid(2x)
        sg = 1.0 / (1.0 + exp_ftz(-2.0 * x, FAST))
        y = 2.0 * sg
        dy = 4.0 * sg * (1.0 - sg)
    elif PHI == 3:  # relu
        y = tl.maximum(x, 0.0)
        dy = tl.where(x > 0, 1.0, 0.0)
    else:  # softplus, with torch's threshold 20 (identity above it)
        e = exp_ftz(tl.minimum(x, 20.0), FAST)
        # log(1 + e) loses e entirely below ~1e-7; there softplus(x) = e to float32 precision.
        y = tl.where(x > 20.0, x, tl.where(x < -15.0, e, tl.log(1.0 + e)))
        dy = e / (1.0 + e)
    return y, dy


@triton.jit
def phi_of_map(x, M: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, FAST: tl.constexpr):
    """phi_M(x), phi_M'(x) for feature map M (0 or 1) of the call."""
    if M == 0:
        return phi_and_derivative(x, PHI0, FAST)
    else:
        return phi_and_derivative(x, PHI1, FAST)


@triton.jit
def dphi_from_features(y, x_base, t, offs_d, T, D, sxt, sxd, PHI: tl.constexpr, FAST: tl.constexpr):
    """phi'(x) of a tile from y = phi(x) as the forward stored it (0 at padding and outside).

    elu + 1, elu(-x) + 1 and relu have derivatives that are functions of phi itself:
    min(y, 1), -min(y, 1), [y > 0], all 0 where y = 0. tanh + 1 and softplus do not (from a
    bf16 y, 2 - y would cancel), so their x is reloaded and the map recomputed; the computed
    derivative of those maps is 0 wherever the computed phi is, so zeroing it where y = 0
    keeps padded keys at zero gradient without the padding mask.
    """
    if PHI == 0:
        return tl.minimum(y, 1.0)
    elif PHI == 1:
        return -tl.minimum(y, 1.0)
    elif PHI == 3:
        return tl.where(y > 0, 1.0, 0.0)
    else:
        _, dy = phi_and_derivative(load_tile(x_base, t, offs_d, T, D, sxt, sxd), PHI, FAST)
        return tl.where(y != 0, dy, 0.0)


@triton.jit
def dphi_of_map(
    y, x_base, t, offs_d, T, D, sxt, sxd,
    M: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, FAST: tl.constexpr,
):  # fmt: skip
    """``dphi_from_features`` of feature map M (0 or 1) of the call."""
    if M == 0:
        return dphi_from_features(y, x_base, t, offs_d, T, D, sxt, sxd, PHI0, FAST)
    else:
        return dphi_from_features(y, x_base, t, offs_d, T, D, sxt, sxd, PHI1, FAST)


@triton.jit
def inverse_row_sum(p, FEATURE_NORMALIZE: tl.constexpr):
    """1 / sum_d p per row of a float32 (chunk x head_dim) tile of features p = phi(x) (a tile
    holds a whole row, BD >= D), 1 where the sum is 0 (padding: p is 0 there), the factor of
    the released LM code's feature normalisation y = p / sum_d p; one division per row, not
    per element. A stand-in 1.0 without FEATURE_NORMALIZE."""
    if FEATURE_NORMALIZE:
        s = tl.sum(p, axis=1)
        return 1.0 / tl.where(s > 0, s, 1.0)
    else:
        return 1.0


@triton.jit
def normalize_features(p, FEATURE_NORMALIZE: tl.constexpr):
    """y = p / sum_d p per row of a float32 tile of features (``inverse_row_sum``); p itself
    without FEATURE_NORMALIZE."""
    if FEATURE_NORMALIZE:
        return p * inverse_row_sum(p, True)[:, None]
    else:
        return p


@triton.jit
def stored_features(p, FEATURE_NORMALIZE: tl.constexpr):
    """The features the products take, from a tile p of the feature buffer (its dtype), which
    holds phi(x) unnormalised: p itself, or (FEATURE_NORMALIZE) p / sum_d p in p's dtype."""
    if FEATURE_NORMALIZE:
        return normalize_features(p.to(tl.float32), True).to(p.dtype)
    else:
        return p


@triton.jit
def through_normalize(dy, p, inv, FEATURE_NORMALIZE: tl.constexpr):
    """dL/dp from dL/dy (float32 tiles) for y = p / s, s = sum_d p: (dy - sum_d(dy * y)) / s,
    with p (float32) from the feature buffer and inv = 1 / s (``inverse_row_sum``; rows of p
    that are 0 have phi' = 0); dy itself without FEATURE_NORMALIZE."""
    if FEATURE_NORMALIZE:
        dot = tl.sum(dy * p, axis=1) * inv  # sum_d dy * y
        return (dy - dot[:, None]) * inv[:, None]
    else:
        return dy


@triton.jit
def feature_base(phi_ptr, side, m, NM: tl.constexpr, pid_bh, n_bh, T, D):
    """Start of phi_m(q) (side 0) or phi_m(k) (side 1) of (batch * heads) row pid_bh (int64)
    in the feature buffer (side, map, batch * heads, seq, head_dim)."""
    return phi_ptr + ((side * NM + m) * n_bh + pid_bh) * T * D


@triton.jit
def load_features(base, t, offs_d, T, D):
    """A (chunk x head_dim) tile of the feature buffer, in its dtype, zero outside."""
    mask = (t[:, None] < T) & (offs_d[None, :] < D)
    return tl.load(base + t[:, None] * D + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def store_features(base, t, offs_d, T, D, x):
    """Store a (chunk x head_dim) tile into the feature buffer (cast to its dtype)."""
    mask = (t[:, None] < T) & (offs_d[None, :] < D)
    tl.store(base + t[:, None] * D + offs_d[None, :], x.to(base.dtype.element_ty), mask=mask)


@triton.jit
def program_ids(H):
    """(index along grid axis 0, batch * heads row (int64), programs along axis 0, rows,
    batch index, head index) of a program whose grid axis 1 is batch * heads."""
    pid_bh = tl.program_id(1).to(tl.int64)
    return tl.program_id(0), pid_bh, tl.num_programs(0), tl.num_programs(1), pid_bh // H, pid_bh % H


@triton.jit
def segment_state(
    ptr, slot, valid, offs_d, offs_dv,
    BD: tl.constexpr, BDV: tl.constexpr, SLOT: tl.constexpr, HAS_INIT: tl.constexpr,
):  # fmt: skip
    """The state (S, z) a causal walk starts from: the slot where HAS_INIT (zeros where not
    ``valid``), else zeros (a one-segment call has no state pass)."""
    if HAS_INIT:
        return load_state_if(ptr, slot, valid, offs_d, offs_dv, BD, BDV, SLOT)
    else:
        return tl.zeros([BD, BDV], dtype=tl.float32), tl.zeros([BD], dtype=tl.float32)


@triton.jit
def walk_states(
    ptr, slot, m, valid, offs_d, offs_dv, NM: tl.constexpr,
    BD: tl.constexpr, BDV: tl.constexpr, SLOT: tl.constexpr, HAS_INIT: tl.constexpr,
    TWO: tl.constexpr,
):  # fmt: skip
    """(S0, z0, S1, z1): the states a causal walk over map m starts from (``segment_state``
    of slot + m), and where it walks both maps (TWO) map 1's (slot + 1); else S1, z1 are zeros
    and go unused."""
    S0, z0 = segment_state(ptr, slot + m, valid, offs_d, offs_dv, BD, BDV, SLOT, HAS_INIT)
    S1, z1 = segment_state(
        ptr, slot + NM - 1, valid, offs_d, offs_dv, BD, BDV, SLOT, HAS_INIT and TWO
    )  # fmt: skip
    return S0, z0, S1, z1


@triton.jit
def load_tile(base, t, offs_d, T, D, stride_t, stride_d):
    """A (chunk x dim) tile as float32, zero outside t < T, d < D."""
    ptrs = base + t[:, None] * stride_t + offs_d[None, :] * stride_d
    mask = (t[:, None] < T) & (offs_d[None, :] < D)
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def store_tile(base, t, offs_d, T, D, stride_t, stride_d, x, ACCUMULATE: tl.constexpr):
    """Store a (chunk x dim) tile (cast to the pointer's type); add to what is there if
    ACCUMULATE (written by an earlier launch, or by this program before a barrier)."""
    ptrs = base + t[:, None] * stride_t + offs_d[None, :] * stride_d
    mask = (t[:, None] < T) & (offs_d[None, :] < D)
    if ACCUMULATE:
        x += tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptrs, x.to(base.dtype.element_ty), mask=mask)


@triton.jit
def keep_keys(mask_base, t, offs_d, T, D, smt, HAS_MASK: tl.constexpr):
    """(chunk x dim) bool: key t inside the sequence, not padding, and d < D."""
    keep = t < T
    if HAS_MASK:
        pad = tl.load(mask_base + t * smt, mask=t < T, other=1)
        keep = keep & (pad == 0)
    return keep[:, None] & (offs_d[None, :] < D)


@triton.jit
def phi_keys(
    kk, keep2, M: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, FAST: tl.constexpr
):  # fmt: skip
    """b = phi(k), zeroed at padding, outside the sequence and outside head_dim."""
    b, _ = phi_of_map(kk, M, PHI0, PHI1, FAST)
    return tl.where(keep2, b, 0.0)


@triton.jit
def phi_queries(
    qq, t, offs_d, T, D, M: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr,
    FAST: tl.constexpr,
):  # fmt: skip
    """a = phi(q), zeroed outside the sequence and head_dim (phi(0) != 0)."""
    a, _ = phi_of_map(qq, M, PHI0, PHI1, FAST)
    inside = (t[:, None] < T) & (offs_d[None, :] < D)
    return tl.where(inside, a, 0.0)


@triton.jit
def g_and_s(do, o, den_base, t, T, scale, NORMALIZE: tl.constexpr):
    """From float32 dout and out tiles: g = dout / den and s = -(dout . out) / den (0 where
    den = 0); or g = dout * scale (out unused)."""
    if NORMALIZE:
        den = tl.load(den_base + t, mask=t < T, other=0.0)
        inv = tl.where(den > 0, 1.0 / tl.where(den > 0, den, 1.0), 0.0)
        g = do * inv[:, None]
        s = -tl.sum(do * o, axis=1) * inv
    else:
        g = do * scale
        s = tl.zeros([do.shape[0]], dtype=tl.float32)
    return g, s


@triton.jit
def blend_start(
    near_base, c_ptr, hh, t, offs_dv, T, DV, sot, sod,
    HAS_NEAR: tl.constexpr, BT: tl.constexpr, BDV: tl.constexpr,
):  # fmt: skip
    """A chunk's fused blend before the far fields: c_near * near (float32; the coefficients c
    (fields, heads, head_dim_v) float32, near first), or zeros without a near field."""
    if HAS_NEAR:
        c = tl.load(c_ptr + hh * DV + offs_dv, mask=offs_dv < DV, other=0.0)
        return load_tile(near_base, t, offs_dv, T, DV, sot, sod) * c[None, :]
    else:
        return tl.zeros([BT, BDV], dtype=tl.float32)


@triton.jit
def blend_add(y, out, o_base, c_ptr, row, H, hh, offs_dv, DV):
    """y + c_row * out, with out rounded to its field's dtype first: the sum ``ops/blend``
    forms from the stored fields, term for term."""
    c = tl.load(c_ptr + (row * H + hh) * DV + offs_dv, mask=offs_dv < DV, other=0.0)
    return y + out.to(o_base.dtype.element_ty).to(tl.float32) * c[None, :]


@triton.jit
def readout(
    a, S, z, den_ptr, row, t, T, scale, eps,
    NORMALIZE: tl.constexpr, PREC: tl.constexpr, DOT_DTYPE: tl.constexpr,
):  # fmt: skip
    """out = a S / (a . z + eps) (0 where that is 0; the denominators a . z + eps stored at
    den_ptr + row * T, row = map * batch * heads + batch * head) or a S * scale, for a
    (chunk x head_dim) tile of features a (float32) and a state S (in the products' dtype), z."""
    num = tl.dot(a.to(DOT_DTYPE), S, input_precision=PREC)
    if NORMALIZE:
        den = tl.sum(a * z[None, :], axis=1) + eps
        pos = den > 0
        out = tl.where(pos[:, None], num / tl.where(pos, den, 1.0)[:, None], 0.0)
        tl.store(den_ptr + row * T + t, den, mask=t < T)
    else:
        out = num * scale
    return out


@triton.jit
def store_states(
    ptr, slot, S0, z0, S1, z1, offs_d, offs_dv, NM: tl.constexpr,
    BD: tl.constexpr, BDV: tl.constexpr, SLOT: tl.constexpr,
):  # fmt: skip
    """Map 0's state into slot, and with two maps map 1's into slot + 1."""
    store_state(ptr, slot, S0, z0, offs_d, offs_dv, BD, BDV, SLOT)
    if NM == 2:
        store_state(ptr, slot + 1, S1, z1, offs_d, offs_dv, BD, BDV, SLOT)


@triton.jit
def gs_bases(g_ptr, s_ptr, m, pid_bh, n_bh, T, DV):
    """Starts of g_m and s_m of (batch * heads) row pid_bh (int64) in the buffers
    (map, batch * heads, seq, head_dim_v) and (map, batch * heads, seq)."""
    row = m * n_bh + pid_bh
    return g_ptr + row * T * DV, s_ptr + row * T


@triton.jit
def store_g_s(g_base, s_base, t, offs_dv, T, DV, g, s):
    """Store g (cast to the buffer's dtype, the products' operand dtype) and s (float32)."""
    mask = (t[:, None] < T) & (offs_dv[None, :] < DV)
    ptrs = g_base + t[:, None] * DV + offs_dv[None, :]
    tl.store(ptrs, g.to(g_base.dtype.element_ty), mask=mask)
    tl.store(s_base + t, s, mask=t < T)


@triton.jit
def load_g_s(g_base, s_base, t, offs_dv, T, DV):
    """g (in the buffer's dtype, ready for the products) and s (float32), zero outside."""
    mask = (t[:, None] < T) & (offs_dv[None, :] < DV)
    g = tl.load(g_base + t[:, None] * DV + offs_dv[None, :], mask=mask, other=0.0)
    return g, tl.load(s_base + t, mask=t < T, other=0.0)


@triton.jit
def load_state(ptr, slot, offs_d, offs_dv, BD: tl.constexpr, BDV: tl.constexpr, SLOT: tl.constexpr):
    """State (S: BD x BDV, z: BD) of a slot.

    A slot is SLOT = BD * BDV + BD float32 numbers: S row-major, then z.
    """
    base = ptr + slot.to(tl.int64) * SLOT
    S = tl.load(base + offs_d[:, None] * BDV + offs_dv[None, :])
    z = tl.load(base + BD * BDV + offs_d)
    return S, z


@triton.jit
def load_state_if(
    ptr, slot, valid, offs_d, offs_dv, BD: tl.constexpr, BDV: tl.constexpr, SLOT: tl.constexpr
):
    """The state of a slot where ``valid`` (a scalar), else zeros (slot may then be < 0)."""
    base = ptr + slot.to(tl.int64) * SLOT
    S = tl.load(base + offs_d[:, None] * BDV + offs_dv[None, :], mask=valid, other=0.0)
    z = tl.load(base + BD * BDV + offs_d, mask=valid, other=0.0)
    return S, z


@triton.jit
def total_states(
    ptr, pid_bh, offs_d, offs_dv, NM: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    SLOT: tl.constexpr, DOT_DTYPE: tl.constexpr,
):  # fmt: skip
    """(S0, z0, S1, z1): a bidirectional row's total states of both maps (bh, map), S rounded
    to the products' dtype; with one map, S1, z1 repeat map 0's (and go unused)."""
    S0, z0 = load_state(ptr, pid_bh * NM, offs_d, offs_dv, BD, BDV, SLOT)
    S0 = S0.to(DOT_DTYPE)
    S1, z1 = S0, z0
    if NM == 2:
        S1, z1 = load_state(ptr, pid_bh * NM + 1, offs_d, offs_dv, BD, BDV, SLOT)
        S1 = S1.to(DOT_DTYPE)
    return S0, z0, S1, z1


@triton.jit
def store_state(
    ptr, slot, S, z, offs_d, offs_dv, BD: tl.constexpr, BDV: tl.constexpr, SLOT: tl.constexpr
):
    base = ptr + slot.to(tl.int64) * SLOT
    tl.store(base + offs_d[:, None] * BDV + offs_dv[None, :], S)
    tl.store(base + BD * BDV + offs_d, z)


# ---------------------------------------------------------------------------- near field


@triton.jit
def band_mask(offs_m, offs_n, T, W, CAUSAL: tl.constexpr):
    """(BM x BN) bool: key j = offs_n is in query i = offs_m's band, and both lie in [0, T)."""
    diff = offs_m[:, None] - offs_n[None, :]  # i - j
    if CAUSAL:
        inside = (diff >= 0) & (diff < W)
    else:
        inside = (diff < W) & (diff > -W)
    return inside & (offs_n[None, :] < T) & (offs_m[:, None] < T)


@triton.jit
def band_mask_t(offs_m, offs_n, T, W, CAUSAL: tl.constexpr):
    """The transpose of ``band_mask``: (BN x BM), row = key j, column = query i."""
    diff = offs_m[None, :] - offs_n[:, None]  # i - j
    if CAUSAL:
        inside = (diff >= 0) & (diff < W)
    else:
        inside = (diff < W) & (diff > -W)
    return inside & (offs_n[:, None] < T) & (offs_m[None, :] < T)


@triton.jit
def dropout_keep(seed, offs_m, offs_n, W, p_drop, TRANSPOSED: tl.constexpr):
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
def seed_of(seed, SEED_PTR: tl.constexpr):
    """The dropout seed: the argument itself, or (SEED_PTR) the integer it points to, a seed
    drawn on the device inside a compiled graph (no host sync, CUDA-graph safe). Read as an
    int32: the op draws seeds below 2**30, the same draws as that int passed directly."""
    if SEED_PTR:
        return tl.load(seed).to(tl.int32)
    else:
        return seed


@triton.jit
def key_keep(mask_base, offs_n, T, smt, HAS_MASK: tl.constexpr):
    """(BN,) bool: key is not padding (and inside the sequence)."""
    keep = offs_n < T
    if HAS_MASK:
        pad = tl.load(mask_base + offs_n * smt, mask=offs_n < T, other=1)
        keep = keep & (pad == 0)
    return keep


@triton.jit
def load_rows(base, offs, T, N, st, sd, BN: tl.constexpr):
    """The (rows, BN) tile of positions ``offs`` (stride st) and columns 0..BN-1 (stride sd),
    zeros at positions >= T and columns >= N."""
    cols = tl.arange(0, BN)
    mask = (offs[:, None] < T) & (cols[None, :] < N)
    return tl.load(base + offs[:, None] * st + cols[None, :] * sd, mask=mask, other=0.0)


@triton.jit
def key_span(m0, T, W, CAUSAL: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """[lo, hi): the keys the band of queries [m0, m0 + BM) reaches, lo on a BN boundary."""
    lo = (tl.maximum(m0 - (W - 1), 0) // BN) * BN
    if CAUSAL:
        hi = tl.minimum(m0 + BM, T)
    else:
        hi = tl.minimum(m0 + BM + W - 1, T)
    return lo, hi


@triton.jit
def key_tile(
    q, k_base, v_base, mask_base, offs_m, offs_n, T, W, D, DV, qk_scale, skt, skd, svt, svd,
    smt, HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    """k and v of the keys ``offs_n``, the scores q k^T * qk_scale of the queries ``offs_m``
    and which (query, key) pairs are visible (in the band, not padding)."""
    k = load_rows(k_base, offs_n, T, D, skt, skd, BD)
    v = load_rows(v_base, offs_n, T, DV, svt, svd, BDV)
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    valid = band_mask(offs_m, offs_n, T, W, CAUSAL)
    valid = valid & key_keep(mask_base, offs_n, T, smt, HAS_MASK)[None, :]
    return k, v, s, valid


@triton.jit
def store_grad(ptrs, mask, grad, ACCUMULATE: tl.constexpr):
    """Store a float32 gradient tile in the tensor's dtype; ACCUMULATE: added to what is
    there (the far field's gradient, in the fused FMM backward)."""
    if ACCUMULATE:
        grad += tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptrs, grad.to(ptrs.dtype.element_ty), mask=mask)


@triton.jit
def near_fwd_loop(
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
    lo, hi = key_span(m0, T, W, CAUSAL, BM, BN)
    for n0 in range(lo, hi, BN):
        offs_n = n0 + tl.arange(0, BN)
        k, v, s, valid = key_tile(
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
            keep = dropout_keep(seed_bh, offs_m, offs_n, W, p_drop, False)
            p = tl.where(keep, p / (1.0 - p_drop), 0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("inf"))
    return out, lse


@triton.jit
def near_dq_loop(
    dq, q, do, delta, lse, offs_m, m0, k_base, v_base, mask_base, seed_bh,
    T, W, D, DV, qk_scale, p_drop, skt, skd, svt, svd, smt,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    """dq + sum_j p_ij (dp_ij - delta_i) k_j (not yet times sm_scale) for the BM queries
    ``offs_m`` from m0, over the BN-key tiles their band reaches. q, do: (BM, BD), (BM, BDV)
    in the inputs' dtype; delta, lse (BM,) float32."""
    lo, hi = key_span(m0, T, W, CAUSAL, BM, BN)
    for n0 in range(lo, hi, BN):
        offs_n = n0 + tl.arange(0, BN)
        k, v, s, valid = key_tile(
            q, k_base, v_base, mask_base, offs_m, offs_n, T, W, D, DV, qk_scale,
            skt, skd, svt, svd, smt, HAS_MASK, CAUSAL, BD, BDV, PREC,
        )  # fmt: skip
        p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        if DROPOUT:
            keep = dropout_keep(seed_bh, offs_m, offs_n, W, p_drop, False)
            dp = tl.where(keep, dp / (1.0 - p_drop), 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    return dq


@triton.jit
def near_dkv_loop(
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
    weights applied to the layer's dy (the short-path FMM backward, ``ops/short``),
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
        q = load_rows(q_base, offs_m, T, D, sqt, sqd, BD)
        do = load_rows(do_base, offs_m, T, DV, sdot, sdod, BDV)
        if SCALE_DO:
            do = (do.to(tl.float32) * do_scale[None, :]).to(do.dtype)
        if DELTA_FROM_O:
            o = load_rows(o_base, offs_m, T, DV, sot, sod, BDV)
            delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)
        else:
            delta = tl.load(delta_bh + offs_m, mask=row_ok, other=0.0)
        do = do.to(k.dtype)
        lse = tl.load(lse_bh + offs_m, mask=row_ok, other=float("inf"))
        sT = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale  # (keys, queries)
        validT = band_mask_t(offs_m, offs_n, T, W, CAUSAL) & keep[:, None]
        pT = tl.where(validT, tl.exp2(sT - lse[None, :]), 0.0)
        dpT = tl.dot(v, tl.trans(do), input_precision=PREC)
        if DROPOUT:
            keepT = dropout_keep(seed_bh, offs_m, offs_n, W, p_drop, True)
            pdT = tl.where(keepT, pT / (1.0 - p_drop), 0.0)
            dpT = tl.where(keepT, dpT / (1.0 - p_drop), 0.0)
        else:
            pdT = pT
        dv += tl.dot(pdT.to(k.dtype), do, input_precision=PREC)
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(k.dtype), q, input_precision=PREC)
    return dk, dv


@triton.jit
def query_rows(
    q_base, do_base, o_base, lse_bh, offs_m, T, D, DV, sqt, sqd, sdot, sdod, sot, sod,
    BD: tl.constexpr, BDV: tl.constexpr, do_scale, SCALE_DO: tl.constexpr,
):  # fmt: skip
    """What the dq loop takes of the queries ``offs_m``: q, do (in q's dtype), delta_i =
    do_i . out_i and the log-sum-exp (float32). SCALE_DO: do is dout * do_scale, rounded as in
    ``near_dkv_loop``."""
    q = load_rows(q_base, offs_m, T, D, sqt, sqd, BD)
    do = load_rows(do_base, offs_m, T, DV, sdot, sdod, BDV)
    if SCALE_DO:
        do = (do.to(tl.float32) * do_scale[None, :]).to(do.dtype)
    o = load_rows(o_base, offs_m, T, DV, sot, sod, BDV)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)
    lse = tl.load(lse_bh + offs_m, mask=offs_m < T, other=float("inf"))
    return q, do.to(q.dtype), delta, lse


@triton.jit
def key_rows(
    k_base, v_base, mask_base, offs_n, T, D, DV, skt, skd, svt, svd, smt,
    HAS_MASK: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
):  # fmt: skip
    """What the dk/dv loop takes of the keys ``offs_n``: k, v and which are not padding."""
    k = load_rows(k_base, offs_n, T, D, skt, skd, BD)
    v = load_rows(v_base, offs_n, T, DV, svt, svd, BDV)
    return k, v, key_keep(mask_base, offs_n, T, smt, HAS_MASK)
