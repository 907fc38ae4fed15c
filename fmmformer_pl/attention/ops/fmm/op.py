"""The whole FMM attention core on the GPU as one autograd node: near field, far fields, blend.

    y = c_0 * near(q, k, v) + sum_l c_l * far_l(q, k, v)        (fields: (batch, heads, seq, dv))

with c ``(n_fields, heads, head_dim)`` float32 coefficients (``Blend.coefficients``). The
kernels are those of ``ops/near_field``, ``ops/far_field`` and ``ops/blend``, or for a short
bidirectional sequence those of ``ops/short``; what fusing the three autograd nodes into one
saves is the glue between them: dq, dk, dv are allocated once, the near field's backward
writes them and each far-field group's adds to them, and two autograd nodes fewer. Inputs are
validated by the caller (``attention/dispatch.py``). The reference is ``naive.py``.

``fmm_forward`` / ``fmm_backward`` are the two halves; the eager path wraps them in an
``autograd.Function`` (``fmm_attention_kernel``, the entry), ``custom_op.py`` in a
``torch.library`` custom op for ``torch.compile``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ...feature_maps import kernel_codes
from ..blend.op import MAX_FIELDS, blend_backward, blend_forward
from ..common.host import empty_like_layout, supported
from ..far_field.op import (
    FarSaved,
    FarTensors,
    blend_fusable,
    far_backward,
    far_forward,
    map_groups,
)
from ..near_field.op import (
    NearArgs,
    NearSaved,
    NearTensors,
    near_arguments,
    near_backward,
    near_forward,
)
from ..plan import DEFAULT_PLAN, KernelPlan
from ..short.op import ShortSaved, ShortTensors, short_applies, short_backward, short_forward


class Part(NamedTuple):
    """One group of fields of the fused forward and what its backward needs."""

    kind: str  # "near", "far" (one kernel call's maps) or "short" (every field)
    saved: NearSaved | FarSaved | ShortSaved
    n_fields: int


def takes_short(q, near_args, phi_codes, causal, plan: KernelPlan, feature_normalize, eps):
    """Whether the fused forward takes the short path (``short_applies``). Its kernels lack
    the released LM code's far-field options (feature normalisation, eps), which take the
    general path (the far-field kernels)."""
    released = bool(feature_normalize) or bool(eps)
    return not released and short_applies(q, near_args, phi_codes, causal, plan)


def fmm_forward(q, k, v, coeffs, mask, near_args: NearArgs | None, causal, phi_codes, normalize,
                plan: KernelPlan, feature_normalize=False, eps=0.0):  # fmt: skip
    """``(y, fields, parts)``: the blended output, the fields (near first), and the ``Part``s.
    ``feature_normalize``, ``eps``: the far fields' options (``attention.far_field``).

    The blend is formed by the far kernels, from their outputs in registers and the near
    field, which then runs first (``blend_fusable``: the paper's r <= 2, and
    ``FusedPlan.far_forms_blend``); else by the near kernel, from its output in registers and
    the far fields, which then run first (``FusedPlan.near_forms_blend``); else by the blend
    kernel. The fields are stored either way (the backward needs them). A short
    bidirectional sequence in a small grid takes the short path instead (``takes_short``),
    its one part of kind "short"."""
    if takes_short(q, near_args, phi_codes, causal, plan, feature_normalize, eps):
        y, fields, saved = short_forward(
            q, k, v, coeffs, mask, near_args, phi_codes, normalize, plan
        )
        return y, fields, [Part("short", saved, len(fields))]
    far_blend = plan.fused.far_forms_blend(causal) and blend_fusable(phi_codes, causal, plan.far)
    near_blend = not far_blend and near_args is not None and plan.fused.near_forms_blend(causal)
    y = empty_like_layout(q, v.shape[-1]) if far_blend or near_blend else None
    near_part = None
    if near_args is not None and not near_blend:
        near_part = near_forward(q, k, v, mask, near_args, causal, plan.near)
    options = dict(feature_normalize=feature_normalize, eps=eps)
    if far_blend:
        near = None if near_part is None else near_part[0]
        blend = (y, near, coeffs)
        far_parts = [
            far_forward(q, k, v, mask, phi_codes, causal, normalize, plan, blend, **options)
        ]
    else:
        far_parts = [
            far_forward(q, k, v, mask, group, causal, normalize, plan, **options)
            for group in map_groups(phi_codes, causal, plan.far)
        ]
    fars = [out for outs, _ in far_parts for out in outs]
    if near_blend:
        near_part = near_forward(q, k, v, mask, near_args, causal, plan.near, (y, fars, coeffs))
    fields, parts = [], []
    if near_part is not None:
        fields.append(near_part[0])
        parts.append(Part("near", near_part[1], 1))
    fields.extend(fars)
    parts.extend(Part("far", saved, len(outs)) for outs, saved in far_parts)
    if y is None:
        y = blend_forward(fields, coeffs, plan.blend)
    return y, fields, parts


def fmm_backward(dy, coeffs, fields, parts: list[Part], plan: KernelPlan):
    """``(dq, dk, dv, dcoeffs)`` for the output gradient dy (``fields``, ``parts`` from
    ``fmm_forward``).

    The far fields' state pass reads dy and scales it by their coefficients (one read of dy
    for both maps, no c_f * dy written per far field); the blend backward writes only the near
    field's gradient, and sums the far fields' dcoeffs where they are not summed in the state
    pass (``FusedPlan.dc_in_state_pass``). A "short" part: ``short_backward``."""
    if parts[0].kind == "short":
        return short_backward(dy, coeffs, fields, parts[0].saved)
    causal = next(p.saved.settings.causal for p in parts if p.kind == "far")
    in_state = plan.fused.dc_in_state_pass(causal)
    has_near = parts[0].kind == "near"
    dc = torch.zeros_like(coeffs)
    blended = slice(0, int(has_near) if in_state else len(fields))
    dnear = None
    if blended.stop:
        grads, _ = blend_backward(
            fields[blended], coeffs[blended], dy, plan.blend, dc[blended], n_grads=int(has_near)
        )
        dnear = grads[0] if has_near else None
    grads, first = None, 0
    for part in parts:
        rows = slice(first, first + part.n_fields)
        if part.kind == "near":
            grads = near_backward(part.saved, dnear, grads)
        else:  # coeffs rows (maps, heads, head_dim) float32
            dscales = dc[rows] if in_state else None
            grads = far_backward(part.saved, [dy], grads, scales=coeffs[rows], dscales=dscales)
        first += part.n_fields
    dq, dk, dv = grads
    return dq, dk, dv, dc


class _SavedLayout(NamedTuple):
    """How one part's tensors sit in ``ctx.saved_tensors``."""

    kind: str
    n_tensors: int
    settings: object
    n_fields: int


def _part_tensors(part: Part) -> tuple:
    tensors = part.saved.tensors
    return tensors.flat() if part.kind == "far" else tuple(tensors)


def _part_from(kind, tensors, settings, n_fields) -> Part:
    if kind == "far":
        return Part(kind, FarSaved(FarTensors.from_flat(tensors), settings), n_fields)
    if kind == "near":
        return Part(kind, NearSaved(NearTensors(*tensors), settings), n_fields)
    return Part(kind, ShortSaved(ShortTensors(*tensors), settings), n_fields)


class FMMAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, coeffs, mask, near_args, causal, phi_codes, normalize, plan,
                feature_normalize, eps):  # fmt: skip
        y, fields, parts = fmm_forward(
            q, k, v, coeffs, mask, near_args, causal, phi_codes, normalize, plan,
            feature_normalize, eps,
        )  # fmt: skip
        # Tensors go through save_for_backward (autograd checks them for in-place changes);
        # each part keeps the count of its tensors and its settings.
        tensors, layout = [coeffs, *fields], []
        for part in parts:
            part_tensors = _part_tensors(part)
            layout.append(_SavedLayout(part.kind, len(part_tensors), part.saved.settings,
                                       part.n_fields))  # fmt: skip
            tensors.extend(part_tensors)
        ctx.save_for_backward(*tensors)
        ctx.layout, ctx.n_fields, ctx.plan = layout, len(fields), plan
        return y

    @staticmethod
    def backward(ctx, dy):
        coeffs, *rest = ctx.saved_tensors
        fields, rest = rest[: ctx.n_fields], rest[ctx.n_fields :]
        parts = []
        for entry in ctx.layout:
            part, rest = rest[: entry.n_tensors], rest[entry.n_tensors :]
            parts.append(_part_from(entry.kind, part, entry.settings, entry.n_fields))
        dq, dk, dv, dc = fmm_backward(dy, coeffs, fields, parts, ctx.plan)
        return dq, dk, dv, dc, *(None,) * 8


def fmm_arguments(q, k, v, coeffs, bandwidth, feature_maps, dropout_p):
    """``(kernel codes, clamped bandwidth or None)`` when the kernels cover this call, else
    None (plain Python on shapes, dtypes and strides: ``torch.compile`` traces it)."""
    names = list(feature_maps)
    codes = kernel_codes(names)
    if not codes:
        return None
    if not supported(q, k, v) or q.shape[2] == 0 or v.shape[-1] != q.shape[-1]:
        return None
    n_fields = len(names) + (bandwidth is not None)
    heads, dim = q.shape[1], q.shape[-1]
    if n_fields > MAX_FIELDS or tuple(coeffs.shape) != (n_fields, heads, dim):
        return None
    if bandwidth is not None:
        bandwidth = min(int(bandwidth), q.shape[2])
        if dropout_p > 0.0 and q.shape[2] * 2 * bandwidth + 2 * bandwidth >= 2**31:
            return None  # near_arguments: the dropout counter must fit in int32
    return codes, bandwidth


def fmm_attention_kernel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    coeffs: torch.Tensor,
    bandwidth: int | None,
    feature_maps,
    causal: bool = False,
    normalize: bool = True,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    plan: KernelPlan = DEFAULT_PLAN,
    feature_normalize: bool = False,
    eps: float = 0.0,
) -> torch.Tensor | None:
    """``coeffs[0] * near + sum_l coeffs[l] * far_l`` (no near field when bandwidth is None),
    or None for a case the kernels do not cover (the caller then runs the fields one by one).
    ``feature_normalize``, ``eps``: the far fields' options (``attention.far_field``).
    """
    args = fmm_arguments(q, k, v, coeffs, bandwidth, feature_maps, dropout_p)
    if args is None:
        return None
    codes, bandwidth = args
    near_args = None
    if bandwidth is not None:
        near_args = near_arguments(q, bandwidth, dropout_p, None)
    return FMMAttentionFunction.apply(
        q, k, v, coeffs.float().contiguous(), key_padding_mask, near_args, bool(causal), codes,
        bool(normalize), plan, bool(feature_normalize), float(eps),
    )  # fmt: skip
