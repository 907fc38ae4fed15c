"""Near field on the GPU: banded softmax attention as a sliding-window flash kernel (Triton).

Shapes: q, k ``(batch, heads, seq, head_dim)``, v ``(batch, heads, seq, head_dim_v)``,
key_padding_mask bool ``(batch, seq)`` (True = padding). Semantics are exactly those of
``fmmformer_pl.attention.near_field``:

    out_i = sum_{j in V(i)} exp(s_ij) v_j / sum_{j in V(i)} exp(s_ij),  s_ij = q_i.k_j / sqrt(d)

with V(i) the non-padding keys of the band ``|i - j| < w`` (causal: ``i - w < j <= i``), and
out_i = 0 (gradient 0) where V(i) is empty.

One program owns a block of ``_BLOCK_M`` queries and visits only the key blocks its band
reaches (three 64-key blocks for w = 64; narrower tiles across narrow bands, 16 or 32 keys,
and 16 or 32 queries in the dk/dv loop: ``_tiles``), with the online softmax of
FlashAttention. The backward pass (``near_bwd.py``) recomputes the probabilities from the
saved log-sum-exp, once per query block for dq and once per key block for dk and dv (no
atomics), in one kernel or two (``MERGED_BACKWARD``). Memory: O(seq) extra (the log-sum-exp,
one float32 per position; the two-kernel backward also delta_i = dout_i . out_i).

Dropout (``dropout_p > 0``, training) is in the kernels: a Philox number per (head, i, j),
regenerated in the backward pass, so nothing of size (seq x band) is stored.
``band_attention_flash`` is PyTorch's own FlashAttention-2 with a window
(``aten._flash_attention_forward``), kept for comparison in the benchmark.
"""

from __future__ import annotations

import math

import torch
import triton
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
from .far_tiles import _blend_add
from .launch import launch
from .near_bwd import _band_bwd_kernel, _band_dkv_kernel, _band_dq_kernel
from .near_tiles import _dropout_keep, _fwd_loop, _rows, _seed_of

_BLOCK_M = 64
_BLOCK_N = 64
# Narrow bands use smaller tiles on the side the band reaches across: (widest band, tile)
# pairs, the first that fits w wins. A block of 64 queries sees 64 + 2(w - 1) keys: for w = 5
# (the paper's LRA band) five or six tiles of 16 keys instead of two or three of 64, and the
# dropout's Philox numbers are drawn per tile element. H200, graph replays, fwd+bwd
# (bench/far_tune.py, docs/kernel_tune_near_{retrieval,wikitext}.csv): LRA Retrieval's w = 5 (64 x 2 heads x 4K,
# dim 32, dropout, padding) 0.78 ms with 16-tiles, 1.02 with 32, 1.55 with 64; WikiText's
# w = 20 (96 x 8 heads x 256, dim 16, causal) 0.079 ms with 32-tiles, 0.093 with 64.
# Empty: wide tiles only.
NARROW_TILES = ((16, 16), (32, 32))
_LOG2E = 1.4426950408889634


@triton.jit
def _dropout_keep_kernel(out_ptr, seed, T, W, p_drop, BM: tl.constexpr, BN: tl.constexpr):
    """Test helper: the (T x T) keep matrix of one (batch, head) as float (seed pre-offset)."""
    offs_m = tl.program_id(0) * BM + tl.arange(0, BM)
    offs_n = tl.program_id(1) * BN + tl.arange(0, BN)
    keep = _dropout_keep(seed, offs_m, offs_n, W, p_drop, False)
    tl.store(
        out_ptr + offs_m[:, None] * T + offs_n[None, :],
        keep.to(tl.float32),
        mask=(offs_m[:, None] < T) & (offs_n[None, :] < T),
    )


@triton.jit
def _band_fwd_kernel(
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
    seed_bh = _seed_of(seed, SEED_PTR) + pid_bh  # dropout: this (batch, head)'s stream
    q_base = q_ptr + bb * sqb + hh * sqh
    k_base = k_ptr + bb * skb + hh * skh
    v_base = v_ptr + bb * svb + hh * svh
    o_base = o_ptr + bb * sob + hh * soh
    mask_base = mask_ptr + bb * smb
    m0 = pid_m * BM
    offs_m = m0 + tl.arange(0, BM)
    offs_dv = tl.arange(0, BDV)
    q = _rows(q_base, offs_m, T, D, sqt, sqd, BD)
    out, lse = _fwd_loop(
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
        # The sum blend.py forms from the stored fields, term for term (out rounded first).
        fields = bb * sob + hh * soh + tile
        y = _blend_add(0.0, out, o_ptr, c_ptr, 0, H, hh, offs_dv, DV)
        f1 = tl.load(f1_ptr + fields, mask=inside, other=0.0)
        y = _blend_add(y, f1, o_ptr, c_ptr, 1, H, hh, offs_dv, DV)
        if BLEND > 1:
            f2 = tl.load(f2_ptr + fields, mask=inside, other=0.0)
            y = _blend_add(y, f2, o_ptr, c_ptr, 2, H, hh, offs_dv, DV)
        if BLEND > 2:
            f3 = tl.load(f3_ptr + fields, mask=inside, other=0.0)
            y = _blend_add(y, f3, o_ptr, c_ptr, 3, H, hh, offs_dv, DV)
        tl.store(y_ptr + fields, y.to(y_ptr.dtype.element_ty), mask=inside)


# Launch settings (tuned on an H200, bf16, head_dim 64; see docs/gpu.md).
# bench/far_tune.py, H200, 64K tokens: 4 warps beat 8 (0.90 vs
# 1.46 ms bidirectional, 0.96 vs 1.24 causal); 64 x 64 blocks beat 128 x 64, 64 x 32, 32 x 32.
LAUNCH = {
    "fwd": dict(num_warps=4, num_stages=2),
    "dq": dict(num_warps=4, num_stages=2),
    "dkv": dict(num_warps=4, num_stages=2),
    "bwd": dict(num_warps=4, num_stages=2),
}
# The backward as one kernel (``near_bwd._band_bwd_kernel``: dk, dv and dq of a block of
# positions per program) or as the dq kernel then the dk/dv kernel; per tile family (wide:
# 64 x 64; narrow: ``NARROW_TILES``). The merged kernel reads q, k, v, out and dout once per
# block instead of once per kernel, and writes no delta, but needs 255 registers at 4 warps
# (the dk/dv kernel 220, dq 165: bench/kernel_sass.py --field near). H200, band 64, 64K,
# fwd+bwd as graph replays: 0.546 / 0.476 ms merged
# against 0.532 / 0.440 in two kernels (bidirectional / causal); 8 warps 1.01 / 0.79. LRA
# Retrieval's near field (band 5, 16-tiles): 0.772 / 0.682 against 0.778 / 0.681, even.
MERGED_BACKWARD = {"wide": False, "narrow": False}


def near_saved(q, k, v, key_padding_mask, out, lse, bandwidth, causal, dropout_p, seed):
    """What ``near_backward`` needs: the inputs (the mask as uint8), out, the log-sum-exp and
    the launch settings. ``near_forward`` returns it; a caller that kept only the tensors
    (the custom op of ``fmm_op.py``) rebuilds it."""
    mask, smb, smt = padding_as_uint8(key_padding_mask, q)
    cfg = dict(
        HAS_MASK=key_padding_mask is not None,
        CAUSAL=causal,
        DROPOUT=dropout_p > 0.0,
        SEED_PTR=isinstance(seed, torch.Tensor),
        BD=block_dim(q.shape[-1]),
        BDV=block_dim(v.shape[-1]),
        PREC=fp32_precision(q.dtype),
    )
    return (q, k, v, mask, out, lse), cfg, (bandwidth, smb, smt, dropout_p, seed)


def _tiles(bandwidth: int) -> tuple[dict, dict]:
    """Tile sizes ``dict(BM=queries, BN=keys)`` of the query-block kernels (forward, dq) and
    of the key-block kernel (dk, dv)."""
    for widest, tile in NARROW_TILES:
        if bandwidth <= widest:
            return dict(BM=_BLOCK_M, BN=tile), dict(BM=tile, BN=_BLOCK_N)
    wide = dict(BM=_BLOCK_M, BN=_BLOCK_N)
    return wide, wide


def _merged_tiles(bandwidth: int) -> dict | None:
    """The merged backward kernel's ``dict(B=positions per program, TQ=query tile of its dk/dv
    loop, TK=key tile of its dq loop)``, or None where ``MERGED_BACKWARD`` keeps two kernels.
    Its programs own as many queries as the dq kernel's (``_BLOCK_M``) and step by the tile
    the other two kernels take across the band."""
    q_tiles, kv_tiles = _tiles(bandwidth)
    narrow = q_tiles["BN"] != _BLOCK_N or kv_tiles["BM"] != _BLOCK_M
    if not MERGED_BACKWARD["narrow" if narrow else "wide"]:
        return None
    step = q_tiles["BN"] if narrow else _BLOCK_N
    return dict(B=_BLOCK_M, TQ=min(step, _BLOCK_M), TK=min(step, _BLOCK_M))


def near_forward(q, k, v, key_padding_mask, bandwidth, causal, dropout_p, seed, blend=None):
    """The near field's forward kernel: ``(out, saved)``; ``saved`` is what ``near_backward``
    needs (``near_saved``).

    ``blend`` = (y, far fields, coeffs), for the fused FMM forward: the kernel also writes
    y = coeffs[0] * out + sum_f coeffs[f] * far_f (1 to 3 far fields, computed first, laid out
    like out; coeffs contiguous float32 (1 + fields, heads, head_dim_v))."""
    batch, heads, seq, dim = q.shape
    dim_v = v.shape[-1]
    bh = batch * heads
    out = empty_like_layout(q, dim_v)
    lse = torch.empty(bh, seq, device=q.device, dtype=torch.float32)
    saved = near_saved(q, k, v, key_padding_mask, out, lse, bandwidth, causal, dropout_p, seed)
    (_, _, _, mask, _, _), cfg, (_, smb, smt, _, _) = saved
    sm_scale = 1.0 / math.sqrt(dim)
    tiles, _ = _tiles(bandwidth)
    blend_args, n_far = (q, q, q, q, q), 0  # never read without a blend
    if blend is not None:
        y, fars, coeffs = blend
        n_far = len(fars)
        like_out = (out.shape, out.stride(), out.dtype, out.device)
        if not 1 <= n_far <= 3 or any(
            (t.shape, t.stride(), t.dtype, t.device) != like_out for t in (y, *fars)
        ):
            raise ValueError(
                "near_forward: blend takes 1-3 far fields and y laid out like out "
                "(shape, strides, dtype, device)"
            )
        expected = (n_far + 1, heads, dim_v)
        if coeffs.dtype != torch.float32 or tuple(coeffs.shape) != expected:
            raise ValueError(f"near_forward: blend coeffs must be float32 {expected}")
        if not coeffs.is_contiguous():
            raise ValueError("near_forward: blend coeffs must be contiguous")
        blend_args = (*fars, *(fars[0],) * (3 - n_far), coeffs, y)
    launch(
        _band_fwd_kernel, (cdiv(seq, tiles["BM"]), bh),
        q, k, v, mask, out, lse, *blend_args, heads, seq, bandwidth, dim, dim_v,
        sm_scale * _LOG2E, seed, dropout_p, *strides(q), *strides(k), *strides(v),
        *strides(out), smb, smt, **cfg, **tiles, BLEND=n_far, **LAUNCH["fwd"],
    )  # fmt: skip
    return out, saved


def near_backward(saved, dout, grads=None):
    """dq, dk, dv of the near field (``saved`` from ``near_forward``); with ``grads`` = (dq,
    dk, dv) the kernels add to those tensors instead (the fused FMM backward)."""
    (q, k, v, mask, out, lse), cfg, (bandwidth, smb, smt, dropout_p, seed) = saved
    batch, heads, seq, dim = q.shape
    dim_v = v.shape[-1]
    bh = batch * heads
    sm_scale = 1.0 / math.sqrt(dim)
    accumulate = grads is not None
    if grads is None:
        grads = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dq, dk, dv = grads
    if not offsets_fit(dout):  # 32-bit offsets inside a (batch, head)
        dout = dout.contiguous()
    merged = _merged_tiles(bandwidth)
    if merged is not None:
        launch(
            _band_bwd_kernel, (cdiv(seq, merged["B"]), bh),
            q, k, v, mask, out, dout, lse, dq, dk, dv, heads, seq, bandwidth, dim, dim_v,
            sm_scale * _LOG2E, sm_scale, seed, dropout_p,
            *strides(q), *strides(k), *strides(v), *strides(out), *strides(dout),
            *strides(dq), *strides(dk), *strides(dv), smb, smt,
            **cfg, **merged, ACCUMULATE=accumulate, **LAUNCH["bwd"],
        )  # fmt: skip
        return dq, dk, dv
    delta = torch.empty_like(lse)
    q_tiles, kv_tiles = _tiles(bandwidth)
    launch(
        _band_dq_kernel, (cdiv(seq, q_tiles["BM"]), bh),
        q, k, v, mask, out, dout, lse, delta, dq, heads, seq, bandwidth, dim, dim_v,
        sm_scale * _LOG2E, sm_scale, seed, dropout_p,
        *strides(q), *strides(k), *strides(v), *strides(out), *strides(dout), *strides(dq),
        smb, smt, **cfg, **q_tiles, ACCUMULATE=accumulate, **LAUNCH["dq"],
    )  # fmt: skip
    launch(
        _band_dkv_kernel, (cdiv(seq, kv_tiles["BN"]), bh),
        q, k, v, mask, dout, lse, delta, dk, dv, heads, seq, bandwidth, dim, dim_v,
        sm_scale * _LOG2E, sm_scale, seed, dropout_p,
        *strides(q), *strides(k), *strides(v), *strides(dout), *strides(dk), *strides(dv),
        smb, smt, **cfg, **kv_tiles, ACCUMULATE=accumulate, **LAUNCH["dkv"],
    )  # fmt: skip
    return dq, dk, dv


class _BandAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, bandwidth, causal, dropout_p, seed):
        out, saved = near_forward(q, k, v, key_padding_mask, bandwidth, causal, dropout_p, seed)
        ctx.save_for_backward(*saved[0])
        ctx.rest = saved[1:]
        return out

    @staticmethod
    def backward(ctx, dout):
        dq, dk, dv = near_backward((ctx.saved_tensors, *ctx.rest), dout)
        return dq, dk, dv, None, None, None, None, None


def near_arguments(q, bandwidth, dropout_p, seed):
    """(bandwidth, dropout_p, seed) as the kernels take them, or None for an uncovered case."""
    seq = q.shape[2]
    # A band wider than the sequence is the whole sequence; keeps the int32 loop bounds small.
    bandwidth = min(int(bandwidth), seq)
    dropout_p = float(dropout_p)
    if dropout_p > 0.0:
        if seq * 2 * bandwidth + 2 * bandwidth >= 2**31:
            return None  # the Philox counter i * 2w + (j - i + w) must fit in int32
        if seed is None:
            seed = int(torch.randint(0, 2**30, (1,)).item())
    else:
        seed = 0
    return bandwidth, dropout_p, seed


def band_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bandwidth: int,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    seed: int | None = None,
) -> torch.Tensor | None:
    """The near field through the Triton kernels, or None for a case they do not cover.

    ``dropout_p > 0``: inverted dropout of the probabilities with a Philox stream keyed by
    ``seed`` (drawn from torch's CPU generator when None, so ``torch.manual_seed`` repeats it).
    """
    if not supported(q, k, v) or q.shape[2] == 0:
        return None
    args = near_arguments(q, bandwidth, dropout_p, seed)
    if args is None:
        return None
    bandwidth, dropout_p, seed = args
    return _BandAttention.apply(q, k, v, key_padding_mask, bandwidth, bool(causal), dropout_p, seed)


def dropout_keep_matrix(
    seq: int, bandwidth: int, dropout_p: float, seed: int, device: torch.device
) -> torch.Tensor:
    """The (seq x seq) bool matrix of kept probabilities that ``seed`` gives (batch * head
    index 0; index n uses ``seed + n``). For tests only: it is quadratic."""
    bandwidth = min(int(bandwidth), seq)
    out = torch.empty(seq, seq, device=device, dtype=torch.float32)
    grid = (cdiv(seq, _BLOCK_M), cdiv(seq, _BLOCK_N))
    launch(
        _dropout_keep_kernel,
        grid,
        out,
        seed,
        seq,
        bandwidth,
        float(dropout_p),
        BM=_BLOCK_M,
        BN=_BLOCK_N,
    )
    return out > 0.5


def band_attention_flash(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bandwidth: int,
    causal: bool = False,
    dropout_p: float = 0.0,
) -> torch.Tensor | None:
    """The near field through PyTorch's FlashAttention-2 with a window (dropout supported).

    ``aten._flash_attention_forward`` takes (batch, seq, heads, head_dim) and a window
    [i - left, i + right]; the band |i - j| < w is left = right = w - 1 (causal: right = 0).
    It is differentiable through autograd. None when the build lacks the window arguments or
    the inputs do not suit it (fp16/bf16, head_dim a multiple of 8 up to 256, equal head dims).
    """
    if q.dtype not in (torch.float16, torch.bfloat16) or q.shape[-1] != v.shape[-1]:
        return None
    if q.shape[-1] % 8 != 0 or q.shape[-1] > 256 or q.shape[2] == 0:
        return None
    seq = q.shape[2]
    left = min(int(bandwidth), seq) - 1
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # (batch, seq, heads, head_dim)
    try:
        out = torch.ops.aten._flash_attention_forward(
            qt,
            kt,
            vt,
            None,
            None,
            seq,
            seq,
            float(dropout_p),
            bool(causal),
            False,
            scale=1.0 / math.sqrt(q.shape[-1]),
            window_size_left=left,
            window_size_right=0 if causal else left,
        )[0]
    except (RuntimeError, TypeError):
        return None
    return out.transpose(1, 2)
