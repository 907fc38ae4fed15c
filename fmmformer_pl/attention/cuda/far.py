"""Far field on the GPU: fused chunked linear attention in Triton (float32 states).

Shapes: q, k ``(batch, heads, seq, head_dim)``, v ``(batch, heads, seq, head_dim_v)``,
key_padding_mask bool ``(batch, seq)`` (True = padding). One call computes the far fields of
up to two feature maps phi_0, phi_1 (the paper's rank r = 2) from one pass over q, k, v; the
semantics per map are exactly those of ``fmmformer_pl.attention.far_field`` (its docstring is
the specification):

    a_i = phi(q_i),  b_j = phi(k_j) * [j not padding],  V(i) = {j} or {j <= i} (causal)
    num_i = sum_{j in V(i)} (a_i . b_j) v_j,   den_i = sum_{j in V(i)} a_i . b_j
    out_i = num_i / den_i   (0 where den_i = 0)   if normalize
    out_i = num_i / sqrt(seq)                      otherwise

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
kernels' instructions (bench/kernel_sass.py). phi' comes
from phi itself for elu + 1, elu(-x) + 1 and relu, and is recomputed from q or k for tanh + 1
and softplus (``far_tiles._dphi``).

The kernels live in ``far_states.py`` (the state passes), ``far_bidir.py`` and ``far_causal.py``
(the main passes), built from ``far_tiles.py``'s helpers; this file plans and launches them.

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

import torch
import triton.language as tl

from ._common import (
    block_dim,
    cdiv,
    empty_like_layout,
    fp32_precision,
    offsets_fit,
    padding_as_uint8,
    strides,
    supported,
)
from .far_bidir import _bwd_bidir_kernel, _fwd_bidir_kernel
from .far_causal import _dkv_causal_kernel, _dq_causal_kernel, _fwd_causal_kernel
from .far_states import _state_bwd_kernel, _state_fwd_kernel
from .launch import launch

# Feature maps the kernels compute in registers (names of ``FEATURE_MAPS``).
PHI_CODES = {"elu": 0, "elu_flip": 1, "tanh": 2, "relu": 3, "softplus": 4}
# Most feature maps one kernel call computes (its NM); more are computed in groups.
MAPS_PER_CALL = 2

# Launch plan (tuned on an H200, bf16, head_dim 64; see docs/gpu.md). ``bench/far_tune.py``
# times alternatives by overwriting these module attributes.
PLAN = {
    # Positions per chunk. Causal chunks carry a (chunk x chunk) intra-chunk product.
    "chunk_causal": 64,
    "chunk_bidir": 64,
    # Positions per step of the state kernels (a divisor of the chunk: segments are whole
    # chunks, the state kernels may walk them in smaller steps, with fewer registers; 32 was
    # slower on the H200: 1.16 vs 0.95 ms bidirectional).
    "state_chunk": 64,
    # Chunks per program of the bidirectional main kernels (no state carried between them).
    "main_chunks_bidir": 1,
    # Segments: aim for this many programs per SM, and no segment under this many chunks.
    "programs_per_sm": 2,
    "min_segment_chunks": 4,
    # Up to this many chunks a causal (batch, head) is one segment: no forward state pass and no
    # cumsums (three launches fewer; the backward state pass always runs). Longer ones are split so that more programs run: at 1K tokens
    # (16 chunks) one segment took 0.62 ms of GPU time, split 0.21.
    "single_segment_chunks": 4,
    # Feature maps per call (1 or MAPS_PER_CALL). Two read the inputs once; one per call
    # keeps a causal walk's registers to one map's tiles.
    "maps_per_call_causal": 2,
    "maps_per_call_bidir": 2,
    # The causal walks (of "fwd", "dq", "dkv") that take two maps in one walk (far_causal.py's
    # PAIR: both states in registers); the others walk once per map.
    "pair_maps_causal": ("fwd", "dq"),
}
# bench/far_tune.py --graph, H200, 64K tokens, r = 2 (kernel time
# without launch overhead): a 128-register cap (two programs per SM) for the bidirectional
# kernels (0.96 vs 1.32 ms); 4 warps and 3 stages for the causal ones (2.29 vs 2.88 ms with
# chunks of 64, 8 warps: 4.1 ms).
_CAPPED = dict(num_warps=8, num_stages=2, maxnreg=128)
_CAUSAL = dict(num_warps=4, num_stages=3)
LAUNCH = {
    "state_fwd": dict(_CAPPED),
    "state_bwd": dict(_CAPPED),
    "fwd_bidir": dict(_CAPPED),
    "bwd_bidir": dict(_CAPPED),
    "state_fwd_causal": dict(_CAUSAL),
    "state_bwd_causal": dict(_CAUSAL),
    "fwd": dict(_CAUSAL),
    "dq": dict(_CAUSAL),
    "dkv": dict(_CAUSAL),
    # The walks with both maps' states in registers (PLAN["pair_maps_causal"]).
    "fwd_pair": dict(_CAUSAL),
    "dq_pair": dict(_CAUSAL),
    "dkv_pair": dict(_CAUSAL),
}


def map_groups(codes: Sequence[int], causal: bool) -> list[tuple[int, ...]]:
    """The feature-map codes cut into the groups that one kernel call computes."""
    n = PLAN["maps_per_call_causal" if causal else "maps_per_call_bidir"]
    if n not in range(1, MAPS_PER_CALL + 1):
        raise ValueError(f"PLAN: maps per call must be 1..{MAPS_PER_CALL}, got {n}")
    return [tuple(codes[i : i + n]) for i in range(0, len(codes), n)]


_SM_COUNTS: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 8  # the Triton interpreter on the CPU (tests of the kernels' logic)
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNTS:
        _SM_COUNTS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNTS[index]


_MAJORS: dict[int, int] = {}


def hopper(device: torch.device) -> bool:
    """Whether ``device`` is an NVIDIA GPU of compute capability 9.0 or later (Hopper): the
    kernels' programmatic dependent launch (``griddepcontrol``) needs it."""
    if not inline_ptx(device):
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _MAJORS:
        _MAJORS[index] = torch.cuda.get_device_capability(index)[0]
    return _MAJORS[index] >= 9


def _segments(batch_heads: int, n_chunks: int, device: torch.device) -> tuple[int, int]:
    """(chunks per segment, segments per (batch, head)) for the state passes."""
    target = PLAN["programs_per_sm"] * _sm_count(device)
    per_bh = max(1, min(n_chunks, cdiv(target, batch_heads)))
    cps = max(cdiv(n_chunks, per_bh), min(PLAN["min_segment_chunks"], n_chunks))
    return cps, cdiv(n_chunks, cps)


def _dot_dtype(dtype: torch.dtype):
    return tl.float32 if dtype == torch.float32 else tl.bfloat16


def inline_ptx(device: torch.device) -> bool:
    """Whether the kernels may use inline PTX (``far_tiles._exp``): on NVIDIA CUDA, not ROCm, and
    not in the Triton interpreter that runs the CPU tests. ``bench/kernel_sass.py`` compiles for the H200 from a
    CPU machine and overrides this."""
    return device.type == "cuda" and torch.version.hip is None


def _feature_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the stored phi(q), phi(k): the matrix products' operand dtype."""
    return torch.float32 if dtype == torch.float32 else torch.bfloat16


# Constexprs of the feature maps, which the backward state pass (it reads only phi(q) from the
# buffer) does not take.
_MAP_CONSTEXPRS = ("PHI0", "PHI1", "FAST")


class _Plan:
    """Chunking, segments and the constexpr arguments shared by one call's kernels."""

    def __init__(self, q, v, causal, n_maps, phi_codes):
        batch, heads, seq, dim = q.shape
        self.bh, self.heads, self.seq = batch * heads, heads, seq
        self.dim, self.dim_v = dim, v.shape[-1]
        self.bd, self.bdv = block_dim(dim), block_dim(self.dim_v)
        self.slot = self.bd * self.bdv + self.bd  # float32 per state: S (bd x bdv), then z
        self.bt = PLAN["chunk_causal"] if causal else PLAN["chunk_bidir"]
        n_chunks = cdiv(seq, self.bt)
        if causal and n_chunks <= PLAN["single_segment_chunks"]:
            self.cps, self.n_seg = n_chunks, 1
        else:
            self.cps, self.n_seg = _segments(self.bh, n_chunks, q.device)
        # Bidirectional main kernels: a few chunks per program, no carried state.
        self.main_cps = PLAN["main_chunks_bidir"]
        self.n_main = cdiv(n_chunks, self.main_cps)
        self.state_bt = min(PLAN["state_chunk"], self.bt)
        if self.bt % self.state_bt:
            raise ValueError(f"PLAN: state_chunk {self.state_bt} must divide chunk {self.bt}")
        self.state_cps = self.cps * (self.bt // self.state_bt)
        self.n_maps = n_maps
        self.constexprs = dict(
            NM=n_maps,
            PHI0=phi_codes[0],
            PHI1=phi_codes[-1],
            BT=self.bt,
            BD=self.bd,
            BDV=self.bdv,
            PREC=fp32_precision(q.dtype),
            DOT_DTYPE=_dot_dtype(q.dtype),
            SLOT=self.slot,
            FAST=inline_ptx(q.device),
        )

    @property
    def scale(self) -> float:
        """1 / sqrt(seq) of normalize=False. A property: the custom op's fake implementation
        builds a plan from a symbolic length, and math.sqrt there would pin the length (a
        recompile per sequence length under torch.compile)."""
        return 1.0 / math.sqrt(self.seq)

    def pair(self, kernel: str) -> bool:
        """Whether causal walk ``kernel`` takes both maps in one walk (far_causal.py's PAIR;
        nothing to pair with one map)."""
        return self.n_maps == 2 and kernel in PLAN["pair_maps_causal"]

    def causal_launch(self, kernel: str) -> dict:
        """The PAIR constexpr and launch settings of causal walk ``kernel``: ``LAUNCH[kernel]``
        or, for a paired walk, ``LAUNCH[kernel + "_pair"]``."""
        pair = self.pair(kernel)
        return {"PAIR": pair, **LAUNCH[f"{kernel}_pair" if pair else kernel]}

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
        return torch.empty(shape, device=q.device, dtype=_feature_dtype(q.dtype))


def _far_settings(q, v, key_padding_mask, phi_codes, causal, normalize):
    """(the mask as uint8, the settings ``far_backward`` takes): the plan is a function of the
    shapes, so a backward that rebuilds them gets the forward's segments."""
    mask, smb, smt = padding_as_uint8(key_padding_mask, q)
    plan = _Plan(q, v, causal, len(phi_codes), phi_codes)
    has_mask = key_padding_mask is not None
    return mask, (phi_codes, causal, normalize, smb, smt, has_mask, plan)


def far_saved(q, k, v, key_padding_mask, den, state, phi, outs, phi_codes, causal, normalize):
    """What ``far_backward`` needs (tensors first, then the settings), as ``far_forward``
    returns it, rebuilt by a caller that kept only the tensors (the custom op of
    ``fmm_op.py``)."""
    mask, settings = _far_settings(q, v, key_padding_mask, phi_codes, causal, normalize)
    return (q, k, v, mask, den, state, phi, *outs), settings


def blend_fusable(phi_codes: Sequence[int], causal: bool) -> bool:
    """Whether ``far_forward`` can also form the FMM blend (its ``blend`` argument): all maps
    in one call, and, causal with two maps, in one walk."""
    if len(map_groups(phi_codes, causal)) != 1:
        return False
    return not causal or len(phi_codes) == 1 or "fwd" in PLAN["pair_maps_causal"]


def far_forward(q, k, v, key_padding_mask, phi_codes, causal, normalize, blend=None):
    """The far fields of one or two feature maps: ``(outs, saved)``; ``saved`` is what
    ``far_backward`` needs (tensors first, then the settings).

    ``blend`` = (y, near or None, coeffs), for the fused FMM forward where ``blend_fusable``:
    the kernels also write y = coeffs[0] * near + sum_m coeffs[m + 1] * out_m (without a near
    field, coeffs[m] * out_m); coeffs (fields, heads, head_dim_v) float32, y and near laid out
    as ``empty_like_layout(q, head_dim_v)`` lays out the fields."""
    nm = len(phi_codes)
    mask, settings = _far_settings(q, v, key_padding_mask, phi_codes, causal, normalize)
    *_, smb, smt, has_mask, plan = settings
    outs = [empty_like_layout(q, plan.dim_v) for _ in range(nm)]
    o1 = outs[-1]
    # float32 denominators (map, bh, seq); normalize=False needs none (out: a stand-in).
    den = (
        torch.empty(nm, plan.bh, plan.seq, device=q.device, dtype=torch.float32)
        if normalize
        else outs[0]
    )
    sizes = (plan.heads, plan.seq, plan.dim, plan.dim_v)
    phi = plan.features(q, nm)
    if blend is not None:
        if not blend_fusable(phi_codes, causal):
            raise ValueError("far_forward: blend needs every map in one walk (blend_fusable)")
        y, near, coeffs = blend
        expected = (nm + (near is not None), plan.heads, plan.dim_v)
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
    if not causal or plan.n_seg > 1:
        seg = plan.states(q, nm)  # (bh, n_seg, map, slot)
        launch(
        _state_fwd_kernel, (plan.n_seg, plan.bh),
            k, v, mask, seg, phi, *sizes, plan.state_cps, *strides(k), *strides(v), smb, smt,
            HAS_MASK=has_mask, **plan.state_constexprs,
            **LAUNCH["state_fwd_causal" if causal else "state_fwd"],
        )  # fmt: skip
        if causal:
            state = seg.cumsum_(dim=1)  # inclusive: segment s starts from slot s - 1
        else:
            state = seg[:, 0] if plan.n_seg == 1 else seg.sum(dim=1)  # (bh, map, slot)
    if causal:
        launch(
        _fwd_causal_kernel, (plan.n_seg, plan.bh),
            q, k, v, mask, state if state is not None else den, outs[0], o1, den, phi,
            *blend_args, *sizes, plan.cps, plan.scale,
            *strides(q), *strides(k), *strides(v), *strides(outs[0]), smb, smt,
            HAS_MASK=has_mask, HAS_INIT=state is not None, NORMALIZE=normalize,
            **fused, **plan.constexprs, **plan.causal_launch("fwd"),
        )  # fmt: skip
    else:
        launch(
        _fwd_bidir_kernel, (plan.n_main, plan.bh),
            q, state, outs[0], o1, den, phi, *blend_args, *sizes, plan.main_cps, plan.scale,
            *strides(q), *strides(outs[0]),
            NORMALIZE=normalize, **fused, **plan.constexprs, **LAUNCH["fwd_bidir"],
        )  # fmt: skip
    return outs, ((q, k, v, mask, den, state, phi, *outs), settings)


def far_backward(saved, douts, grads=None, scales=None, dscales=None):
    """dq, dk, dv of the far fields (``saved`` from ``far_forward``; a None in ``douts`` is a
    zero gradient); with ``grads`` = (dq, dk, dv) the kernels add to those tensors.

    The fused FMM backward: with ``scales`` (map, heads, head_dim_v) float32, ``douts`` is one
    tensor, the layer's dy, and map m's output gradient is dy * scales[m] (its blend
    coefficients): the blend backward writes no gradient per far field. With ``dscales`` (same
    shape, float32) too, the gradient of the scales, sum over batch and sequence of
    dy * out_m, is added to it: the blend backward then need not read the far fields."""
    (q, k, v, mask, den, state, phi, *outs), settings = saved
    # The forward's plan: the saved states are laid out by its segments. The padding mask is
    # not needed: phi(k) is 0 at padding.
    phi_codes, causal, normalize, *_, plan = settings
    nm = len(phi_codes)
    if dscales is not None and scales is None:
        raise ValueError("far_backward: dscales needs scales")
    if scales is not None:
        # The kernels read (map, heads, head_dim_v) float32 rows, and dy once for every map.
        expected = (nm, plan.heads, plan.dim_v)
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
    sizes = (plan.heads, plan.seq, plan.dim, plan.dim_v)
    accumulate = grads is not None
    if grads is None:
        grads = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dq, dk, dv = grads
    cx = plan.constexprs
    # The state pass also stores g and s of every position (also for a one-segment causal
    # call, whose reverse state goes unused), so the main kernels read neither dout, out nor den.
    rseg = plan.states(q, nm)
    g_buf = torch.empty(nm, plan.bh, plan.seq, plan.dim_v, device=q.device, dtype=phi.dtype)
    s_buf = torch.empty(nm, plan.bh, plan.seq, device=q.device, dtype=torch.float32)
    launch(
        _state_bwd_kernel, (plan.n_seg, plan.bh),
        phi, douts[0], do1, outs[0], o1, den, rseg, g_buf, s_buf,
        s_buf if scales is None else scales, s_buf if dscales is None else dscales,
        *sizes, plan.state_cps, plan.scale,
        *strides(douts[0]), *strides(outs[0]),
        NORMALIZE=normalize, REVERSED=causal, HAS_SCALE=scales is not None,
        HAS_DC=dscales is not None,
        **plan.state_bwd_constexprs,
        **LAUNCH["state_bwd_causal" if causal else "state_bwd"],
    )  # fmt: skip
    if not causal:
        rstate = rseg[:, 0] if plan.n_seg == 1 else rseg.sum(dim=1)
        launch(
        _bwd_bidir_kernel, (plan.n_main, plan.bh, 2),
            q, k, v, phi, g_buf, s_buf, state, rstate, dq, dk, dv,
            *sizes, plan.main_cps,
            *strides(q), *strides(k), *strides(v), *strides(dq), *strides(dk), *strides(dv),
            ACC=accumulate, **cx,
            **LAUNCH["bwd_bidir"],
        )  # fmt: skip
        return dq, dk, dv
    has_init = state is not None
    rstate = rseg.cumsum_(dim=1) if has_init else None  # reversed: this and later segments
    launch(
        _dq_causal_kernel, (plan.n_seg, plan.bh),
        q, v, phi, g_buf, s_buf, state if has_init else s_buf, dq, *sizes, plan.cps,
        *strides(q), *strides(v), *strides(dq),
        HAS_INIT=has_init, ACC=accumulate, **cx, **plan.causal_launch("dq"),
    )  # fmt: skip
    launch(
        _dkv_causal_kernel, (plan.n_seg, plan.bh),
        k, v, phi, g_buf, s_buf, rstate if has_init else s_buf, dk, dv, *sizes, plan.cps,
        *strides(k), *strides(v), *strides(dk), *strides(dv),
        HAS_INIT=has_init, ACC=accumulate, **cx, **plan.causal_launch("dkv"),
    )  # fmt: skip
    return dq, dk, dv


class _FarFields(torch.autograd.Function):
    """The far fields of one or two feature maps: (q, k, v) -> (out_0[, out_1])."""

    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, phi_codes, causal, normalize):
        outs, (tensors, settings) = far_forward(
            q, k, v, key_padding_mask, phi_codes, causal, normalize
        )
        ctx.save_for_backward(*tensors)
        ctx.settings = settings
        return tuple(outs)

    @staticmethod
    def backward(ctx, *douts):
        dq, dk, dv = far_backward((ctx.saved_tensors, ctx.settings), douts)
        return dq, dk, dv, None, None, None, None


def far_fields_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    feature_maps: Sequence,
    causal: bool = False,
    normalize: bool = True,
    key_padding_mask: torch.Tensor | None = None,
) -> list[torch.Tensor] | None:
    """The far fields of several feature maps through the Triton kernels (one output per map),
    or None for a case they do not cover.

    Covered: named feature maps of ``PHI_CODES`` (a callable returns None), fp16/bf16/fp32,
    head_dim and head_dim_v up to 128, any sequence length. The maps are computed
    in groups (``map_groups``), each from one pass over the inputs. Inputs are validated by the
    caller (``far_field`` / ``far_fields``).
    """
    names = list(feature_maps)
    if not names or not all(isinstance(n, str) and n in PHI_CODES for n in names):
        return None
    if not supported(q, k, v) or q.shape[2] == 0:
        return None
    codes = [PHI_CODES[n] for n in names]
    outs: list[torch.Tensor] = []
    for group in map_groups(codes, bool(causal)):
        outs.extend(
            _FarFields.apply(q, k, v, key_padding_mask, group, bool(causal), bool(normalize))
        )
    return outs


def far_field_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    feature_map="elu",
    causal: bool = False,
    normalize: bool = True,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """One feature map's far field through the Triton kernels, or None (see
    ``far_fields_triton``)."""
    outs = far_fields_triton(q, k, v, [feature_map], causal, normalize, key_padding_mask)
    return None if outs is None else outs[0]
