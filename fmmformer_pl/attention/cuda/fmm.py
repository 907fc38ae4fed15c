"""The whole FMM attention core on the GPU as one autograd node: near field, far fields, blend.

    y = c_0 * near(q, k, v) + sum_l c_l * far_l(q, k, v)        (fields: (batch, heads, seq, dv))

with c ``(n_fields, heads, head_dim)`` float32 coefficients (``Blend.coefficients``). The
kernels are those of ``near.py``, ``far.py`` and ``blend.py``; what fusing the three autograd
nodes into one saves is the glue between them: the gradients of q, k and v are allocated once,
each field's backward kernels adding to them (no element-wise sum of three gradients per
input), and two autograd nodes fewer. On our H200 host one launch or autograd node costs
~0.1 ms of Python, as much as a kernel over 64K tokens, so the glue was a third of a step.
dq, dk, dv are allocated once: the near field's backward writes them, each far-field group's
adds to them. Inputs are validated by the caller (``FMMAttention._fused``).

``fmm_forward`` / ``fmm_backward`` are the two halves; the eager path wraps them in an
``autograd.Function``, ``fmm_op.py`` in a ``torch.library`` custom op for ``torch.compile``.
"""

from __future__ import annotations

import torch

from ._common import empty_like_layout, supported
from .blend import MAX_FIELDS, blend_backward, blend_forward
from .far import PHI_CODES, blend_fusable, far_backward, far_forward, map_groups
from .fmm_short import short_applies, short_backward, short_forward
from .near import near_arguments, near_backward, near_forward

# Per mode, whether the far-field forward kernels form the blend (``fmm_forward``), and
# where the far fields' blend-coefficient gradients (sum dy * out_m) are summed: in the far
# state pass, which holds dy and out_m already (the blend backward then reads dy and the near
# field only), or in the blend backward, which then reads every field. Measured on the H200,
# fmm r = 2 at 64K, fwd+bwd as CUDA-graph replays (docs/gpu.md): the blend in the bidirectional
# forward kernel, 1.578 against 1.631 ms; in the causal walk it spills (100 bytes, +20%
# instructions per chunk at sm_90a: bench/kernel_sass.py) and the walk took 0.297 against
# 0.201 ms. The dcoeffs in the causal state pass (4 warps): 1.774 against 1.808 ms; in the
# bidirectional one (8 warps, a 128-register cap) the column sums spill 192 bytes per chunk:
# 1.672 against 1.631 ms.
BLEND_IN_FAR_FORWARD = {"causal": False, "bidirectional": True}
DC_IN_STATE_PASS = {"causal": True, "bidirectional": False}
# Where the far kernels do not form the blend: whether the near field's forward kernel does,
# run after the far fields (it reads them back, as the blend kernel would, but from inside a
# kernel that is not bandwidth-bound, and one launch fewer), or the blend kernel. H200, 64K,
# as above (bench/far_tune.py --graph --fields layer): causal
# 1.762 against 1.807 ms; bidirectional with the far kernels' blend off, 1.589 against 1.632
# (and 1.597-1.602 with it on: the two fused blends are even there).
BLEND_IN_NEAR_FORWARD = {"causal": True, "bidirectional": True}


def _mode(causal) -> str:
    return "causal" if causal else "bidirectional"


def fmm_forward(q, k, v, coeffs, mask, near_args, causal, phi_codes, normalize):
    """``(y, fields, parts)``: the blended output, the fields (near first), and per field
    group ``(kind, saved, n_fields)`` with ``saved`` what its backward needs.

    The blend is formed by the far kernels, from their outputs in registers and the near
    field, which then runs first (``far.blend_fusable``: the paper's r <= 2, and
    ``BLEND_IN_FAR_FORWARD``); else by the near kernel, from its output in registers and the
    far fields, which then run first (``BLEND_IN_NEAR_FORWARD``); else by the blend kernel.
    The fields are stored either way (the backward needs them). A short bidirectional
    sequence in a small grid takes the short path instead (``fmm_short.short_applies``: a
    state kernel, then one kernel for all fields and the blend), its one part of kind
    "short"."""
    if short_applies(q, near_args, phi_codes, causal):
        y, fields, saved = short_forward(q, k, v, coeffs, mask, near_args, phi_codes, normalize)
        return y, fields, [("short", saved, len(fields))]
    mode = _mode(causal)
    far_blend = BLEND_IN_FAR_FORWARD[mode] and blend_fusable(phi_codes, causal)
    near_blend = not far_blend and near_args is not None and BLEND_IN_NEAR_FORWARD[mode]
    y = empty_like_layout(q, v.shape[-1]) if far_blend or near_blend else None
    near_part = None
    if near_args is not None and not near_blend:
        near_part = _near(q, k, v, mask, near_args, causal)
    if far_blend:
        near = None if near_part is None else near_part[0]
        far_parts = [far_forward(q, k, v, mask, phi_codes, causal, normalize, (y, near, coeffs))]
    else:
        far_parts = [
            far_forward(q, k, v, mask, group, causal, normalize)
            for group in map_groups(phi_codes, causal)
        ]
    fars = [out for outs, _ in far_parts for out in outs]
    if near_blend:
        near_part = _near(q, k, v, mask, near_args, causal, (y, fars, coeffs))
    fields, parts = [], []
    if near_part is not None:
        fields.append(near_part[0])
        parts.append(("near", near_part[1], 1))
    fields.extend(fars)
    parts.extend(("far", saved, len(outs)) for outs, saved in far_parts)
    if y is None:
        y = blend_forward(fields, coeffs)
    return y, fields, parts


def _near(q, k, v, mask, near_args, causal, blend=None):
    bandwidth, dropout_p, seed = near_args
    return near_forward(q, k, v, mask, bandwidth, causal, dropout_p, seed, blend)


def fmm_backward(dy, coeffs, fields, parts):
    """``(dq, dk, dv, dcoeffs)`` for the output gradient dy (``fields``, ``parts`` from
    ``fmm_forward``).

    The far fields' state pass reads dy and scales it by their coefficients (one read of dy
    for both maps, no c_f * dy written per far field); the blend backward writes only the near
    field's gradient, and sums the far fields' dcoeffs where they are not summed in the state
    pass (``DC_IN_STATE_PASS``). A "short" part: ``fmm_short.short_backward`` (a reverse-state kernel, then one kernel
    for all the gradients)."""
    if parts[0][0] == "short":
        return short_backward(dy, coeffs, fields, parts[0][1])
    causal = next(saved[1][1] for kind, saved, _ in parts if kind == "far")
    in_state = DC_IN_STATE_PASS[_mode(causal)]
    has_near = parts[0][0] == "near"
    dc = torch.zeros_like(coeffs)
    blended = slice(0, int(has_near) if in_state else len(fields))
    dnear = None
    if blended.stop:
        grads, _ = blend_backward(
            fields[blended], coeffs[blended], dy, dc[blended], n_grads=int(has_near)
        )
        dnear = grads[0] if has_near else None
    grads, first = None, 0
    for kind, saved, n_fields in parts:
        rows = slice(first, first + n_fields)
        if kind == "near":
            grads = near_backward(saved, dnear, grads)
        else:  # coeffs rows (maps, heads, head_dim) float32
            dscales = dc[rows] if in_state else None
            grads = far_backward(saved, [dy], grads, scales=coeffs[rows], dscales=dscales)
        first += n_fields
    dq, dk, dv = grads
    return dq, dk, dv, dc


class _FMMAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, coeffs, mask, near_args, causal, phi_codes, normalize):
        y, fields, parts = fmm_forward(
            q, k, v, coeffs, mask, near_args, causal, phi_codes, normalize
        )
        # Tensors go through save_for_backward (autograd checks them for in-place changes);
        # each part keeps the count of its tensors and its settings.
        tensors, layout = [coeffs, *fields], []
        for kind, saved, n_fields in parts:
            part_tensors, settings = saved[0], saved[1:]
            layout.append((kind, len(part_tensors), settings, n_fields))
            tensors.extend(part_tensors)
        ctx.save_for_backward(*tensors)
        ctx.layout, ctx.n_fields = layout, len(fields)
        return y

    @staticmethod
    def backward(ctx, dy):
        coeffs, *rest = ctx.saved_tensors
        fields, rest = rest[: ctx.n_fields], rest[ctx.n_fields :]
        parts = []
        for kind, n_tensors, settings, n_fields in ctx.layout:
            part, rest = rest[:n_tensors], rest[n_tensors:]
            parts.append((kind, (part, *settings), n_fields))
        dq, dk, dv, dc = fmm_backward(dy, coeffs, fields, parts)
        return dq, dk, dv, dc, None, None, None, None, None


def fmm_arguments(q, k, v, coeffs, bandwidth, feature_maps, dropout_p):
    """``(phi_codes, clamped bandwidth or None)`` when the kernels cover this call, else None
    (plain Python on shapes, dtypes and strides: ``torch.compile`` traces it)."""
    names = list(feature_maps)
    if not names or not all(isinstance(n, str) and n in PHI_CODES for n in names):
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
    return tuple(PHI_CODES[n] for n in names), bandwidth


def fmm_attention_triton(
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
) -> torch.Tensor | None:
    """``coeffs[0] * near + sum_l coeffs[l] * far_l`` (no near field when bandwidth is None),
    or None for a case the kernels do not cover (the caller then runs the fields one by one).
    """
    args = fmm_arguments(q, k, v, coeffs, bandwidth, feature_maps, dropout_p)
    if args is None:
        return None
    codes, bandwidth = args
    near_args = None
    if bandwidth is not None:
        near_args = near_arguments(q, bandwidth, dropout_p, None)
    return _FMMAttention.apply(
        q,
        k,
        v,
        coeffs.float().contiguous(),
        key_padding_mask,
        near_args,
        bool(causal),
        codes,
        bool(normalize),
    )
