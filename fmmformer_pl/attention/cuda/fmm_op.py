"""The fused FMM attention (``fmm.py``) as ``torch.library`` custom ops, for ``torch.compile``.

Eager code runs ``fmm.py``'s ``autograd.Function`` (the least host work per call). Under
``torch.compile`` that Function, with its launch planning in Python, would break the graph at
every attention layer; these ops instead are opaque nodes with a schema, a fake (meta)
implementation giving every output's shape and strides, and a registered backward, so the
compiler traces the whole model around them in one graph.

    fmmformer::fmm_attention_fwd(q, k, v, coeffs, mask?, bandwidth, dropout_p, seed, causal,
                                 phi_codes, normalize) -> [y, *fields, *extras]
    fmmformer::fmm_attention_bwd(dy, q, k, v, coeffs, mask?, saved, ...) -> [dq, dk, dv, dc]

Outputs may not alias inputs or each other, so a saved tensor that the Function path keeps as
None or as a stand-in (no state for a one-segment causal pass, no denominators when
normalize=False) is an empty tensor here. ``extras``: the near field's log-sum-exp, then per
far-field group its denominators, its states and its stored features (``far.py``); for the
short path (``fmm_short.py``), the log-sum-exp, the denominators and the far states (per
segment, or the totals). ``bandwidth`` < 0: no near field.
The dropout seed is a one-element int64 tensor on the inputs' device, drawn in the traced code,
so every step of a compiled model draws a new one; the near-field kernels read it from device
memory (no host sync, and no CPU tensor in the graph, which would keep inductor from
CUDA-graphing the step). None without dropout.
"""

from __future__ import annotations

import torch

from ._common import empty_like_layout
from .far import _Plan, far_saved, map_groups
from .fmm import fmm_arguments, fmm_backward, fmm_forward
from .fmm_short import short_applies, short_saved, state_slots
from .near import near_saved

_NO_NEAR = -1


def _near_seed(seed: torch.Tensor | None, dropout_p: float) -> torch.Tensor | int:
    """The near kernels' seed argument: the seed tensor itself (they load it), or 0."""
    return seed if seed is not None and dropout_p > 0.0 else 0


def _extras(parts, q):
    """The saved tensors that are not inputs or fields, as op outputs (see the module doc)."""
    out = []
    for kind, saved, _ in parts:
        tensors = saved[0]
        if kind == "short":
            out.extend(tensors[4:7])  # lse, den (empty without normalize), states
        elif kind == "near":
            out.append(tensors[5])  # lse
        else:
            den, state, phi, outs = tensors[4], tensors[5], tensors[6], tensors[7:]
            out.append(q.new_empty(0) if den is outs[0] else den)
            out.append(q.new_empty(0) if state is None else state)
            out.append(phi)
    return out


def _rebuild_parts(q, k, v, mask, fields, extras, bandwidth, dropout_p, seed, causal, codes, norm):
    """``fmm_forward``'s parts from the op's saved tensors."""
    near_args = None if bandwidth == _NO_NEAR else (bandwidth, dropout_p, seed)
    # The forward's choice, read off what it saved (not decided again: fmm_short.SHORT may
    # have changed since): the short path keeps three extras, the general path with a near
    # field at least four (the log-sum-exp, then three per far-field group).
    if near_args is not None and len(extras) == 3:
        lse, den, states = extras
        saved = short_saved(q, k, v, mask, lse, den, states, near_args, codes, norm)
        return [("short", saved, len(fields))]
    parts, fields, extras = [], list(fields), list(extras)
    if bandwidth != _NO_NEAR:
        near, lse = fields.pop(0), extras.pop(0)
        saved = near_saved(q, k, v, mask, near, lse, bandwidth, causal, dropout_p, seed)
        parts.append(("near", saved, 1))
    for group in map_groups(codes, causal):
        outs = [fields.pop(0) for _ in group]
        den, state, phi = extras.pop(0), extras.pop(0), extras.pop(0)
        den = outs[0] if den.numel() == 0 and not norm else den
        state = None if state.numel() == 0 else state
        saved = far_saved(q, k, v, mask, den, state, phi, outs, tuple(group), causal, norm)
        parts.append(("far", saved, len(outs)))
    return parts


@torch.library.custom_op("fmmformer::fmm_attention_fwd", mutates_args=())
def fmm_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    coeffs: torch.Tensor,
    mask: torch.Tensor | None,
    bandwidth: int,
    dropout_p: float,
    seed: torch.Tensor | None,
    causal: bool,
    phi_codes: list[int],
    normalize: bool,
) -> list[torch.Tensor]:
    near_args = None
    if bandwidth != _NO_NEAR:
        near_args = (bandwidth, dropout_p, _near_seed(seed, dropout_p))
    codes = tuple(phi_codes)
    y, fields, parts = fmm_forward(q, k, v, coeffs, mask, near_args, causal, codes, normalize)
    return [y, *fields, *_extras(parts, q)]


@fmm_attention_fwd.register_fake
def _(q, k, v, coeffs, mask, bandwidth, dropout_p, seed, causal, phi_codes, normalize):
    batch, heads, seq, _ = q.shape
    bh, dim_v, f32 = batch * heads, v.shape[-1], torch.float32
    fields, extras = [], []
    near_args = None if bandwidth == _NO_NEAR else (bandwidth, dropout_p, seed)
    if short_applies(q, near_args, phi_codes, causal):
        fields = [empty_like_layout(q, dim_v) for _ in range(1 + len(phi_codes))]
        den = q.new_empty(len(phi_codes) if normalize else 0, bh, seq, dtype=f32)
        lse, states = q.new_empty(bh, seq, dtype=f32), state_slots(q, v, len(phi_codes))
        return [torch.empty_like(fields[0]), *fields, lse, den, states]
    if bandwidth != _NO_NEAR:
        fields.append(empty_like_layout(q, dim_v))
        extras.append(q.new_empty(bh, seq, dtype=f32))
    for group in map_groups(tuple(phi_codes), causal):
        nm = len(group)
        fields.extend(empty_like_layout(q, dim_v) for _ in group)
        plan = _Plan(q, v, causal, nm, group)
        extras.append(q.new_empty(nm, bh, seq, dtype=f32) if normalize else q.new_empty(0))
        if causal and plan.n_seg > 1:
            extras.append(q.new_empty(bh, plan.n_seg, nm, plan.slot, dtype=f32))
        elif causal:
            extras.append(q.new_empty(0))
        else:
            extras.append(q.new_empty(bh, nm, plan.slot, dtype=f32))
        extras.append(plan.features(q, nm))
    return [torch.empty_like(fields[0]), *fields, *extras]


@torch.library.custom_op("fmmformer::fmm_attention_bwd", mutates_args=())
def fmm_attention_bwd(
    dy: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    coeffs: torch.Tensor,
    mask: torch.Tensor | None,
    saved: list[torch.Tensor],
    n_fields: int,
    bandwidth: int,
    dropout_p: float,
    seed: torch.Tensor | None,
    causal: bool,
    phi_codes: list[int],
    normalize: bool,
) -> list[torch.Tensor]:
    fields, extras = saved[:n_fields], saved[n_fields:]
    parts = _rebuild_parts(
        q, k, v, mask, fields, extras, bandwidth, dropout_p, _near_seed(seed, dropout_p),
        causal, tuple(phi_codes), normalize,
    )  # fmt: skip
    dq, dk, dv, dc = fmm_backward(dy, coeffs, fields, parts)
    return [dq, dk, dv, dc]


@fmm_attention_bwd.register_fake
def _(dy, q, k, v, coeffs, mask, saved, n_fields, bandwidth, dropout_p, seed, causal, *rest):
    return [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(coeffs)]


def _setup_context(ctx, inputs, output):
    q, k, v, coeffs, mask, bandwidth, dropout_p, seed, causal, phi_codes, normalize = inputs
    n_fields = len(phi_codes) + (bandwidth != _NO_NEAR)
    ctx.save_for_backward(q, k, v, coeffs, mask, seed, *output[1:])
    ctx.settings = (n_fields, bandwidth, dropout_p, causal, list(phi_codes), normalize)


def _backward(ctx, grads):
    q, k, v, coeffs, mask, seed, *saved = ctx.saved_tensors
    n_fields, bandwidth, dropout_p, causal, phi_codes, normalize = ctx.settings
    dy = grads[0]
    if dy is None:
        return (None,) * 11
    dq, dk, dv, dc = fmm_attention_bwd(
        dy, q, k, v, coeffs, mask, saved, n_fields, bandwidth, dropout_p, seed, causal,
        phi_codes, normalize,
    )  # fmt: skip
    return dq, dk, dv, dc, None, None, None, None, None, None, None


fmm_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def fmm_attention_op(
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
    """``fmm.fmm_attention_triton`` through the custom ops (same arguments and result), or
    None for a case the kernels do not cover. Traceable by ``torch.compile``."""
    args = fmm_arguments(q, k, v, coeffs, bandwidth, feature_maps, dropout_p)
    if args is None:
        return None
    codes, bandwidth = args
    # A fresh seed per call, drawn on the inputs' device by the graph itself (the eager path
    # draws a Python int from the CPU generator instead).
    seed = torch.randint(0, 2**30, (1,), device=q.device) if dropout_p > 0.0 else None
    out = fmm_attention_fwd(
        q, k, v, coeffs.float().contiguous(), key_padding_mask,
        _NO_NEAR if bandwidth is None else bandwidth, float(dropout_p), seed, bool(causal),
        list(codes), bool(normalize),
    )  # fmt: skip
    return out[0]
