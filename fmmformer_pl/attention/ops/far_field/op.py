"""Far field on the GPU: fused chunked linear attention in Triton (float32 states).

Shapes: q, k ``(batch, heads, seq, head_dim)``, v ``(batch, heads, seq, head_dim_v)``,
key_padding_mask bool ``(batch, seq)`` (True = padding). One call computes the far fields of
up to two feature maps phi_0, phi_1 (the paper's rank r = 2) from one pass over q, k, v; the
semantics per map are exactly those of ``fmmformer_pl.attention.far_field`` (its docstring is
the specification; the reference is ``naive.py``):

    a_i = phi(q_i),  b_j = phi(k_j) * [j not padding],  V(i) = {j} or {j <= i} (causal)
    num_i = sum_{j in V(i)} (a_i . b_j) v_j,   den_i = sum_{j in V(i)} a_i . b_j
    out_i = num_i / den_i   (0 where den_i = 0)   if normalize
    out_i = num_i / sqrt(seq)                      otherwise

and with the released LM code's options: ``feature_normalize`` divides a_i and b_j by their
sums over head_dim (phi(x) / sum_d phi(x)_d) before use, ``eps`` is added to den_i
(out_i = num_i / (den_i + eps), 0 where that is 0).

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

The forward stores a = phi(q) and b = phi(k) (zero at padding) in the products' dtype, and the
backward reads them instead of recomputing the maps; the backward's state pass stores g (same
dtype) and s, so the main backward kernels read neither dout, out nor den. The feature maps'
exponentials and selects and the conversions of dout and out were most of the backward
kernels' instructions. phi' comes from phi itself for elu + 1, elu(-x) + 1 and relu, and is
recomputed from q or k for tanh + 1 and softplus (``tiles.dphi_from_features``).

Feature normalisation (FEATURE_NORMALIZE, a constexpr). A tile holds a whole row of head_dim
(BD >= D), so a kernel divides phi by its row sum in registers where it computes phi
(``tiles.normalize_features``). The feature buffer keeps phi *unnormalised*: the backward
needs phi' (a function of phi for elu + 1, elu(-x) + 1, relu) and the row sum s, and from
phi it gets both for one row sum per loaded tile, with no extra buffer and no extra argument;
it forms y = phi / s for the products (``tiles.stored_features``) and takes the products'
gradient dy back through the normalisation, dphi = (dy - sum_d dy * y) / s
(``tiles.through_normalize``), before multiplying by phi'. Rows with s = 0 (padded keys)
stay 0. eps is a runtime float: the forward stores den + eps as the denominator, which is
all the backward's g and s need.

The kernels live in ``kernels_state.py`` (the state passes), ``kernels_bidir.py`` and
``kernels_causal.py`` (the main passes), built from ``ops/common/tiles.py``; this file plans
(``FarLayout``, from the plan's ``FarPlan``) and launches them. Entry: ``far_fields_kernel``.

Nothing of size (seq x seq) or (seq x head_dim x head_dim) is allocated: the extra memory is
one float32 per position and map (the denominators), 2 x head_dim numbers per position and
map (the stored features) and one state per segment and map; while the backward runs, also
head_dim_v values (g) and one float32 (s) per position and map.

Every matrix product takes bf16 operands for bf16 or fp16 inputs (fp16 is widened to bf16 so
that 1 / den cannot underflow; a state is rounded to bf16 where it is read, as in
flash-linear-attention) and accumulates in float32; states and sums stay float32. float32
inputs use float32 operands: TF32, or exact float32 under
``torch.get_float32_matmul_precision() == "highest"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import triton.language as tl

from ...feature_maps import kernel_codes
from ..common.host import (
    block_dim,
    cdiv,
    empty_like_layout,
    feature_dtype,
    fp32_precision,
    inline_ptx,
    offsets_fit,
    padding_as_uint8,
    sm_count,
    strides,
    supported,
)
from ..common.launch import launch
from ..plan import DEFAULT_PLAN, FarPlan, KernelPlan
from .kernels_bidir import bwd_bidir_kernel, fwd_bidir_kernel
from .kernels_causal import dkv_causal_kernel, dq_causal_kernel, fwd_causal_kernel
from .kernels_state import state_bwd_kernel, state_fwd_kernel

# Most feature maps one kernel call computes (its NM); more are computed in groups.
MAPS_PER_CALL = 2


def map_groups(codes: Sequence[int], causal: bool, plan: FarPlan) -> list[tuple[int, ...]]:
    """The feature-map codes cut into the groups that one kernel call computes."""
    n = plan.maps_per_call(causal)
    if n not in range(1, MAPS_PER_CALL + 1):
        raise ValueError(f"FarPlan: maps per call must be 1..{MAPS_PER_CALL}, got {n}")
    return [tuple(codes[i : i + n]) for i in range(0, len(codes), n)]


def _segments(batch_heads: int, n_chunks: int, programs: int, plan: FarPlan) -> tuple[int, int]:
    """(chunks per segment, segments per (batch, head)) for the state passes."""
    target = plan.programs_per_sm * programs
    per_bh = max(1, min(n_chunks, cdiv(target, batch_heads)))
    cps = max(cdiv(n_chunks, per_bh), min(plan.min_segment_chunks, n_chunks))
    return cps, cdiv(n_chunks, cps)


def dot_dtype(dtype: torch.dtype):
    """The matrix products' operand dtype as a Triton type (``host.feature_dtype``)."""
    return tl.float32 if dtype == torch.float32 else tl.bfloat16


# Constexprs of the feature maps, which the backward state pass (it reads only phi(q) from the
# buffer) does not take.
_MAP_CONSTEXPRS = ("PHI0", "PHI1", "FAST")


class FarLayout:
    """One call's chunking, segments, launch settings and the constexprs its kernels share:
    a function of the shapes and the plan, so a backward that rebuilds it gets the forward's
    segments."""

    def __init__(self, q, v, causal, phi_codes, kernel_plan: KernelPlan,
                 feature_normalize: bool = False):  # fmt: skip
        plan = kernel_plan.far
        self.plan = plan
        batch, heads, seq, dim = q.shape
        self.bh, self.heads, self.seq = batch * heads, heads, seq
        self.dim, self.dim_v = dim, v.shape[-1]
        self.bd, self.bdv = block_dim(dim), block_dim(self.dim_v)
        self.slot = self.bd * self.bdv + self.bd  # float32 per state: S (bd x bdv), then z
        self.bt = plan.chunk(causal)
        n_chunks = cdiv(seq, self.bt)
        if causal and n_chunks <= plan.single_segment_chunks:
            self.cps, self.n_seg = n_chunks, 1
        else:
            programs = sm_count(q.device, kernel_plan)
            self.cps, self.n_seg = _segments(self.bh, n_chunks, programs, plan)
        # Bidirectional main kernels: a few chunks per program, no carried state.
        self.main_cps = plan.main_chunks_bidir
        self.n_main = cdiv(n_chunks, self.main_cps)
        self.state_bt = min(plan.state_chunk, self.bt)
        if self.bt % self.state_bt:
            raise ValueError(f"FarPlan: state_chunk {self.state_bt} must divide chunk {self.bt}")
        self.state_cps = self.cps * (self.bt // self.state_bt)
        self.n_maps = len(phi_codes)
        self.constexprs = dict(
            NM=self.n_maps,
            PHI0=phi_codes[0],
            PHI1=phi_codes[-1],
            FEATURE_NORMALIZE=bool(feature_normalize),
            BT=self.bt,
            BD=self.bd,
            BDV=self.bdv,
            PREC=fp32_precision(q.dtype),
            DOT_DTYPE=dot_dtype(q.dtype),
            SLOT=self.slot,
            FAST=inline_ptx(q.device, kernel_plan),
        )

    @property
    def scale(self) -> float:
        """1 / sqrt(seq) of normalize=False. A property: the custom op's fake implementation
        builds a layout from a symbolic length, and math.sqrt there would pin the length (a
        recompile per sequence length under torch.compile)."""
        return 1.0 / math.sqrt(self.seq)

    def pair(self, kernel: str) -> bool:
        """Whether causal walk ``kernel`` takes both maps in one walk (kernels_causal.py's
        PAIR; nothing to pair with one map)."""
        return self.n_maps == 2 and kernel in self.plan.pair_maps_causal

    def causal_launch(self, kernel: str) -> dict:
        """The PAIR constexpr and launch options of causal walk ``kernel`` (for a paired walk,
        those of ``kernel + "_pair"``)."""
        pair = self.pair(kernel)
        return {"PAIR": pair, **self.plan.launch.of(f"{kernel}_pair" if pair else kernel)}

    @property
    def state_constexprs(self):
        return {**self.constexprs, "BT": self.state_bt}

    @property
    def state_bwd_constexprs(self):
        return {k: v for k, v in self.state_constexprs.items() if k not in _MAP_CONSTEXPRS}

    def states(self, q, n_maps):
        return torch.empty(
            self.bh, self.n_seg, n_maps, self.slot, device=q.device, dtype=torch.float32
        )

    def features(self, q, n_maps):
        """The feature buffer: phi_m(q) (side 0) and phi_m(k) (side 1) as the forward
        computed them, (side, map, batch * heads, seq, head_dim), for the backward."""
        shape = (2, n_maps, self.bh, self.seq, self.dim)
        return torch.empty(shape, device=q.device, dtype=feature_dtype(q.dtype))


class FarTensors(NamedTuple):
    """The tensors the far fields' backward reads (what autograd saves)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor  # uint8 padding mask, or q as a never-read stand-in
    den: torch.Tensor  # (map, batch * heads, seq) float32; outs[0] stands in (normalize=False)
    state: torch.Tensor | None  # the forward's segment states; None: one causal segment
    phi: torch.Tensor  # the feature buffer (FarLayout.features)
    outs: tuple[torch.Tensor, ...]

    def flat(self) -> tuple:
        return (*self[:7], *self.outs)

    @classmethod
    def from_flat(cls, tensors) -> FarTensors:
        return cls(*tensors[:7], tuple(tensors[7:]))


class FarSettings(NamedTuple):
    phi_codes: tuple[int, ...]
    causal: bool
    normalize: bool
    mask_strides: tuple[int, int]
    has_mask: bool
    layout: FarLayout  # its constexprs carry FEATURE_NORMALIZE; eps lives in the saved den


class FarSaved(NamedTuple):
    """What ``far_backward`` needs, as ``far_forward`` returns it."""

    tensors: FarTensors
    settings: FarSettings


def _far_settings(q, v, key_padding_mask, phi_codes, causal, normalize, kernel_plan,
                 feature_normalize=False):  # fmt: skip
    """(the mask as uint8, ``FarSettings``)."""
    mask, smb, smt = padding_as_uint8(key_padding_mask, q)
    layout = FarLayout(q, v, causal, phi_codes, kernel_plan, feature_normalize)
    has_mask = key_padding_mask is not None
    return mask, FarSettings(tuple(phi_codes), causal, normalize, (smb, smt), has_mask, layout)


def far_saved(q, k, v, key_padding_mask, den, state, phi, outs, phi_codes, causal, normalize,
              kernel_plan: KernelPlan, feature_normalize: bool = False) -> FarSaved:  # fmt: skip
    """``FarSaved`` rebuilt by a caller that kept only the tensors (the custom op of
    ``ops/fmm``)."""
    mask, settings = _far_settings(q, v, key_padding_mask, phi_codes, causal, normalize,
                                   kernel_plan, feature_normalize)  # fmt: skip
    return FarSaved(FarTensors(q, k, v, mask, den, state, phi, tuple(outs)), settings)


def blend_fusable(phi_codes: Sequence[int], causal: bool, plan: FarPlan) -> bool:
    """Whether ``far_forward`` can also form the FMM blend (its ``blend`` argument): all maps
    in one call, and, causal with two maps, in one walk."""
    if len(map_groups(phi_codes, causal, plan)) != 1:
        return False
    return not causal or len(phi_codes) == 1 or "fwd" in plan.pair_maps_causal


def far_forward(
    q, k, v, key_padding_mask, phi_codes, causal, normalize, kernel_plan: KernelPlan, blend=None,
    feature_normalize: bool = False, eps: float = 0.0,
):  # fmt: skip
    """The far fields of one or two feature maps: ``(outs, saved)`` (``FarSaved``);
    ``feature_normalize`` and ``eps`` as in ``attention.far_field``.

    ``blend`` = (y, near or None, coeffs), for the fused FMM forward where ``blend_fusable``:
    the kernels also write y = coeffs[0] * near + sum_m coeffs[m + 1] * out_m (without a near
    field, coeffs[m] * out_m); coeffs (fields, heads, head_dim_v) float32, y and near laid out
    as ``empty_like_layout(q, head_dim_v)`` lays out the fields."""
    nm = len(phi_codes)
    mask, settings = _far_settings(
        q, v, key_padding_mask, phi_codes, causal, normalize, kernel_plan, feature_normalize
    )
    (smb, smt), has_mask, lay = settings.mask_strides, settings.has_mask, settings.layout
    launches = lay.plan.launch
    outs = [empty_like_layout(q, lay.dim_v) for _ in range(nm)]
    o1 = outs[-1]
    # float32 denominators (map, bh, seq); normalize=False needs none (out: a stand-in).
    den = (
        torch.empty(nm, lay.bh, lay.seq, device=q.device, dtype=torch.float32)
        if normalize
        else outs[0]
    )
    sizes = (lay.heads, lay.seq, lay.dim, lay.dim_v)
    phi = lay.features(q, nm)
    if blend is not None:
        if not blend_fusable(phi_codes, causal, lay.plan):
            raise ValueError("far_forward: blend needs every map in one walk (blend_fusable)")
        y, near, coeffs = blend
        expected = (nm + (near is not None), lay.heads, lay.dim_v)
        if (
            tuple(coeffs.shape) != expected
            or coeffs.dtype != torch.float32
            or not coeffs.is_contiguous()
        ):
            raise ValueError(f"far_forward: blend coeffs must be contiguous float32 {expected}")
        fused = dict(BLEND=True, HAS_NEAR=near is not None)
        blend_args = (y if near is None else near, coeffs, y)
        if any(t is not None and t.stride() != outs[0].stride() for t in (y, near)):
            raise ValueError("far_forward: the blended y and near must be laid out like the fields")
    else:
        fused = dict(BLEND=False, HAS_NEAR=False)
        blend_args = (q, q, q)  # never read
    state = None
    if not causal or lay.n_seg > 1:
        seg = lay.states(q, nm)  # (bh, n_seg, map, slot)
        launch(
            state_fwd_kernel, (lay.n_seg, lay.bh),
            k, v, mask, seg, phi, *sizes, lay.state_cps, *strides(k), *strides(v), smb, smt,
            HAS_MASK=has_mask, **lay.state_constexprs,
            **launches.of("state_fwd_causal" if causal else "state_fwd"),
        )  # fmt: skip
        if causal:
            state = seg.cumsum_(dim=1)  # inclusive: segment s starts from slot s - 1
        else:
            state = seg[:, 0] if lay.n_seg == 1 else seg.sum(dim=1)  # (bh, map, slot)
    if causal:
        launch(
            fwd_causal_kernel, (lay.n_seg, lay.bh),
            q, k, v, mask, state if state is not None else den, outs[0], o1, den, phi,
            *blend_args, *sizes, lay.cps, lay.scale, float(eps),
            *strides(q), *strides(k), *strides(v), *strides(outs[0]), smb, smt,
            HAS_MASK=has_mask, HAS_INIT=state is not None, NORMALIZE=normalize,
            **fused, **lay.constexprs, **lay.causal_launch("fwd"),
        )  # fmt: skip
    else:
        launch(
            fwd_bidir_kernel, (lay.n_main, lay.bh),
            q, state, outs[0], o1, den, phi, *blend_args, *sizes, lay.main_cps, lay.scale,
            float(eps),
            *strides(q), *strides(outs[0]),
            NORMALIZE=normalize, **fused, **lay.constexprs, **launches.of("fwd_bidir"),
        )  # fmt: skip
    return outs, FarSaved(FarTensors(q, k, v, mask, den, state, phi, tuple(outs)), settings)


def far_backward(saved: FarSaved, douts, grads=None, scales=None, dscales=None):
    """dq, dk, dv of the far fields (``saved`` from ``far_forward``; a None in ``douts`` is a
    zero gradient); with ``grads`` = (dq, dk, dv) the kernels add to those tensors.

    The fused FMM backward: with ``scales`` (map, heads, head_dim_v) float32, ``douts`` is one
    tensor, the layer's dy, and map m's output gradient is dy * scales[m] (its blend
    coefficients): the blend backward writes no gradient per far field. With ``dscales`` (same
    shape, float32) too, the gradient of the scales, sum over batch and sequence of
    dy * out_m, is added to it: the blend backward then need not read the far fields."""
    q, k, v, mask, den, state, phi, outs = saved.tensors
    # The forward's layout: the saved states are laid out by its segments. The padding mask
    # is not needed: phi(k) is 0 at padding.
    phi_codes, causal, normalize, _, _, lay = saved.settings
    launches = lay.plan.launch
    nm = len(phi_codes)
    if dscales is not None and scales is None:
        raise ValueError("far_backward: dscales needs scales")
    if scales is not None:
        # The kernels read (map, heads, head_dim_v) float32 rows, and dy once for every map.
        expected = (nm, lay.heads, lay.dim_v)
        for name, t in (("scales", scales), ("dscales", dscales)):
            if t is not None and (
                tuple(t.shape) != expected or t.dtype != torch.float32 or not t.is_contiguous()
            ):
                raise ValueError(f"far_backward: {name} must be contiguous float32 {expected}")
        (dy,) = douts
        douts = [dy if offsets_fit(dy) else dy.contiguous()] * nm
    douts = [torch.zeros_like(o) if g is None else g for g, o in zip(douts, outs, strict=True)]
    # The kernels take one layout for all douts, with 32-bit offsets inside a (batch, head).
    if any(g.stride() != douts[0].stride() for g in douts) or not offsets_fit(douts[0]):
        douts = [g.contiguous() for g in douts]
    do1, o1 = douts[-1], outs[-1]
    sizes = (lay.heads, lay.seq, lay.dim, lay.dim_v)
    accumulate = grads is not None
    if grads is None:
        grads = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dq, dk, dv = grads
    cx = lay.constexprs
    # The state pass also stores g and s of every position (also for a one-segment causal
    # call, whose reverse state goes unused), so the main kernels read neither dout, out nor den.
    rseg = lay.states(q, nm)
    g_buf = torch.empty(nm, lay.bh, lay.seq, lay.dim_v, device=q.device, dtype=phi.dtype)
    s_buf = torch.empty(nm, lay.bh, lay.seq, device=q.device, dtype=torch.float32)
    launch(
        state_bwd_kernel, (lay.n_seg, lay.bh),
        phi, douts[0], do1, outs[0], o1, den, rseg, g_buf, s_buf,
        s_buf if scales is None else scales, s_buf if dscales is None else dscales,
        *sizes, lay.state_cps, lay.scale,
        *strides(douts[0]), *strides(outs[0]),
        NORMALIZE=normalize, REVERSED=causal, HAS_SCALE=scales is not None,
        HAS_DC=dscales is not None,
        **lay.state_bwd_constexprs,
        **launches.of("state_bwd_causal" if causal else "state_bwd"),
    )  # fmt: skip
    if not causal:
        rstate = rseg[:, 0] if lay.n_seg == 1 else rseg.sum(dim=1)
        launch(
            bwd_bidir_kernel, (lay.n_main, lay.bh, 2),
            q, k, v, phi, g_buf, s_buf, state, rstate, dq, dk, dv,
            *sizes, lay.main_cps,
            *strides(q), *strides(k), *strides(v), *strides(dq), *strides(dk), *strides(dv),
            ACC=accumulate, **cx,
            **launches.of("bwd_bidir"),
        )  # fmt: skip
        return dq, dk, dv
    has_init = state is not None
    rstate = rseg.cumsum_(dim=1) if has_init else None  # reversed: this and later segments
    launch(
        dq_causal_kernel, (lay.n_seg, lay.bh),
        q, v, phi, g_buf, s_buf, state if has_init else s_buf, dq, *sizes, lay.cps,
        *strides(q), *strides(v), *strides(dq),
        HAS_INIT=has_init, ACC=accumulate, **cx, **lay.causal_launch("dq"),
    )  # fmt: skip
    launch(
        dkv_causal_kernel, (lay.n_seg, lay.bh),
        k, v, phi, g_buf, s_buf, rstate if has_init else s_buf, dk, dv, *sizes, lay.cps,
        *strides(k), *strides(v), *strides(dk), *strides(dv),
        HAS_INIT=has_init, ACC=accumulate, **cx, **lay.causal_launch("dkv"),
    )  # fmt: skip
    return dq, dk, dv


class FarFields(torch.autograd.Function):
    """The far fields of one or two feature maps: (q, k, v) -> (out_0[, out_1])."""

    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, phi_codes, causal, normalize, kernel_plan,
                feature_normalize, eps):  # fmt: skip
        outs, saved = far_forward(
            q, k, v, key_padding_mask, phi_codes, causal, normalize, kernel_plan,
            feature_normalize=feature_normalize, eps=eps,
        )  # fmt: skip
        ctx.save_for_backward(*saved.tensors.flat())
        ctx.settings = saved.settings
        return tuple(outs)

    @staticmethod
    def backward(ctx, *douts):
        saved = FarSaved(FarTensors.from_flat(ctx.saved_tensors), ctx.settings)
        dq, dk, dv = far_backward(saved, douts)
        return dq, dk, dv, None, None, None, None, None, None, None


def far_fields_kernel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    feature_maps: Sequence,
    causal: bool = False,
    normalize: bool = True,
    key_padding_mask: torch.Tensor | None = None,
    plan: KernelPlan = DEFAULT_PLAN,
    feature_normalize: bool = False,
    eps: float = 0.0,
) -> list[torch.Tensor] | None:
    """The far fields of several feature maps through the Triton kernels (one output per map),
    or None for a case they do not cover.

    Covered: the feature maps with a kernel code (``feature_maps.FEATURE_MAP_TABLE``; a
    callable returns None), fp16/bf16/fp32, head_dim and head_dim_v up to 128, any sequence
    length, ``feature_normalize`` and ``eps`` (``attention.far_field``). The maps are computed in groups (``map_groups``), each from one pass over the
    inputs. Inputs are validated by the caller (``far_field`` / ``far_fields``).
    """
    codes = kernel_codes(list(feature_maps))
    if not codes:
        return None
    if not supported(q, k, v) or q.shape[2] == 0:
        return None
    outs: list[torch.Tensor] = []
    for group in map_groups(codes, bool(causal), plan.far):
        args = (bool(causal), bool(normalize), plan, bool(feature_normalize), float(eps))
        outs.extend(FarFields.apply(q, k, v, key_padding_mask, group, *args))
    return outs
