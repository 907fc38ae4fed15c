"""Naive O(seq^2) dense references for the near field and the far field: the test oracle.

These build the full (seq x seq) score matrix on purpose: they are written to be obviously
correct, not fast, and are used only by tests (CPU and GPU) to check ``near_field`` and
``far_field``. Never call them from model code.

Shapes: q, k ``(batch, heads, seq, head_dim)``, v ``(batch, heads, seq, head_dim_v)``,
key_padding_mask bool ``(batch, seq)`` with True where the position is padding.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .feature_maps import get_feature_map


def visible_keys(
    seq: int,
    bandwidth: int | None,
    causal: bool,
    key_padding_mask: torch.Tensor | None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Bool ``(batch or 1, 1, seq, seq)``: entry [i, j] is True when query i may see key j.

    Key j is visible from query i when it is not padding and
    ``|i - j| < bandwidth`` (bidirectional) or ``i - bandwidth < j <= i`` (causal);
    ``bandwidth=None`` means no band (every key, or every key j <= i when causal).
    """
    i = torch.arange(seq, device=device)[:, None]
    j = torch.arange(seq, device=device)[None, :]
    offset = j - i  # (seq, seq)
    mask = torch.ones(seq, seq, dtype=torch.bool, device=device)
    if causal:
        mask &= offset <= 0
    if bandwidth is not None:
        mask &= offset.abs() < bandwidth
    mask = mask[None, None]  # (1, 1, seq, seq)
    if key_padding_mask is not None:
        mask = mask & ~key_padding_mask.to(device)[:, None, None, :]
    return mask


def naive_near_field(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bandwidth: int,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense banded softmax attention.

    out_i = sum_{j in V(i)} exp(s_ij) v_j / sum_{j in V(i)} exp(s_ij),  s_ij = q_i.k_j / sqrt(d),
    where V(i) are the keys visible from i (see :func:`visible_keys`); an empty V(i) gives 0.
    """
    seq = q.shape[-2]
    mask = visible_keys(seq, bandwidth, causal, key_padding_mask, q.device)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (batch, heads, seq, seq)
    scores = scores.masked_fill(~mask, float("-inf"))
    # The row max only stabilises exp(); detached, and 0 for rows with no visible key.
    row_max = scores.amax(dim=-1, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(scores - row_max) * mask
    denom = weights.sum(dim=-1, keepdim=True)
    probs = weights / torch.where(denom > 0, denom, torch.ones_like(denom))
    return probs @ v


def naive_far_field(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    feature_map: str | Callable[[torch.Tensor], torch.Tensor] = "elu",
    causal: bool = False,
    normalize: bool = True,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense kernelised (linear) attention, computed through the full (seq x seq) kernel matrix.

    With A_ij = phi(q_i).phi(k_j) over visible keys j (j <= i when causal, padding excluded):
      normalize=True:  out_i = sum_j A_ij v_j / sum_j A_ij   (0 when the denominator is 0)
      normalize=False: out_i = sum_j A_ij v_j / sqrt(seq)    (seq = q.shape[-2], padded length)
    """
    phi = get_feature_map(feature_map) if isinstance(feature_map, str) else feature_map
    seq = q.shape[-2]
    mask = visible_keys(seq, None, causal, key_padding_mask, q.device)
    kernel = (phi(q) @ phi(k).transpose(-1, -2)) * mask  # (batch, heads, seq, seq)
    numer = kernel @ v
    if not normalize:
        return numer / math.sqrt(seq)
    denom = kernel.sum(dim=-1, keepdim=True)
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.where(denom > 0, numer / safe, torch.zeros_like(numer))
