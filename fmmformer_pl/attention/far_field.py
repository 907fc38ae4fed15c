"""Far field: kernelised (linear) attention in O(seq * head_dim^2) time, O(seq * head_dim) memory
(public functions).

Shapes: q, k ``(batch, heads, seq, head_dim)``, v ``(batch, heads, seq, head_dim_v)``,
key_padding_mask bool ``(batch, seq)``, True where the position is padding.

The PyTorch reference is ``ops/far_field/naive.py`` (chunked: never a state per position), the
GPU kernels ``ops/far_field``; ``dispatch.py`` picks one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from . import dispatch
from .feature_maps import get_feature_map
from .inputs import check_inputs
from .ops.far_field.naive import far_field_reference
from .ops.plan import DEFAULT_PLAN, KernelPlan


def far_field(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    feature_map: str | Callable[[torch.Tensor], torch.Tensor] = "elu",
    causal: bool = False,
    normalize: bool = True,
    key_padding_mask: torch.Tensor | None = None,
    backend: str = "auto",
    feature_normalize: bool = False,
    eps: float = 0.0,
    *,
    plan: KernelPlan = DEFAULT_PLAN,
) -> torch.Tensor:
    """Kernelised linear attention (the FMMformer far field).

    With phi the feature map (a name in ``FEATURE_MAPS`` or a callable) and V(i) the visible
    keys of query i (not padding; j <= i when causal):

      normalize=True:
          out_i = sum_{j in V(i)} (phi(q_i).phi(k_j)) v_j / sum_{j in V(i)} phi(q_i).phi(k_j)
          and out_i = 0 where the denominator is 0 (no visible key), never NaN.
      normalize=False (the variant of the paper's LRA runs):
          out_i = sum_{j in V(i)} (phi(q_i).phi(k_j)) v_j / sqrt(seq)
          with seq = q.shape[-2], the full (padded) sequence length of the tensors, the same for
          every query and independent of padding and causality. This is what the LRA code the
          authors ran (the Nystromformer LRA ``LinearAttention``) computes: it scales phi(Q) and
          phi(K) each by seq ** -1/4, zeroes phi(K) and V at padding, and returns
          phi(Q) (phi(K)^T V) with no denominator.

    feature_normalize=True (the released LM code, ``lmtool-fwms``): each feature vector is
    divided by its sum over the feature dimension before use, phi(x) <- phi(x) / sum_d phi(x)_d,
    for queries and keys. With normalize=True the query's factor cancels (except against eps);
    the key's weights key j by 1 / sum_d phi(k_j)_d. ``eps`` is added to the denominator,
    out_i = numer_i / (denom_i + eps) (that code uses 1e-5), 0 where that is 0; eps is unused
    with normalize=False. The GPU kernels compute both (``ops/far_field/op.py``).

    Padding keys contribute nothing (phi(k_j) is zeroed there); padded queries still get an
    output, which callers ignore. bf16/fp16 inputs are accumulated in float32; the result
    has the input dtype.

    backend: ``"auto"`` runs the GPU kernels for CUDA inputs where they cover the case,
    ``"reference"`` always the PyTorch reference, ``"cuda"`` requires the kernels.

    Returns ``(batch, heads, seq, head_dim_v)``.
    """
    check_inputs(q, k, v, key_padding_mask)
    if isinstance(feature_map, str):
        phi = get_feature_map(feature_map)
    elif callable(feature_map):
        phi = feature_map
    else:
        raise TypeError(
            f"feature_map must be a name or a callable, got {type(feature_map).__name__}"
        )

    outs = dispatch.far_fields(
        q, k, v, [feature_map], causal, normalize, key_padding_mask, backend, plan,
        feature_normalize, eps,
    )  # fmt: skip
    if outs is not None:
        return outs[0]
    return far_field_reference(
        q, k, v, phi, causal, normalize, key_padding_mask, feature_normalize, eps
    )


def far_fields(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    feature_maps: Sequence[str | Callable[[torch.Tensor], torch.Tensor]],
    causal: bool = False,
    normalize: bool = True,
    key_padding_mask: torch.Tensor | None = None,
    backend: str = "auto",
    feature_normalize: bool = False,
    eps: float = 0.0,
    *,
    plan: KernelPlan = DEFAULT_PLAN,
) -> list[torch.Tensor]:
    """``[far_field(q, k, v, phi) for phi in feature_maps]`` (same arguments and results).

    On the GPU fast path the maps are computed two at a time from one pass over q, k, v (the
    paper's rank-2 far field reads its inputs once); elsewhere, and for callable maps, one
    ``far_field`` per map.
    """
    maps = list(feature_maps)
    if not maps:
        raise ValueError("far_fields needs at least one feature map")
    check_inputs(q, k, v, key_padding_mask)
    for m in maps:
        if isinstance(m, str):
            get_feature_map(m)  # unknown names fail here, whichever path runs
    outs = dispatch.far_fields(
        q, k, v, maps, causal, normalize, key_padding_mask, backend, plan, feature_normalize, eps
    )
    if outs is not None:
        return outs
    kw = dict(causal=causal, normalize=normalize, key_padding_mask=key_padding_mask,
              feature_normalize=feature_normalize, eps=eps)  # fmt: skip
    return [far_field(q, k, v, m, backend=backend, plan=plan, **kw) for m in maps]
