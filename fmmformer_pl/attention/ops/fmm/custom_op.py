"""The fused FMM attention (``op.py``) as ``torch.library`` custom ops, for ``torch.compile``.

Eager code runs ``op.py``'s ``autograd.Function`` (the least host work per call). Under
``torch.compile`` that Function, with its launch planning in Python, would break the graph at
every attention layer; these ops instead are opaque nodes with a schema, a fake (meta)
implementation giving every output's shape and strides, and a registered backward, so the
compiler traces the whole model around them in one graph.

    fmmformer::fmm_attention_fwd(q, k, v, coeffs, mask?, bandwidth, dropout_p, seed, causal,
                                 phi_codes, normalize, feature_normalize, eps, plan)
                                 -> [y, *fields, *extras]
    fmmformer::fmm_attention_bwd(dy, q, k, v, coeffs, mask?, saved, ..., short, plan)
                                 -> [dq, dk, dv, dc]

``plan`` is the ``KernelPlan``'s ``key`` (an op takes no Python objects; ``plan_of`` maps it
back); the path (short or general) follows from the plan and the shapes (``_takes_short``),
decided the same way for the forward, its fake and the backward.

Outputs may not alias inputs or each other, so a saved tensor that the Function path keeps as
None or as a stand-in (no state for a one-segment causal pass, no denominators when
normalize=False) is an empty tensor here. ``extras``: the near field's log-sum-exp, then per
far-field group its denominators, its states and its stored features; for the short path the
log-sum-exp, the denominators and the far states. ``bandwidth`` < 0: no near field.
The dropout seed is a one-element int64 tensor on the inputs' device, drawn in the traced code,
so every step of a compiled model draws a new one; the near-field kernels read it from device
memory (no host sync, and no CPU tensor in the graph, which would keep inductor from
CUDA-graphing the step). None without dropout.
"""

from __future__ import annotations

import torch

from ..common.host import empty_like_layout
from ..far_field.op import FarLayout, far_saved, map_groups
from ..near_field.op import NearArgs, near_saved
from ..plan import DEFAULT_PLAN, KernelPlan, plan_of
from ..short.op import short_saved, state_slots
from .op import Part, fmm_arguments, fmm_backward, fmm_forward, takes_short

_NO_NEAR = -1


def _near_seed(seed: torch.Tensor | None, dropout_p: float) -> torch.Tensor | int:
    """The near kernels' seed argument: the seed tensor itself (they load it), or 0."""
    return seed if seed is not None and dropout_p > 0.0 else 0


def _near_args(bandwidth, dropout_p, seed) -> NearArgs | None:
    return None if bandwidth == _NO_NEAR else NearArgs(bandwidth, dropout_p, seed)


def _takes_short(q, bandwidth, phi_codes, causal, plan, feature_normalize, eps) -> bool:
    """Whether the fused forward takes the short path: one decision, from the plan."""
    near = None if bandwidth == _NO_NEAR else (bandwidth,)
    return takes_short(q, near, phi_codes, causal, plan, feature_normalize, eps)


def _extras(parts: list[Part], q):
    """The saved tensors that are not inputs or fields, as op outputs (see the module doc)."""
    out = []
    for part in parts:
        t = part.saved.tensors
        if part.kind == "short":
            out.extend((t.lse, t.den, t.states))  # den is empty without normalize
        elif part.kind == "near":
            out.append(t.lse)
        else:
            out.append(q.new_empty(0) if t.den is t.outs[0] else t.den)
            out.append(q.new_empty(0) if t.state is None else t.state)
            out.append(t.phi)
    return out


def _rebuild_parts(q, k, v, mask, fields, extras, near_args, causal, codes, norm, short, plan,
                   feature_normalize):  # fmt: skip
    """``fmm_forward``'s parts from the op's saved tensors."""
    if short:
        lse, den, states = extras
        saved = short_saved(q, k, v, mask, lse, den, states, near_args, codes, norm, plan)
        return [Part("short", saved, len(fields))]
    parts, fields, extras = [], list(fields), list(extras)
    if near_args is not None:
        near, lse = fields.pop(0), extras.pop(0)
        saved = near_saved(q, k, v, mask, near, lse, near_args, causal, plan.near)
        parts.append(Part("near", saved, 1))
    for group in map_groups(codes, causal, plan.far):
        outs = [fields.pop(0) for _ in group]
        den, state, phi = extras.pop(0), extras.pop(0), extras.pop(0)
        den = outs[0] if den.numel() == 0 and not norm else den
        state = None if state.numel() == 0 else state
        saved = far_saved(q, k, v, mask, den, state, phi, outs, group, causal, norm, plan,
                          feature_normalize)  # fmt: skip
        parts.append(Part("far", saved, len(outs)))
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
    feature_normalize: bool,
    eps: float,
    plan: int,
) -> list[torch.Tensor]:
    kernel_plan = plan_of(plan)
    near_args = _near_args(bandwidth, dropout_p, _near_seed(seed, dropout_p))
    codes = tuple(phi_codes)
    y, fields, parts = fmm_forward(
        q, k, v, coeffs, mask, near_args, causal, codes, normalize, kernel_plan,
        feature_normalize, eps,
    )  # fmt: skip
    return [y, *fields, *_extras(parts, q)]


@fmm_attention_fwd.register_fake
def _(q, k, v, coeffs, mask, bandwidth, dropout_p, seed, causal, phi_codes, normalize,
      feature_normalize, eps, plan):  # fmt: skip
    kernel_plan = plan_of(plan)
    batch, heads, seq, _ = q.shape
    bh, dim_v, f32 = batch * heads, v.shape[-1], torch.float32
    fields, extras = [], []
    codes = tuple(phi_codes)
    if _takes_short(q, bandwidth, codes, causal, kernel_plan, feature_normalize, eps):
        fields = [empty_like_layout(q, dim_v) for _ in range(1 + len(codes))]
        den = q.new_empty(len(codes) if normalize else 0, bh, seq, dtype=f32)
        lse = q.new_empty(bh, seq, dtype=f32)
        states = state_slots(q, v, len(codes), kernel_plan)
        return [torch.empty_like(fields[0]), *fields, lse, den, states]
    if bandwidth != _NO_NEAR:
        fields.append(empty_like_layout(q, dim_v))
        extras.append(q.new_empty(bh, seq, dtype=f32))
    for group in map_groups(codes, causal, kernel_plan.far):
        nm = len(group)
        fields.extend(empty_like_layout(q, dim_v) for _ in group)
        lay = FarLayout(q, v, causal, group, kernel_plan, feature_normalize)
        extras.append(q.new_empty(nm, bh, seq, dtype=f32) if normalize else q.new_empty(0))
        if causal and lay.n_seg > 1:
            extras.append(q.new_empty(bh, lay.n_seg, nm, lay.slot, dtype=f32))
        elif causal:
            extras.append(q.new_empty(0))
        else:
            extras.append(q.new_empty(bh, nm, lay.slot, dtype=f32))
        extras.append(lay.features(q, nm))
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
    feature_normalize: bool,
    short: bool,
    plan: int,
) -> list[torch.Tensor]:
    kernel_plan = plan_of(plan)
    fields, extras = saved[:n_fields], saved[n_fields:]
    near_args = _near_args(bandwidth, dropout_p, _near_seed(seed, dropout_p))
    parts = _rebuild_parts(
        q, k, v, mask, fields, extras, near_args, causal, tuple(phi_codes), normalize, short,
        kernel_plan, feature_normalize,
    )  # fmt: skip
    dq, dk, dv, dc = fmm_backward(dy, coeffs, fields, parts, kernel_plan)
    return [dq, dk, dv, dc]


@fmm_attention_bwd.register_fake
def _(dy, q, k, v, coeffs, mask, saved, n_fields, bandwidth, dropout_p, seed, causal, *rest):
    return [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(coeffs)]


def _setup_context(ctx, inputs, output):
    (q, k, v, coeffs, mask, bandwidth, dropout_p, seed, causal, phi_codes, normalize,
     feature_normalize, eps, plan) = inputs  # fmt: skip
    n_fields = len(phi_codes) + (bandwidth != _NO_NEAR)
    codes = tuple(phi_codes)
    short = _takes_short(q, bandwidth, codes, causal, plan_of(plan), feature_normalize, eps)
    ctx.save_for_backward(q, k, v, coeffs, mask, seed, *output[1:])
    ctx.settings = (n_fields, bandwidth, dropout_p, causal, list(phi_codes), normalize,
                    feature_normalize, short, plan)  # fmt: skip


def _backward(ctx, grads):
    q, k, v, coeffs, mask, seed, *saved = ctx.saved_tensors
    (n_fields, bandwidth, dropout_p, causal, phi_codes, normalize, feature_normalize, short,
     plan) = ctx.settings  # fmt: skip
    dy = grads[0]
    if dy is None:
        return (None,) * 14
    dq, dk, dv, dc = fmm_attention_bwd(
        dy, q, k, v, coeffs, mask, saved, n_fields, bandwidth, dropout_p, seed, causal,
        phi_codes, normalize, feature_normalize, short, plan,
    )  # fmt: skip
    return dq, dk, dv, dc, *(None,) * 10


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
    plan: KernelPlan = DEFAULT_PLAN,
    feature_normalize: bool = False,
    eps: float = 0.0,
) -> torch.Tensor | None:
    """``op.fmm_attention_kernel`` through the custom ops (same arguments and result), or
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
        list(codes), bool(normalize), bool(feature_normalize), float(eps), plan.key,
    )  # fmt: skip
    return out[0]
