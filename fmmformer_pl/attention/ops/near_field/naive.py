"""Near field reference in pure PyTorch: banded softmax attention in O(seq * bandwidth) time and
memory (imports no kernel; the kernels of this folder are tested against it).

Shapes: q, k ``(batch, heads, seq, head_dim)``, v ``(batch, heads, seq, head_dim_v)``,
key_padding_mask bool ``(batch, seq)``, True where the position is padding.

The released FMMformer code builds the full (seq x seq) score matrix and masks it to a band.
Here queries are cut into blocks; each block attends only to the slab of keys its band can
reach, so the largest tensor is ``(batch, heads, seq / block, block, slab)`` with
``slab = block + 2 (bandwidth - 1)`` (``block + bandwidth - 1`` when causal).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Smallest query block: below this, per-block overhead dominates for tiny bandwidths
# (the paper's band 5) while the slab stays small in absolute terms.
_MIN_BLOCK = 32


def compute_dtype(t: torch.Tensor) -> torch.Tensor:
    """Half-precision inputs are computed in float32 (softmax and sums need the range)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def near_field_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bandwidth: int,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Banded softmax attention in PyTorch (``attention.near_field`` documents the formula);
    inputs already validated. Returns ``(batch, heads, seq, head_dim_v)``."""
    batch, heads, seq, head_dim = q.shape
    head_dim_v = v.shape[-1]
    out_dtype = q.dtype
    if seq == 0:
        return q.new_zeros(batch, heads, 0, head_dim_v)
    q, k, v = (compute_dtype(t) for t in (q, k, v))

    # A band wider than the sequence is the whole sequence.
    width = min(bandwidth, seq)
    block = min(max(width, _MIN_BLOCK), seq)
    n_blocks = -(-seq // block)
    padded = n_blocks * block
    if n_blocks == 1:
        # One block sees every key: the slab is the sequence itself.
        left, right, slab = 0, 0, seq
    else:
        # Block b (queries b*block ...) reads keys b*block - left ... b*block + block - 1 + after.
        left = width - 1
        after = 0 if causal else width - 1
        right = (padded - seq) + after  # zero keys past the end, masked below
        slab = left + block + after

    q = F.pad(q, (0, 0, 0, padded - seq))
    q = q.view(batch, heads, n_blocks, block, head_dim) / math.sqrt(head_dim)
    k_slabs = F.pad(k, (0, 0, left, right)).unfold(2, slab, block)  # (b, h, nb, d, slab)
    v_slabs = F.pad(v, (0, 0, left, right)).unfold(2, slab, block)  # (b, h, nb, dv, slab)

    visible = torch.ones(batch, seq, dtype=torch.bool, device=q.device)
    if key_padding_mask is not None:
        visible = ~key_padding_mask.to(device=q.device, dtype=torch.bool)
    visible = F.pad(visible, (left, right), value=False).unfold(1, slab, block)  # (b, nb, slab)
    # Offset j - i of slab column c from block row r is c - left - r, the same in every block.
    rows = torch.arange(block, device=q.device)[:, None]
    cols = torch.arange(slab, device=q.device)[None, :]
    offset = cols - left - rows  # (block, slab)
    band = (offset > -width) & (offset <= 0) if causal else offset.abs() < width
    mask = band & visible[:, None, :, None, :]  # (b, 1, nb, block, slab)

    scores = q @ k_slabs  # (b, h, nb, block, slab)
    # A large finite negative (not -inf) keeps fully masked rows finite: their softmax is
    # uniform and the explicit zeroing below makes them 0, with finite gradients.
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1) * mask
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    out = probs @ v_slabs.transpose(-1, -2)  # (b, h, nb, block, dv)
    out = out.reshape(batch, heads, padded, head_dim_v)[:, :, :seq]
    return out.to(out_dtype)


def _compute_dtype(t: torch.Tensor) -> torch.Tensor:
    """Half-precision inputs are computed in float32 (softmax and sums need the range)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
