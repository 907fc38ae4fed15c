"""Near field: banded softmax attention in O(seq * bandwidth) time and memory (public function).

Shapes: q, k ``(batch, heads, seq, head_dim)``, v ``(batch, heads, seq, head_dim_v)``,
key_padding_mask bool ``(batch, seq)``, True where the position is padding (the convention
of ``torch.nn.MultiheadAttention``).

The PyTorch reference is ``ops/near_field/naive.py`` (no (seq x seq) tensor), the GPU kernels
``ops/near_field``; ``dispatch.py`` picks one.
"""

from __future__ import annotations

import torch

from . import dispatch
from .inputs import check_inputs
from .ops.near_field.naive import near_field_reference
from .ops.plan import DEFAULT_PLAN, KernelPlan


def near_field(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bandwidth: int,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    backend: str = "auto",
    *,
    plan: KernelPlan = DEFAULT_PLAN,
) -> torch.Tensor:
    """Banded softmax attention (the FMMformer near field).

    out_i = sum_{j in V(i)} exp(s_ij) v_j / sum_{j in V(i)} exp(s_ij),  s_ij = q_i.k_j / sqrt(head_dim)

    where V(i) holds the keys j that are not padding and lie in the band:
    ``|i - j| < bandwidth`` (bidirectional) or ``i - bandwidth < j <= i`` (causal).
    A query with an empty V(i) outputs zeros (never NaN, in forward or backward).
    ``dropout_p > 0`` applies inverted dropout to the probabilities (callers pass 0 in eval).
    bf16/fp16 inputs are computed in float32; the result has the input dtype.

    backend: ``"auto"`` runs the GPU kernels for CUDA inputs where they cover the case (and
    triton imports), else the PyTorch reference; ``"reference"`` always the reference;
    ``"cuda"`` requires the kernels and raises otherwise. plan: the kernels' ``KernelPlan``.

    Returns ``(batch, heads, seq, head_dim_v)``.
    """
    check_inputs(q, k, v, key_padding_mask)
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, int):
        raise TypeError(f"bandwidth must be an int, got {type(bandwidth).__name__}")
    if bandwidth < 1:
        raise ValueError(f"bandwidth must be >= 1, got {bandwidth}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")

    out = dispatch.near_field(
        q, k, v, bandwidth, causal, key_padding_mask, dropout_p, backend, plan
    )
    if out is not None:
        return out
    return near_field_reference(q, k, v, bandwidth, causal, key_padding_mask, dropout_p)
