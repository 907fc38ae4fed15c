"""Far field on the GPU, the Triton building blocks every far-field kernel shares: the feature
maps in registers, tile, feature and state loads and stores, the backward's per-position g and s.

Shapes as in ``far.py``: a tile is (chunk x head_dim) of one (batch, head); a state slot is
S (head_dim x head_dim_v, row-major) then z (head_dim), float32; the feature buffer is
(side, map, batch * heads, seq, head_dim), side 0 = phi(q), side 1 = phi(k), in the matrix
products' dtype.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _exp(x, FAST: tl.constexpr):
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
def _phi(x, PHI: tl.constexpr, FAST: tl.constexpr):
    """phi(x) and phi'(x), elementwise, float32 (same formulas as ``FEATURE_MAPS``)."""
    if PHI == 0:  # elu(x) + 1
        e = _exp(tl.minimum(x, 0.0), FAST)
        y = tl.where(x > 0, x + 1.0, e)
        dy = tl.where(x > 0, 1.0, e)
    elif PHI == 1:  # elu(-x) + 1
        e = _exp(tl.minimum(-x, 0.0), FAST)
        y = tl.where(x < 0, 1.0 - x, e)
        dy = tl.where(x < 0, -1.0, -e)
    elif PHI == 2:  # tanh(x) + 1 = 2 sigmoid(2x)
        sg = 1.0 / (1.0 + _exp(-2.0 * x, FAST))
        y = 2.0 * sg
        dy = 4.0 * sg * (1.0 - sg)
    elif PHI == 3:  # relu
        y = tl.maximum(x, 0.0)
        dy = tl.where(x > 0, 1.0, 0.0)
    else:  # softplus, with torch's threshold 20 (identity above it)
        e = _exp(tl.minimum(x, 20.0), FAST)
        # log(1 + e) loses e entirely below ~1e-7; there softplus(x) = e to float32 precision.
        y = tl.where(x > 20.0, x, tl.where(x < -15.0, e, tl.log(1.0 + e)))
        dy = e / (1.0 + e)
    return y, dy


@triton.jit
def _phi_m(x, M: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, FAST: tl.constexpr):
    """phi_M(x), phi_M'(x) for feature map M (0 or 1) of the call."""
    if M == 0:
        return _phi(x, PHI0, FAST)
    else:
        return _phi(x, PHI1, FAST)


@triton.jit
def _dphi(y, x_base, t, offs_d, T, D, sxt, sxd, PHI: tl.constexpr, FAST: tl.constexpr):
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
        _, dy = _phi(_load_tile(x_base, t, offs_d, T, D, sxt, sxd), PHI, FAST)
        return tl.where(y != 0, dy, 0.0)


@triton.jit
def _dphi_m(
    y, x_base, t, offs_d, T, D, sxt, sxd,
    M: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, FAST: tl.constexpr,
):  # fmt: skip
    """``_dphi`` of feature map M (0 or 1) of the call."""
    if M == 0:
        return _dphi(y, x_base, t, offs_d, T, D, sxt, sxd, PHI0, FAST)
    else:
        return _dphi(y, x_base, t, offs_d, T, D, sxt, sxd, PHI1, FAST)


@triton.jit
def _feature_base(phi_ptr, side, m, NM: tl.constexpr, pid_bh, n_bh, T, D):
    """Start of phi_m(q) (side 0) or phi_m(k) (side 1) of (batch * heads) row pid_bh (int64)
    in the feature buffer (side, map, batch * heads, seq, head_dim)."""
    return phi_ptr + ((side * NM + m) * n_bh + pid_bh) * T * D


@triton.jit
def _load_features(base, t, offs_d, T, D):
    """A (chunk x head_dim) tile of the feature buffer, in its dtype, zero outside."""
    mask = (t[:, None] < T) & (offs_d[None, :] < D)
    return tl.load(base + t[:, None] * D + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def _store_features(base, t, offs_d, T, D, x):
    """Store a (chunk x head_dim) tile into the feature buffer (cast to its dtype)."""
    mask = (t[:, None] < T) & (offs_d[None, :] < D)
    tl.store(base + t[:, None] * D + offs_d[None, :], x.to(base.dtype.element_ty), mask=mask)


@triton.jit
def _program(H):
    """(index along grid axis 0, batch * heads row (int64), programs along axis 0, rows,
    batch index, head index) of a program whose grid axis 1 is batch * heads."""
    pid_bh = tl.program_id(1).to(tl.int64)
    return tl.program_id(0), pid_bh, tl.num_programs(0), tl.num_programs(1), pid_bh // H, pid_bh % H


@triton.jit
def _segment_state(
    ptr, slot, valid, offs_d, offs_dv,
    BD: tl.constexpr, BDV: tl.constexpr, SLOT: tl.constexpr, HAS_INIT: tl.constexpr,
):  # fmt: skip
    """The state (S, z) a causal walk starts from: the slot where HAS_INIT (zeros where not
    ``valid``), else zeros (a one-segment call has no state pass)."""
    if HAS_INIT:
        return _load_state_if(ptr, slot, valid, offs_d, offs_dv, BD, BDV, SLOT)
    else:
        return tl.zeros([BD, BDV], dtype=tl.float32), tl.zeros([BD], dtype=tl.float32)


@triton.jit
def _walk_states(
    ptr, slot, m, valid, offs_d, offs_dv, NM: tl.constexpr,
    BD: tl.constexpr, BDV: tl.constexpr, SLOT: tl.constexpr, HAS_INIT: tl.constexpr,
    TWO: tl.constexpr,
):  # fmt: skip
    """(S0, z0, S1, z1): the states a causal walk over map m starts from (``_segment_state``
    of slot + m), and where it walks both maps (TWO) map 1's (slot + 1); else S1, z1 are zeros
    and go unused."""
    S0, z0 = _segment_state(ptr, slot + m, valid, offs_d, offs_dv, BD, BDV, SLOT, HAS_INIT)
    S1, z1 = _segment_state(
        ptr, slot + NM - 1, valid, offs_d, offs_dv, BD, BDV, SLOT, HAS_INIT and TWO
    )  # fmt: skip
    return S0, z0, S1, z1


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
def _phi_k(
    kk, keep2, M: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr, FAST: tl.constexpr
):  # fmt: skip
    """b = phi(k), zeroed at padding, outside the sequence and outside head_dim."""
    b, _ = _phi_m(kk, M, PHI0, PHI1, FAST)
    return tl.where(keep2, b, 0.0)


@triton.jit
def _phi_q(
    qq, t, offs_d, T, D, M: tl.constexpr, PHI0: tl.constexpr, PHI1: tl.constexpr,
    FAST: tl.constexpr,
):  # fmt: skip
    """a = phi(q), zeroed outside the sequence and head_dim (phi(0) != 0)."""
    a, _ = _phi_m(qq, M, PHI0, PHI1, FAST)
    inside = (t[:, None] < T) & (offs_d[None, :] < D)
    return tl.where(inside, a, 0.0)


@triton.jit
def _g_s(do, o, den_base, t, T, scale, NORMALIZE: tl.constexpr):
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
def _blend_start(
    near_base, c_ptr, hh, t, offs_dv, T, DV, sot, sod,
    HAS_NEAR: tl.constexpr, BT: tl.constexpr, BDV: tl.constexpr,
):  # fmt: skip
    """A chunk's fused blend before the far fields: c_near * near (float32; the coefficients c
    (fields, heads, head_dim_v) float32, near first), or zeros without a near field."""
    if HAS_NEAR:
        c = tl.load(c_ptr + hh * DV + offs_dv, mask=offs_dv < DV, other=0.0)
        return _load_tile(near_base, t, offs_dv, T, DV, sot, sod) * c[None, :]
    else:
        return tl.zeros([BT, BDV], dtype=tl.float32)


@triton.jit
def _blend_add(y, out, o_base, c_ptr, row, H, hh, offs_dv, DV):
    """y + c_row * out, with out rounded to its field's dtype first: the sum ``blend.py``
    forms from the stored fields, term for term."""
    c = tl.load(c_ptr + (row * H + hh) * DV + offs_dv, mask=offs_dv < DV, other=0.0)
    return y + out.to(o_base.dtype.element_ty).to(tl.float32) * c[None, :]


@triton.jit
def _readout(
    a, S, z, den_ptr, row, t, T, scale,
    NORMALIZE: tl.constexpr, PREC: tl.constexpr, DOT_DTYPE: tl.constexpr,
):  # fmt: skip
    """out = a S / (a . z) (0 where a . z = 0; the denominators stored at den_ptr + row * T,
    row = map * batch * heads + batch * head) or a S * scale, for a (chunk x head_dim) tile of
    features a (float32) and a state S (in the products' dtype), z."""
    num = tl.dot(a.to(DOT_DTYPE), S, input_precision=PREC)
    if NORMALIZE:
        den = tl.sum(a * z[None, :], axis=1)
        pos = den > 0
        out = tl.where(pos[:, None], num / tl.where(pos, den, 1.0)[:, None], 0.0)
        tl.store(den_ptr + row * T + t, den, mask=t < T)
    else:
        out = num * scale
    return out


@triton.jit
def _store_states(
    ptr, slot, S0, z0, S1, z1, offs_d, offs_dv, NM: tl.constexpr,
    BD: tl.constexpr, BDV: tl.constexpr, SLOT: tl.constexpr,
):  # fmt: skip
    """Map 0's state into slot, and with two maps map 1's into slot + 1."""
    _store_state(ptr, slot, S0, z0, offs_d, offs_dv, BD, BDV, SLOT)
    if NM == 2:
        _store_state(ptr, slot + 1, S1, z1, offs_d, offs_dv, BD, BDV, SLOT)


@triton.jit
def _gs_bases(g_ptr, s_ptr, m, pid_bh, n_bh, T, DV):
    """Starts of g_m and s_m of (batch * heads) row pid_bh (int64) in the buffers
    (map, batch * heads, seq, head_dim_v) and (map, batch * heads, seq)."""
    row = m * n_bh + pid_bh
    return g_ptr + row * T * DV, s_ptr + row * T


@triton.jit
def _store_g_s(g_base, s_base, t, offs_dv, T, DV, g, s):
    """Store g (cast to the buffer's dtype, the products' operand dtype) and s (float32)."""
    mask = (t[:, None] < T) & (offs_dv[None, :] < DV)
    ptrs = g_base + t[:, None] * DV + offs_dv[None, :]
    tl.store(ptrs, g.to(g_base.dtype.element_ty), mask=mask)
    tl.store(s_base + t, s, mask=t < T)


@triton.jit
def _load_stored_g_s(g_base, s_base, t, offs_dv, T, DV):
    """g (in the buffer's dtype, ready for the products) and s (float32), zero outside."""
    mask = (t[:, None] < T) & (offs_dv[None, :] < DV)
    g = tl.load(g_base + t[:, None] * DV + offs_dv[None, :], mask=mask, other=0.0)
    return g, tl.load(s_base + t, mask=t < T, other=0.0)


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
def _total_states(
    ptr, pid_bh, offs_d, offs_dv, NM: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    SLOT: tl.constexpr, DOT_DTYPE: tl.constexpr,
):  # fmt: skip
    """(S0, z0, S1, z1): a bidirectional row's total states of both maps (bh, map), S rounded
    to the products' dtype; with one map, S1, z1 repeat map 0's (and go unused)."""
    S0, z0 = _load_state(ptr, pid_bh * NM, offs_d, offs_dv, BD, BDV, SLOT)
    S0 = S0.to(DOT_DTYPE)
    S1, z1 = S0, z0
    if NM == 2:
        S1, z1 = _load_state(ptr, pid_bh * NM + 1, offs_d, offs_dv, BD, BDV, SLOT)
        S1 = S1.to(DOT_DTYPE)
    return S0, z0, S1, z1


@triton.jit
def _store_state(
    ptr, slot, S, z, offs_d, offs_dv, BD: tl.constexpr, BDV: tl.constexpr, SLOT: tl.constexpr
):
    base = ptr + slot.to(tl.int64) * SLOT
    tl.store(base + offs_d[:, None] * BDV + offs_dv[None, :], S)
    tl.store(base + BD * BDV + offs_d, z)
