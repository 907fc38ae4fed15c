"""The bidirectional FMM layer of a short sequence in two launches each way (host code of
``kernels.py``).

At a short length a step is launches and dependent steps, not work: the general path
(``ops/fmm``) launches three kernels forward and five backward, each costing more host time
than GPU time at 1K tokens. Here, per direction, a state kernel sums the far field's states of
``ShortPlan.state_segments`` segments per row in parallel, and one main kernel does everything
else: the forward the near field, the far fields and the blend; the backward dq, dk, dv and
the blend coefficients' gradient. The forward keeps its segment states for the backward. With
``state_segments`` 0 there is one launch each way, every program of the main kernel walking
its row's states itself (fewer launches, but a chain of seq / ``state_step`` dependent
steps). The forward's grid has ``ShortPlan.programs_per_sm`` programs per SM, no more than the
blocks of a row; the backward's twice that (its query and key sides).

``short_applies`` picks this path: bidirectional, a near field, one or two feature maps, at
most ``ShortPlan.max_seq`` positions and ``MAX_HEAD_DIM`` per head, and a grid of at most
``ShortPlan.max_blocks_per_sm`` blocks per SM (in large grids, e.g. a training batch, the
general path's kernels are faster). ``ops/fmm`` calls it. The reference of this path is the
fused layer's (``ops/fmm/naive.py``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..common.host import (
    LOG2E,
    block_dim,
    cdiv,
    empty_like_layout,
    fp32_precision,
    hopper,
    inline_ptx,
    offsets_fit,
    padding_as_uint8,
    sm_count,
    strides,
)
from ..common.launch import launch
from ..far_field.op import dot_dtype
from ..near_field.op import NearArgs
from ..plan import KernelPlan
from .kernels import (
    short_bwd_kernel,
    short_fwd_kernel,
    short_rstate_kernel,
    short_state_kernel,
)

_BLOCK = 64  # positions per block: the near field's query blocks and the far field's chunks
# Widest head this path takes (the general path takes up to 128): with float32 inputs and
# head_dim 128 its forward kernel needs more shared memory at band 64 than an H200 block has.
MAX_HEAD_DIM = 64


class ShortTensors(NamedTuple):
    """The tensors the short path's backward reads (besides the fields)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor  # uint8 padding mask, or q as a never-read stand-in
    lse: torch.Tensor  # (batch * heads, seq) float32: the near field's log-sum-exp
    den: torch.Tensor  # (maps, batch * heads, seq) float32; empty where normalize is False
    states: torch.Tensor  # (batch * heads, segments or 1, maps, slot) float32


class ShortSettings(NamedTuple):
    near: NearArgs
    phi_codes: tuple[int, ...]
    normalize: bool
    has_mask: bool
    mask_strides: tuple[int, int]
    plan: KernelPlan


class ShortSaved(NamedTuple):
    """What ``short_backward`` needs, as ``short_forward`` returns it."""

    tensors: ShortTensors
    settings: ShortSettings


def short_applies(q, near_args, phi_codes, causal, plan: KernelPlan) -> bool:
    """Whether the fused forward takes this path (plain Python on shapes: traceable)."""
    short = plan.short
    return (
        not causal
        and near_args is not None
        and 1 <= len(phi_codes) <= 2
        and q.shape[2] <= short.max_seq
        and q.shape[-1] <= MAX_HEAD_DIM
        and _grid_blocks(q) <= short.max_blocks_per_sm * sm_count(q.device, plan)
    )


def _grid_blocks(q) -> int:
    """64-position blocks of the whole call: batch * heads * blocks per row."""
    return q.shape[0] * q.shape[1] * cdiv(q.shape[2], _BLOCK)


def _blocks_per_program(bh: int, seq: int, device: torch.device, plan: KernelPlan) -> int:
    blocks = cdiv(seq, _BLOCK)
    target = plan.short.programs_per_sm * sm_count(device, plan)
    per_row = max(1, min(blocks, cdiv(target, bh)))
    return cdiv(blocks, per_row)


_STATE_CONSTEXPRS = (
    "NM", "PHI0", "PHI1", "FAST", "BS", "BD", "BDV", "SLOT", "PREC", "DOT_DTYPE", "PDL",
)  # fmt: skip


def _after_states(cx, n_seg) -> dict:
    """The main kernel's launch option: programmatic dependent launch where a state kernel
    runs before it and the kernels use it (``cx["PDL"]``: Hopper, ``ShortPlan.pdl``)."""
    return {"launch_pdl": True} if cx["PDL"] and n_seg else {}


def segments(seq: int, plan: KernelPlan) -> tuple[int, int]:
    """(segments per row, positions per segment) of the state launches; (0, 0): none. A
    segment is a whole number of state steps."""
    step = plan.short.state_step
    n_seg = min(plan.short.state_segments, cdiv(seq, step))
    if n_seg <= 0:
        return 0, 0
    length = cdiv(cdiv(seq, n_seg), step) * step
    return cdiv(seq, length), length


def _slot(q, v) -> int:
    """float32 numbers per state slot: S (head_dim x head_dim_v, padded to blocks), then z."""
    bd, bdv = block_dim(q.shape[-1]), block_dim(v.shape[-1])
    return bd * bdv + bd


def _constexprs(q, v, settings: ShortSettings):
    plan = settings.plan
    return dict(
        NM=len(settings.phi_codes),
        PHI0=settings.phi_codes[0],
        PHI1=settings.phi_codes[-1],
        NORMALIZE=settings.normalize,
        FAST=inline_ptx(q.device, plan),
        HAS_MASK=settings.has_mask,
        DROPOUT=settings.near.dropout_p > 0.0,
        SEED_PTR=isinstance(settings.near.seed, torch.Tensor),
        BM=_BLOCK,
        BS=plan.short.state_step,
        BD=block_dim(q.shape[-1]),
        BDV=block_dim(v.shape[-1]),
        SLOT=_slot(q, v),
        PREC=fp32_precision(q.dtype),
        DOT_DTYPE=dot_dtype(q.dtype),
        PDL=plan.short.pdl and hopper(q.device, plan),
    )


def short_saved(
    q, k, v, key_padding_mask, lse, den, states, near_args, phi_codes, normalize, plan
) -> ShortSaved:
    """``ShortSaved`` from the tensors: ``short_forward`` builds it, a caller that kept only
    the tensors (the custom op of ``ops/fmm``) rebuilds it. ``den`` is empty where normalize
    is False."""
    mask, smb, smt = padding_as_uint8(key_padding_mask, q)
    has_mask = key_padding_mask is not None
    tensors = ShortTensors(q, k, v, mask, lse, den, states)
    settings = ShortSettings(
        NearArgs(*near_args), tuple(phi_codes), normalize, has_mask, (smb, smt), plan
    )
    return ShortSaved(tensors, settings)


def state_slots(q, v, n_maps, plan: KernelPlan, n_seg=None) -> torch.Tensor:
    """The far states the forward keeps for the backward: ``(batch * heads, segments or 1,
    maps, slot)`` float32, a slot S (head_dim x head_dim_v) then z (``tiles.store_state``);
    per segment (``segments``), or the totals."""
    bh = q.shape[0] * q.shape[1]
    if n_seg is None:
        n_seg = segments(q.shape[2], plan)[0]
    return q.new_empty(bh, max(n_seg, 1), n_maps, _slot(q, v), dtype=torch.float32)


def short_forward(q, k, v, coeffs, key_padding_mask, near_args, phi_codes, normalize, plan):
    """``(y, fields, saved)``: the blended output, the fields (near, then the far fields) and
    what ``short_backward`` needs (``ShortSaved``). ``coeffs`` contiguous float32
    ``(1 + maps, heads, head_dim_v)``."""
    batch, heads, seq, dim = q.shape
    dim_v, bh, nm = v.shape[-1], batch * heads, len(phi_codes)
    y = empty_like_layout(q, dim_v)
    fields = [empty_like_layout(q, dim_v) for _ in range(1 + nm)]
    lse = torch.empty(bh, seq, device=q.device, dtype=torch.float32)
    den = torch.empty(nm if normalize else 0, bh, seq, device=q.device, dtype=torch.float32)
    n_seg, seg = segments(seq, plan)
    states = state_slots(q, v, nm, plan, n_seg)
    saved = short_saved(
        q, k, v, key_padding_mask, lse, den, states, near_args, phi_codes, normalize, plan
    )
    mask, (smb, smt), has_mask = (
        saved.tensors.mask,
        saved.settings.mask_strides,
        saved.settings.has_mask,
    )
    bandwidth, dropout_p, seed = saved.settings.near
    bpp = _blocks_per_program(bh, seq, q.device, plan)
    cx = _constexprs(q, v, saved.settings)
    # Under PDL (_after_states) the main kernel starts while the state kernel runs: nothing
    # may be launched between the two, and what the main kernel reads before its wait
    # (q, k, v, the mask, the coefficients) must be written before the state launch.
    if n_seg:
        launch(
            short_state_kernel, (n_seg, bh),
            k, v, mask, states, heads, seq, dim, dim_v, seg, *strides(k), *strides(v), smb, smt,
            HAS_MASK=has_mask, **{name: cx[name] for name in _STATE_CONSTEXPRS},
            **plan.short.state.options(),
        )  # fmt: skip
    launch(
        short_fwd_kernel, (cdiv(cdiv(seq, _BLOCK), bpp), bh),
        q, k, v, mask, coeffs, y, fields[0], fields[1], fields[-1], lse,
        den if normalize else lse, states, heads, seq, bandwidth, dim, dim_v, bpp,
        LOG2E / math.sqrt(dim), 1.0 / math.sqrt(seq), seed, dropout_p,
        *strides(q), *strides(k), *strides(v), *strides(y), smb, smt,
        BN=plan.near.tiles(bandwidth)[0]["BN"], NSEG=n_seg, **cx, **plan.short.fwd.options(),
        **_after_states(cx, n_seg),
    )  # fmt: skip
    return y, fields, saved


def short_backward(dy, coeffs, fields, saved: ShortSaved):
    """``(dq, dk, dv, dcoeffs)`` of the output gradient dy (``fields`` and ``saved`` from
    ``short_forward``)."""
    q, k, v, mask, lse, den, states = saved.tensors
    settings = saved.settings
    (bandwidth, dropout_p, seed), _, normalize, _, (smb, smt), plan = settings
    batch, heads, seq, dim = q.shape
    dim_v, bh = v.shape[-1], batch * heads
    if not offsets_fit(dy):  # 32-bit offsets inside a (batch, head)
        dy = dy.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dc = torch.zeros_like(coeffs)
    bpp = _blocks_per_program(bh, seq, q.device, plan)
    cx = _constexprs(q, v, settings)
    n_seg, seg = segments(seq, plan)
    rseg = lse  # a stand-in, never read without segments
    # As in short_forward: under PDL nothing is launched between the reverse-state kernel and
    # the main one, and everything but rseg (dc's zeros included) is written before them.
    if n_seg:
        rseg = state_slots(q, v, cx["NM"], plan, n_seg)
        launch(
            short_rstate_kernel, (n_seg, bh),
            q, dy, fields[1], fields[-1], den if normalize else lse, coeffs, rseg, heads, seq,
            dim, dim_v, seg, 1.0 / math.sqrt(seq), *strides(q), *strides(dy), *strides(fields[0]),
            NORMALIZE=normalize, **{name: cx[name] for name in _STATE_CONSTEXPRS},
            **plan.short.rstate.options(),
        )  # fmt: skip
    launch(
        short_bwd_kernel, (cdiv(cdiv(seq, _BLOCK), bpp), bh, 2),
        q, k, v, mask, coeffs, dc, dy, fields[0], fields[1], fields[-1], lse,
        den if normalize else lse, states, rseg, dq, dk, dv,
        heads, seq, bandwidth, dim, dim_v, bpp, LOG2E / math.sqrt(dim), 1.0 / math.sqrt(dim),
        1.0 / math.sqrt(seq), seed, dropout_p,
        *strides(q), *strides(k), *strides(v), *strides(fields[0]), *strides(dy),
        *strides(dq), *strides(dk), *strides(dv), smb, smt,
        TN=min(plan.near.tiles(bandwidth)[0]["BN"], _BLOCK), NSEG=n_seg, FSEG=states.shape[1], **cx,
        **plan.short.bwd.options(),
        **_after_states(cx, n_seg),
    )  # fmt: skip
    return dq, dk, dv, dc
