"""The fused FMM layer's reference in pure PyTorch (imports no kernel): the near field, each
feature map's far field and the blend, one after the other.

    y = c_0 * near(q, k, v) + sum_l c_l * far_l(q, k, v)

Shapes: q, k, v ``(batch, heads, seq, head_dim)``; coeffs ``(n_fields, heads, head_dim)``,
the near field's row first (none when bandwidth is None).
"""

from __future__ import annotations

import torch

from ...feature_maps import get_feature_map
from ..blend.naive import blend_reference
from ..far_field.naive import far_field_reference
from ..near_field.naive import near_field_reference


def fmm_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    coeffs: torch.Tensor,
    bandwidth: int | None,
    feature_maps,
    causal: bool = False,
    normalize: bool = True,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """What ``op.fmm_attention_kernel`` computes (without dropout), field by field."""
    fields = []
    if bandwidth is not None:
        fields.append(near_field_reference(q, k, v, bandwidth, causal, key_padding_mask))
    for name in feature_maps:
        phi = get_feature_map(name) if isinstance(name, str) else name
        fields.append(far_field_reference(q, k, v, phi, causal, normalize, key_padding_mask))
    return blend_reference(fields, coeffs)
