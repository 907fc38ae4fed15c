"""The bidirectional FMM layer of a short sequence in two launches each way (host code of
``fmm_short_kernels.py``).

At a short length a step is launches and dependent steps, not work: the general path
(``fmm.py``) launches three kernels forward and five backward, and on the H200 each costs more
host time than its GPU time at 1K tokens (docs/gpu.md). Here, per direction, a state kernel
sums the far field's states of ``SHORT["state_segments"]`` segments per row in parallel, and
one main kernel does everything else: the forward the near field, the far fields and the
blend; the backward dq, dk, dv and the blend coefficients' gradient. The forward keeps its
segment states for the backward. With ``state_segments`` 0 there is one launch each way, every
program of the main kernel walking its row's states itself (fewer launches, but a chain of
seq / ``state_step`` dependent steps: slower on the GPU). The forward's grid has
``SHORT["programs_per_sm"]`` programs per SM, no more than the blocks of a row; the
backward's twice that (its query and key sides).

``short_applies`` picks this path: bidirectional, a near field, one or two feature maps, at
most ``SHORT["max_seq"]`` positions and ``MAX_HEAD_DIM`` per head, and a grid of at most
``SHORT["max_blocks_per_sm"]`` blocks per SM (in large grids, e.g. a training batch, the
general path's kernels are faster). ``fmm.fmm_forward`` / ``fmm_backward`` call it. Set
``SHORT`` before compiling a model: the custom op's fake outputs follow it.
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
from .far import _dot_dtype, _sm_count, hopper, inline_ptx
from .fmm_short_kernels import (
    _short_bwd_kernel,
    _short_fwd_kernel,
    _short_rstate_kernel,
    _short_state_kernel,
)
from .launch import launch
from .near import _LOG2E, _tiles

# When this path is taken: sequences up to max_seq (0 turns it off) in grids of at most
# max_blocks_per_sm 64-position blocks (batch * heads * blocks per row) per SM: a small grid,
# whose step is launches and dependent steps rather than throughput. The grid's programs per
# SM; the positions per step of the walks over a row's states, and their segments: with
# state_segments > 0 each direction launches a state kernel first, one program per segment
# (that many per row, in parallel), and the main kernel sums their states; with 0 every
# program of the main kernel walks the whole row itself (one launch each way, but a chain of
# seq / state_step dependent steps). pdl: the main kernels start under programmatic dependent
# launch (Hopper only), beside their state kernels. H200, fwd+bwd as graph replays
# (bench/far_tune.py --fields short):
# batch 1 x 8 heads x 64, band 64: 512 / 2,048 tokens 0.045-0.049 / 0.100 ms against 0.091 /
# 0.115 on the general path, 4,096 tokens 0.185 against 0.163; 1,024 tokens 0.065-0.066
# against 0.091-0.092; the LRA-like batch 16 x 2
# heads x 32, band 5, 1K (512 blocks) 0.084 against 0.123; LRA Image's
# 256 x 2 x 32 (8,192 blocks) 1.15 against 1.10. state_segments 8: 3% faster at 1K, batch 1,
# but 2% slower in the LRA-like batch and 25% at 512 tokens. Not measured: 2,048 tokens in
# grids of 257-528 blocks (batch 2 x 8 heads), which max_seq 2,048 now sends here.
SHORT = {
    "max_seq": 2048,
    "max_blocks_per_sm": 4,
    "programs_per_sm": 2,
    "state_step": 64,
    "state_segments": 4,
    "pdl": True,
}
# The backward at 4 warps: its two sides double the grid, and two programs fit on an SM
# beside a reverse-state program (at 8 warps one fills it): 0.066 against 0.073 ms at 1K,
# batch 1. At 8 warps, head_dim 32 and band 5 the
# compiled backward faults on the H200 (an illegal address in every combination of PDL and
# dropout tried; head_dim 64 or band 64 run), a setting the path does not use (the tests
# cover 4 warps). Likely, not confirmed: at 8 warps Triton splits the narrow band's 16-key
# tiles over two warpgroups, and wgmma with N = 8 reads shared memory past an unpadded
# operand (triton-lang/triton#10629 reports that for TF32).
LAUNCH = {
    "fwd": dict(num_warps=4, num_stages=2),
    "bwd": dict(num_warps=4, num_stages=2),
    "state": dict(num_warps=4, num_stages=2),
    "rstate": dict(num_warps=4, num_stages=2),
}
_BLOCK = 64  # positions per block: the near field's query blocks and the far field's chunks
# Widest head this path takes (the general path takes up to 128): with float32 inputs and
# head_dim 128 its forward kernel needs 246 KB of shared memory at band 64, more than the
# H200's 227 KB per block (compiled for sm_90a; found by review), and it was tuned at 32-64.
MAX_HEAD_DIM = 64


def short_applies(q, near_args, phi_codes, causal) -> bool:
    """Whether ``fmm_forward`` takes this path (plain Python on shapes: traceable)."""
    return (
        not causal
        and near_args is not None
        and 1 <= len(phi_codes) <= 2
        and q.shape[2] <= SHORT["max_seq"]
        and q.shape[-1] <= MAX_HEAD_DIM
        and _grid_blocks(q) <= SHORT["max_blocks_per_sm"] * _sm_count(q.device)
    )


def _grid_blocks(q) -> int:
    """64-position blocks of the whole call: batch * heads * blocks per row."""
    return q.shape[0] * q.shape[1] * cdiv(q.shape[2], _BLOCK)


def _blocks_per_program(bh: int, seq: int, device: torch.device) -> int:
    blocks = cdiv(seq, _BLOCK)
    target = SHORT["programs_per_sm"] * _sm_count(device)
    per_row = max(1, min(blocks, cdiv(target, bh)))
    return cdiv(blocks, per_row)


_STATE_CONSTEXPRS = (
    "NM", "PHI0", "PHI1", "FAST", "BS", "BD", "BDV", "SLOT", "PREC", "DOT_DTYPE", "PDL",
)  # fmt: skip


def _after_states(cx, n_seg) -> dict:
    """The main kernel's launch option: programmatic dependent launch where a state kernel
    runs before it and the kernels use it (``cx["PDL"]``: Hopper, ``SHORT["pdl"]``)."""
    return {"launch_pdl": True} if cx["PDL"] and n_seg else {}


def segments(seq: int) -> tuple[int, int]:
    """(segments per row, positions per segment) of the state launches; (0, 0): none. A
    segment is a whole number of state steps."""
    step = SHORT["state_step"]
    n_seg = min(SHORT["state_segments"], cdiv(seq, step))
    if n_seg <= 0:
        return 0, 0
    length = cdiv(cdiv(seq, n_seg), step) * step
    return cdiv(seq, length), length


def _slot(q, v) -> int:
    """float32 numbers per state slot: S (head_dim x head_dim_v, padded to blocks), then z."""
    bd, bdv = block_dim(q.shape[-1]), block_dim(v.shape[-1])
    return bd * bdv + bd


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
        SLOT=_slot(q, v),
        PREC=fp32_precision(q.dtype),
        DOT_DTYPE=_dot_dtype(q.dtype),
        PDL=SHORT["pdl"] and hopper(q.device),
    )


def short_saved(q, k, v, key_padding_mask, lse, den, states, near_args, phi_codes, normalize):
    """What ``short_backward`` needs (tensors first, then the settings), as ``short_forward``
    returns it, rebuilt by a caller that kept only the tensors (the custom op of
    ``fmm_op.py``). ``den`` is empty where normalize is False."""
    mask, smb, smt = padding_as_uint8(key_padding_mask, q)
    has_mask = key_padding_mask is not None
    tensors = (q, k, v, mask, lse, den, states)
    return tensors, (near_args, tuple(phi_codes), normalize, has_mask, smb, smt)


def state_slots(q, v, n_maps, n_seg=None) -> torch.Tensor:
    """The far states the forward keeps for the backward: ``(batch * heads, segments or 1,
    maps, slot)`` float32, a slot S (head_dim x head_dim_v) then z
    (``far_tiles._store_state``); per segment (``segments``), or the totals."""
    bh = q.shape[0] * q.shape[1]
    if n_seg is None:
        n_seg = segments(q.shape[2])[0]
    return q.new_empty(bh, max(n_seg, 1), n_maps, _slot(q, v), dtype=torch.float32)


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
    n_seg, seg = segments(seq)
    states = state_slots(q, v, nm, n_seg)
    saved = short_saved(
        q, k, v, key_padding_mask, lse, den, states, near_args, phi_codes, normalize
    )
    (_, _, _, mask, *_), (_, _, _, has_mask, smb, smt) = saved
    bandwidth, dropout_p, seed = near_args
    bpp = _blocks_per_program(bh, seq, q.device)
    cx = _constexprs(q, v, saved[1])
    # Under PDL (_after_states) the main kernel starts while the state kernel runs: nothing
    # may be launched between the two, and what the main kernel reads before its wait
    # (q, k, v, the mask, the coefficients) must be written before the state launch.
    if n_seg:
        launch(
            _short_state_kernel, (n_seg, bh),
            k, v, mask, states, heads, seq, dim, dim_v, seg, *strides(k), *strides(v), smb, smt,
            HAS_MASK=has_mask, **{name: cx[name] for name in _STATE_CONSTEXPRS},
            **LAUNCH["state"],
        )  # fmt: skip
    launch(
        _short_fwd_kernel, (cdiv(cdiv(seq, _BLOCK), bpp), bh),
        q, k, v, mask, coeffs, y, fields[0], fields[1], fields[-1], lse,
        den if normalize else lse, states, heads, seq, bandwidth, dim, dim_v, bpp,
        _LOG2E / math.sqrt(dim), 1.0 / math.sqrt(seq), seed, dropout_p,
        *strides(q), *strides(k), *strides(v), *strides(y), smb, smt,
        BN=_tiles(bandwidth)[0]["BN"], NSEG=n_seg, **cx, **LAUNCH["fwd"],
        **_after_states(cx, n_seg),
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
    n_seg, seg = segments(seq)
    rseg = lse  # a stand-in, never read without segments
    # As in short_forward: under PDL nothing is launched between the reverse-state kernel and
    # the main one, and everything but rseg (dc's zeros included) is written before them.
    if n_seg:
        rseg = state_slots(q, v, cx["NM"], n_seg)
        launch(
            _short_rstate_kernel, (n_seg, bh),
            q, dy, fields[1], fields[-1], den if normalize else lse, coeffs, rseg, heads, seq,
            dim, dim_v, seg, 1.0 / math.sqrt(seq), *strides(q), *strides(dy), *strides(fields[0]),
            NORMALIZE=normalize, **{name: cx[name] for name in _STATE_CONSTEXPRS},
            **LAUNCH["rstate"],
        )  # fmt: skip
    launch(
        _short_bwd_kernel, (cdiv(cdiv(seq, _BLOCK), bpp), bh, 2),
        q, k, v, mask, coeffs, dc, dy, fields[0], fields[1], fields[-1], lse,
        den if normalize else lse, states, rseg, dq, dk, dv,
        heads, seq, bandwidth, dim, dim_v, bpp, _LOG2E / math.sqrt(dim), 1.0 / math.sqrt(dim),
        1.0 / math.sqrt(seq), seed, dropout_p,
        *strides(q), *strides(k), *strides(v), *strides(fields[0]), *strides(dy),
        *strides(dq), *strides(dk), *strides(dv), smb, smt,
        TN=min(_tiles(bandwidth)[0]["BN"], _BLOCK), NSEG=n_seg, FSEG=states.shape[1], **cx,
        **LAUNCH["bwd"],
        **_after_states(cx, n_seg),
    )  # fmt: skip
    return dq, dk, dv, dc
