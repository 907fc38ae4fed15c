"""The blend on the GPU: ``y = sum_f c_f * field_f`` in one Triton pass each way (host code).

Shapes: every field ``(batch, heads, seq, head_dim)`` (the same shape and strides), the
coefficients c ``(n_fields, heads, head_dim)`` float32: each field's weight per head and lane,
already multiplied out (``Blend.coefficients`` builds them from its scalar / head / channel
weights, so the weights' own gradients follow by autograd from dc).

    forward:  y = sum_f c_f * field_f                        (float32 sums, one rounding)
    backward: dfield_f = c_f * dy,   dc_f = sum_{batch, seq} dy * field_f

PyTorch runs the blend as a few element-wise kernels forward and a product and a reduction
per weight backward, each a full pass over a (seq x dim) tensor; here it is one read of the
fields forward and one read of dy and the fields backward. The reference is ``naive.py``.
The fused FMM kernels form the same sum term for term (``tiles.blend_add``).

Entry: ``blend_kernel``.
"""

from __future__ import annotations

import torch

from ..common.host import block_dim, cdiv, offsets_fit
from ..common.launch import launch
from ..plan import DEFAULT_PLAN, BlendPlan, KernelPlan
from .kernels import blend_bwd_kernel, blend_fwd_kernel

# Most fields one call takes (the near field and three far fields).
MAX_FIELDS = 4


def _strides(t: torch.Tensor):
    return tuple(t.stride())


def blend_forward(fields, coeffs, plan: BlendPlan):
    """y = sum_f coeffs[f] * fields[f] (fields of one shape and layout, coeffs float32)."""
    f0 = fields[0]
    batch, heads, seq, dim = f0.shape
    ptrs = list(fields) + [f0] * (MAX_FIELDS - len(fields))  # unused slots: stand-ins
    y = torch.empty_like(f0)
    grid = (cdiv(seq, plan.block_t), batch * heads)
    launch(
        blend_fwd_kernel, grid,
        *ptrs, coeffs, y, heads, seq, dim, *_strides(f0), *_strides(y),
        NF=len(fields), BT=plan.block_t, BD=block_dim(dim), **plan.fwd.options(),
    )  # fmt: skip
    return y


def blend_backward(fields, coeffs, dy, plan: BlendPlan, dc=None, n_grads=None):
    """(the fields' gradients, dcoeffs) of ``blend_forward`` for the output gradient dy.

    For the fused FMM backward: with ``dc`` (zeros, like coeffs) the dcoeffs are added to it;
    ``n_grads``: only the first n_grads fields' gradients are written and returned (the far
    fields' kernels scale dy by their coefficients themselves)."""
    f0 = fields[0]
    batch, heads, seq, dim = f0.shape
    if not offsets_fit(dy, plan.block_t):
        dy = dy.contiguous()
    n_grads = len(fields) if n_grads is None else n_grads
    grads = [torch.empty_like(f) for f in fields[:n_grads]]
    if dc is None:
        dc = torch.zeros_like(coeffs)
    pad = [f0] * (MAX_FIELDS - len(fields))
    grad_ptrs = grads + [f0] * (MAX_FIELDS - len(grads))  # stand-ins where none is written
    tiles = cdiv(seq, plan.block_t)
    per_program = min(plan.bwd_tiles, tiles)
    grid = (cdiv(tiles, per_program), batch * heads)
    launch(
        blend_bwd_kernel, grid,
        *fields, *pad, *grad_ptrs, coeffs, dy, dc, heads, seq, dim, per_program,
        *_strides(f0), *_strides(dy), NF=len(fields), BT=plan.block_t, BD=block_dim(dim),
        GRADS=n_grads, **plan.bwd.options(),
    )  # fmt: skip
    return grads, dc


class BlendFields(torch.autograd.Function):
    @staticmethod
    def forward(ctx, coeffs, plan, *fields):
        ctx.save_for_backward(coeffs, *fields)
        ctx.plan = plan
        return blend_forward(fields, coeffs, plan)

    @staticmethod
    def backward(ctx, dy):
        coeffs, *fields = ctx.saved_tensors
        grads, dc = blend_backward(fields, coeffs, dy, ctx.plan)
        return (dc, None, *grads)


def blend_kernel(
    fields: list[torch.Tensor], coeffs: torch.Tensor, plan: KernelPlan = DEFAULT_PLAN
) -> torch.Tensor | None:
    """``sum_f coeffs[f] * fields[f]`` (coeffs ``(n_fields, heads, head_dim)``), or None for a
    case the kernel does not cover (then the caller computes it with PyTorch)."""
    if not fields or len(fields) > MAX_FIELDS:
        return None
    f0 = fields[0]
    if f0.dim() != 4 or f0.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return None
    if any(f.shape != f0.shape or f.stride() != f0.stride() or f.dtype != f0.dtype for f in fields):
        return None
    # The gradients are allocated like the fields (empty_like) and written with the fields'
    # strides: that holds for dense fields only (a sliced view's empty_like is contiguous).
    if torch.empty_like(f0).stride() != f0.stride() or not offsets_fit(f0, plan.blend.block_t):
        return None
    batch, heads, seq, dim = f0.shape
    if coeffs.shape != (len(fields), heads, dim) or dim > 256 or seq == 0:
        return None
    if batch * heads > 65535:
        return None
    return BlendFields.apply(coeffs.float().contiguous(), plan.blend, *fields)
