"""The blend's reference in PyTorch: ``y = sum_f c_f * field_f`` (imports no kernel).

Shapes: fields ``(batch, heads, seq, head_dim)``, coeffs ``(n_fields, heads, head_dim)``.
``attention/blend.py``'s ``Blend`` applies its weights one by one; this is the same sum from
the multiplied-out coefficients, what the kernels take.
"""

from __future__ import annotations

import torch


def blend_reference(fields: list[torch.Tensor], coeffs: torch.Tensor) -> torch.Tensor:
    """sum_f coeffs[f] (broadcast over batch and sequence) * fields[f]."""
    return sum(c[None, :, None, :].to(f.dtype) * f for c, f in zip(coeffs, fields, strict=True))
