"""The bidirectional FMM layer of a short sequence in one launch each way (host code of
``fmm_short_kernels.py``).

At a short length a step is launches, not work: the general path (``fmm.py``) launches three
kernels forward and five backward, and on the H200 each costs more host time than its GPU
time at 1K tokens (docs/gpu.md). Here one kernel does the forward (near field, far fields,
blend) and one the backward (dq, dk, dv and the blend coefficients' gradient). Each program
sums the far field's total states itself, so the grid is kept to a few programs per (batch,
head): ``SHORT["programs_per_sm"]`` programs per SM over the whole grid, no more than the
blocks of a row.

``short_applies`` picks this path: bidirectional, a near field, one or two feature maps, at
most ``SHORT["max_seq"]`` positions. ``fmm.fmm_forward`` / ``fmm_backward`` call it.
"""

from __future__ import annotations

import math

import torch

from ._common import (
    block_dim,
    cdiv,
    empty_like_layout,
    fp32_precision,
    offsets_fit,
    padding_as_uint8,
    strides,
)
from .far import _dot_dtype, _sm_count, inline_ptx
from .fmm_short_kernels import _short_bwd_kernel, _short_fwd_kernel, _short_rstate_kernel
from .launch import launch
from .near import _LOG2E, _tiles

# The longest sequence this path takes, the grid's programs per SM and the positions per step
# of the kernels' walks over the whole row (the forward's state walk, the backward's reverse
# state walk; tuned on the H200, bench/far_tune.py --fields short; docs/gpu.md). max_seq 0
# turns the path off. rstate_segments > 0: a second backward launch sums the reverse states
# per segment (that many per row, in parallel) instead of each program walking the row.
SHORT = {"max_seq": 2048, "programs_per_sm": 2, "state_step": 64, "rstate_segments": 0}
LAUNCH = {
    "fwd": dict(num_warps=4, num_stages=2),
    "bwd": dict(num_warps=4, num_stages=2),
    "rstate": dict(num_warps=4, num_stages=2),
}
_BLOCK = 64  # positions per block: the near field's query blocks and the far field's chunks


def short_applies(q, near_args, phi_codes, causal) -> bool:
    """Whether ``fmm_forward`` takes this path (plain Python on shapes: traceable)."""
    return (
        not causal
        and near_args is not None
        and 1 <= len(phi_codes) <= 2
        and q.shape[2] <= SHORT["max_seq"]
    )


def _blocks_per_program(bh: int, seq: int, device: torch.device) -> int:
    blocks = cdiv(seq, _BLOCK)
    target = SHORT["programs_per_sm"] * _sm_count(device)
    per_row = max(1, min(blocks, cdiv(target, bh)))
    return cdiv(blocks, per_row)


_RSTATE_CONSTEXPRS = (
    "NM", "PHI0", "PHI1", "FAST", "NORMALIZE", "BS", "BD", "BDV", "SLOT", "PREC", "DOT_DTYPE",
)  # fmt: skip


def _rstate_segments(seq: int) -> int:
    """Segments of the backward's reverse-state launch (0: none), at most one per state step."""
    return min(SHORT["rstate_segments"], cdiv(seq, SHORT["state_step"]))


def _constexprs(q, v, settings):
    (_, dropout_p, seed), phi_codes, normalize, has_mask, _, _ = settings
    return dict(
        NM=len(phi_codes),
        PHI0=phi_codes[0],
        PHI1=phi_codes[-1],
        NORMALIZE=normalize,
        FAST=inline_ptx(q.device),
        HAS_MASK=has_mask,
        DROPOUT=dropout_p > 0.0,
        SEED_PTR=isinstance(seed, torch.Tensor),
        BM=_BLOCK,
        BS=SHORT["state_step"],
        BD=block_dim(q.shape[-1]),
        BDV=block_dim(v.shape[-1]),
        SLOT=block_dim(q.shape[-1]) * block_dim(v.shape[-1]) + block_dim(q.shape[-1]),
        PREC=fp32_precision(q.dtype),
        DOT_DTYPE=_dot_dtype(q.dtype),
    )


def short_saved(q, k, v, key_padding_mask, lse, den, states, near_args, phi_codes, normalize):
    """What ``short_backward`` needs (tensors first, then the settings), as ``short_forward``
    returns it, rebuilt by a caller that kept only the tensors (the custom op of
    ``fmm_op.py``). ``den`` is empty where normalize is False."""
    mask, smb, smt = padding_as_uint8(key_padding_mask, q)
    has_mask = key_padding_mask is not None
    tensors = (q, k, v, mask, lse, den, states)
    return tensors, (near_args, tuple(phi_codes), normalize, has_mask, smb, smt)


def state_slots(q, v, n_maps) -> torch.Tensor:
    """The total states the forward stores: ``(batch * heads, maps, slot)`` float32, a slot
    S (head_dim x head_dim_v) then z (``far_tiles._store_state``)."""
    bd, bdv = block_dim(q.shape[-1]), block_dim(v.shape[-1])
    bh = q.shape[0] * q.shape[1]
    return q.new_empty(bh, n_maps, bd * bdv + bd, dtype=torch.float32)


def short_forward(q, k, v, coeffs, key_padding_mask, near_args, phi_codes, normalize):
    """``(y, fields, saved)``: the blended output, the fields (near, then the far fields) and
    what ``short_backward`` needs (``short_saved``). ``coeffs`` contiguous float32
    ``(1 + maps, heads, head_dim_v)``."""
    batch, heads, seq, dim = q.shape
    dim_v, bh, nm = v.shape[-1], batch * heads, len(phi_codes)
    y = empty_like_layout(q, dim_v)
    fields = [empty_like_layout(q, dim_v) for _ in range(1 + nm)]
    lse = torch.empty(bh, seq, device=q.device, dtype=torch.float32)
    den = torch.empty(nm if normalize else 0, bh, seq, device=q.device, dtype=torch.float32)
    states = state_slots(q, v, nm)
    saved = short_saved(
        q, k, v, key_padding_mask, lse, den, states, near_args, phi_codes, normalize
    )
    (_, _, _, mask, *_), (_, _, _, has_mask, smb, smt) = saved
    bandwidth, dropout_p, seed = near_args
    bpp = _blocks_per_program(bh, seq, q.device)
    launch(
        _short_fwd_kernel, (cdiv(cdiv(seq, _BLOCK), bpp), bh),
        q, k, v, mask, coeffs, y, fields[0], fields[1], fields[-1], lse,
        den if normalize else lse, states, heads, seq, bandwidth, dim, dim_v, bpp,
        _LOG2E / math.sqrt(dim), 1.0 / math.sqrt(seq), seed, dropout_p,
        *strides(q), *strides(k), *strides(v), *strides(y), smb, smt,
        BN=_tiles(bandwidth)[0]["BN"], **_constexprs(q, v, saved[1]), **LAUNCH["fwd"],
    )  # fmt: skip
    return y, fields, saved


def short_backward(dy, coeffs, fields, saved):
    """``(dq, dk, dv, dcoeffs)`` of the output gradient dy (``fields`` and ``saved`` from
    ``short_forward``)."""
    (q, k, v, mask, lse, den, states), settings = saved
    (bandwidth, dropout_p, seed), _, normalize, _, smb, smt = settings
    batch, heads, seq, dim = q.shape
    dim_v, bh = v.shape[-1], batch * heads
    if not offsets_fit(dy):  # 32-bit offsets inside a (batch, head)
        dy = dy.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dc = torch.zeros_like(coeffs)
    bpp = _blocks_per_program(bh, seq, q.device)
    cx = _constexprs(q, v, settings)
    n_seg, rseg = _rstate_segments(seq), lse  # lse: a stand-in, never read without segments
    if n_seg:
        seg = cdiv(cdiv(seq, n_seg), cx["BS"]) * cx["BS"]
        n_seg = cdiv(seq, seg)
        rseg = torch.empty(bh, n_seg, cx["NM"], cx["SLOT"], device=q.device, dtype=torch.float32)
        launch(
            _short_rstate_kernel, (n_seg, bh),
            q, dy, fields[1], fields[-1], den if normalize else lse, coeffs, rseg, heads, seq,
            dim, dim_v, seg, 1.0 / math.sqrt(seq), *strides(q), *strides(dy), *strides(fields[0]),
            **{k: cx[k] for k in _RSTATE_CONSTEXPRS}, **LAUNCH["rstate"],
        )  # fmt: skip
    launch(
        _short_bwd_kernel, (cdiv(cdiv(seq, _BLOCK), bpp), bh),
        q, k, v, mask, coeffs, dc, dy, fields[0], fields[1], fields[-1], lse,
        den if normalize else lse, states, rseg, dq, dk, dv,
        heads, seq, bandwidth, dim, dim_v, bpp, _LOG2E / math.sqrt(dim), 1.0 / math.sqrt(dim),
        1.0 / math.sqrt(seq), seed, dropout_p,
        *strides(q), *strides(k), *strides(v), *strides(fields[0]), *strides(dy),
        *strides(dq), *strides(dk), *strides(dv), smb, smt,
        TN=min(_tiles(bandwidth)[0]["BN"], _BLOCK), NSEG=n_seg, **cx, **LAUNCH["bwd"],
    )  # fmt: skip
    return dq, dk, dv, dc
