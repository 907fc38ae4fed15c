"""Near field on the GPU: banded softmax attention as a sliding-window flash kernel (host code).

Shapes: q, k ``(batch, heads, seq, head_dim)``, v ``(batch, heads, seq, head_dim_v)``,
key_padding_mask bool ``(batch, seq)`` (True = padding). Semantics are exactly those of the
reference (``naive.py``):

    out_i = sum_{j in V(i)} exp(s_ij) v_j / sum_{j in V(i)} exp(s_ij),  s_ij = q_i.k_j / sqrt(d)

with V(i) the non-padding keys of the band ``|i - j| < w`` (causal: ``i - w < j <= i``), and
out_i = 0 (gradient 0) where V(i) is empty.

One program owns a block of queries and visits only the key tiles its band reaches
(``NearPlan.tiles``: narrower tiles across narrow bands). The backward recomputes the
probabilities from the saved log-sum-exp, once per query block for dq and once per key block
for dk and dv (no atomics). Memory: O(seq) extra (the log-sum-exp and delta, one float32 per
position each).

Dropout (``dropout_p > 0``, training) is in the kernels: a Philox number per (head, i, j),
regenerated in the backward pass, so nothing of size (seq x band) is stored.

Entry: ``near_field_kernel`` (what ``attention/dispatch.py`` calls).
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
    offsets_fit,
    padding_as_uint8,
    strides,
    supported,
)
from ..common.launch import launch
from ..plan import DEFAULT_PLAN, KernelPlan, NearPlan
from .kernels import band_dkv_kernel, band_dq_kernel, band_fwd_kernel


class NearArgs(NamedTuple):
    """The near field's call arguments as the kernels take them (``near_arguments``)."""

    bandwidth: int
    dropout_p: float
    seed: int | torch.Tensor  # an int (eager), or a one-element tensor the kernels load


class NearTensors(NamedTuple):
    """The tensors the backward reads (what autograd saves)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor  # uint8 padding mask, or q as a never-read stand-in
    out: torch.Tensor
    lse: torch.Tensor  # (batch * heads, seq) float32, base 2


class NearSettings(NamedTuple):
    args: NearArgs
    causal: bool
    mask_strides: tuple[int, int]
    constexprs: dict
    plan: NearPlan


class NearSaved(NamedTuple):
    """What ``near_backward`` needs, as ``near_forward`` returns it."""

    tensors: NearTensors
    settings: NearSettings


def near_saved(q, k, v, key_padding_mask, out, lse, args: NearArgs, causal, plan: NearPlan):
    """``NearSaved`` from the tensors: ``near_forward`` builds it, and a caller that kept only
    the tensors (the custom op of ``ops/fmm``) rebuilds it."""
    mask, smb, smt = padding_as_uint8(key_padding_mask, q)
    constexprs = dict(
        HAS_MASK=key_padding_mask is not None,
        CAUSAL=causal,
        DROPOUT=args.dropout_p > 0.0,
        SEED_PTR=isinstance(args.seed, torch.Tensor),
        BD=block_dim(q.shape[-1]),
        BDV=block_dim(v.shape[-1]),
        PREC=fp32_precision(q.dtype),
    )
    settings = NearSettings(args, causal, (smb, smt), constexprs, plan)
    return NearSaved(NearTensors(q, k, v, mask, out, lse), settings)


def near_forward(q, k, v, key_padding_mask, args: NearArgs, causal, plan: NearPlan, blend=None):
    """The near field's forward kernel: ``(out, saved)`` (``NearSaved``).

    ``blend`` = (y, far fields, coeffs), for the fused FMM forward: the kernel also writes
    y = coeffs[0] * out + sum_f coeffs[f] * far_f (1 to 3 far fields, computed first, laid out
    like out; coeffs contiguous float32 (1 + fields, heads, head_dim_v))."""
    batch, heads, seq, dim = q.shape
    dim_v = v.shape[-1]
    bh = batch * heads
    out = empty_like_layout(q, dim_v)
    lse = torch.empty(bh, seq, device=q.device, dtype=torch.float32)
    saved = near_saved(q, k, v, key_padding_mask, out, lse, args, causal, plan)
    mask = saved.tensors.mask
    smb, smt = saved.settings.mask_strides
    sm_scale = 1.0 / math.sqrt(dim)
    tiles, _ = plan.tiles(args.bandwidth)
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
        band_fwd_kernel, (cdiv(seq, tiles["BM"]), bh),
        q, k, v, mask, out, lse, *blend_args, heads, seq, args.bandwidth, dim, dim_v,
        sm_scale * LOG2E, args.seed, args.dropout_p, *strides(q), *strides(k), *strides(v),
        *strides(out), smb, smt, **saved.settings.constexprs, **tiles, BLEND=n_far,
        **plan.fwd.options(),
    )  # fmt: skip
    return out, saved


def near_backward(saved: NearSaved, dout, grads=None):
    """dq, dk, dv of the near field; with ``grads`` = (dq, dk, dv) the kernels add to those
    tensors instead (the fused FMM backward)."""
    q, k, v, mask, out, lse = saved.tensors
    (bandwidth, dropout_p, seed), _, (smb, smt), cfg, plan = saved.settings
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
    delta = torch.empty_like(lse)
    q_tiles, kv_tiles = plan.tiles(bandwidth)
    launch(
        band_dq_kernel, (cdiv(seq, q_tiles["BM"]), bh),
        q, k, v, mask, out, dout, lse, delta, dq, heads, seq, bandwidth, dim, dim_v,
        sm_scale * LOG2E, sm_scale, seed, dropout_p,
        *strides(q), *strides(k), *strides(v), *strides(out), *strides(dout), *strides(dq),
        smb, smt, **cfg, **q_tiles, ACCUMULATE=accumulate, **plan.dq.options(),
    )  # fmt: skip
    launch(
        band_dkv_kernel, (cdiv(seq, kv_tiles["BN"]), bh),
        q, k, v, mask, dout, lse, delta, dk, dv, heads, seq, bandwidth, dim, dim_v,
        sm_scale * LOG2E, sm_scale, seed, dropout_p,
        *strides(q), *strides(k), *strides(v), *strides(dout), *strides(dk), *strides(dv),
        smb, smt, **cfg, **kv_tiles, ACCUMULATE=accumulate, **plan.dkv.options(),
    )  # fmt: skip
    return dq, dk, dv


class BandAttention(torch.autograd.Function):
    """The near field as one autograd node: (q, k, v) -> out."""

    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, args, causal, plan):
        out, saved = near_forward(q, k, v, key_padding_mask, args, causal, plan)
        ctx.save_for_backward(*saved.tensors)
        ctx.settings = saved.settings
        return out

    @staticmethod
    def backward(ctx, dout):
        saved = NearSaved(NearTensors(*ctx.saved_tensors), ctx.settings)
        dq, dk, dv = near_backward(saved, dout)
        return dq, dk, dv, None, None, None, None


def near_arguments(q, bandwidth, dropout_p, seed) -> NearArgs | None:
    """``NearArgs`` as the kernels take them, or None for an uncovered case."""
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
    return NearArgs(bandwidth, dropout_p, seed)


def near_field_kernel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bandwidth: int,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    seed: int | torch.Tensor | None = None,
    plan: KernelPlan = DEFAULT_PLAN,
) -> torch.Tensor | None:
    """The near field through the Triton kernels, or None for a case they do not cover.

    ``dropout_p > 0``: inverted dropout of the probabilities with a Philox stream keyed by
    ``seed`` (drawn from torch's CPU generator when None, so ``torch.manual_seed`` repeats it;
    a one-element tensor is loaded by the kernels). Inputs are validated by the caller.
    """
    if not supported(q, k, v) or q.shape[2] == 0:
        return None
    args = near_arguments(q, bandwidth, dropout_p, seed)
    if args is None:
        return None
    return BandAttention.apply(q, k, v, key_padding_mask, args, bool(causal), plan.near)
