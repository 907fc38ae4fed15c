"""Far field reference in pure PyTorch: kernelised (linear) attention in O(seq * head_dim^2) time,
O(seq * head_dim) memory (imports no kernel; the kernels of this folder are tested against it).

Shapes: q, k ``(batch, heads, seq, head_dim)``, v ``(batch, heads, seq, head_dim_v)``,
key_padding_mask bool ``(batch, seq)``, True where the position is padding.

Bidirectional: one (head_dim x head_dim_v) state phi(K)^T V per (batch, head).
Causal: a chunked algorithm. Within a chunk of ``_CHUNK`` positions the masked product
(phi(Q_c) phi(K_c)^T * tril) V_c is computed directly; across chunks each chunk reads the sum of
phi(k_j) v_j^T over all earlier chunks. Only one such state per *chunk* is ever held, never one
per position (which would be seq * head_dim * head_dim_v numbers).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..near_field.naive import compute_dtype

# Causal chunk length: the intra-chunk product costs seq * _CHUNK * head_dim, the inter-chunk
# states seq / _CHUNK * head_dim^2; 64 balances them for head_dim 32-128.
_CHUNK = 64


def far_field_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    phi: Callable[[torch.Tensor], torch.Tensor],
    causal: bool = False,
    normalize: bool = True,
    key_padding_mask: torch.Tensor | None = None,
    feature_normalize: bool = False,
    eps: float = 0.0,
) -> torch.Tensor:
    """One feature map's far field in PyTorch (``attention.far_field`` documents the
    formulas); inputs already validated. Returns ``(batch, heads, seq, head_dim_v)``."""
    batch, heads, seq, _ = q.shape
    out_dtype = q.dtype
    if seq == 0:
        return q.new_zeros(batch, heads, 0, v.shape[-1])

    phi_q = phi(compute_dtype(q))  # (b, h, seq, d)
    phi_k = phi(compute_dtype(k))
    if feature_normalize:
        phi_q = phi_q / phi_q.sum(dim=-1, keepdim=True)
        phi_k = phi_k / phi_k.sum(dim=-1, keepdim=True)
    v = compute_dtype(v)
    if key_padding_mask is not None:
        keep = ~key_padding_mask.to(phi_k.device)
        phi_k = phi_k * keep[:, None, :, None].to(phi_k.dtype)

    if causal:
        numer, denom = _causal_sums(phi_q, phi_k, v)
    else:
        state = phi_k.transpose(-1, -2) @ v  # (b, h, d, dv)
        numer = phi_q @ state  # (b, h, seq, dv)
        denom = phi_q @ phi_k.sum(dim=-2).unsqueeze(-1)  # (b, h, seq, 1)

    return _finish(numer, denom, normalize, eps, seq).to(out_dtype)


def _finish(numer, denom, normalize: bool, eps: float, seq: int) -> torch.Tensor:
    """numer / (denom + eps) (0 where that is 0), or numer / sqrt(seq) when not normalising."""
    if not normalize:
        return numer / math.sqrt(seq)
    denom = denom + eps
    positive = denom > 0
    # Divide by 1 where the denominator is 0 so the discarded branch has no NaN gradient.
    return torch.where(positive, numer / torch.where(positive, denom, 1.0), 0.0)


def _causal_sums(phi_q, phi_k, v):
    """Numerator sum_{j<=i} (phi_q_i.phi_k_j) v_j and denominator sum_{j<=i} phi_q_i.phi_k_j.

    Returns ``(b, h, seq, dv)`` and ``(b, h, seq, 1)``; computed chunk by chunk.
    """
    batch, heads, seq, dim = phi_q.shape
    dim_v = v.shape[-1]
    chunk = min(_CHUNK, seq)
    n_chunks = -(-seq // chunk)
    pad = n_chunks * chunk - seq
    # Zero padding: padded keys add nothing, padded queries are cut off below.
    phi_q = F.pad(phi_q, (0, 0, 0, pad)).reshape(batch, heads, n_chunks, chunk, dim)
    phi_k = F.pad(phi_k, (0, 0, 0, pad)).reshape(batch, heads, n_chunks, chunk, dim)
    v = F.pad(v, (0, 0, 0, pad)).reshape(batch, heads, n_chunks, chunk, dim_v)

    # Intra-chunk: direct masked product, j <= i inside the chunk.
    tril = torch.ones(chunk, chunk, dtype=torch.bool, device=phi_q.device).tril()
    kernel = (phi_q @ phi_k.transpose(-1, -2)) * tril  # (b, h, nc, chunk, chunk)
    numer = kernel @ v  # (b, h, nc, chunk, dv)
    denom = kernel.sum(dim=-1, keepdim=True)  # (b, h, nc, chunk, 1)

    # Inter-chunk: chunk c reads the sums over chunks 0 .. c-1 (an exclusive prefix sum).
    chunk_state = phi_k.transpose(-1, -2) @ v  # (b, h, nc, d, dv)
    chunk_ksum = phi_k.sum(dim=-2)  # (b, h, nc, d)
    prior_state = _exclusive_cumsum(chunk_state, dim=2)
    prior_ksum = _exclusive_cumsum(chunk_ksum, dim=2)
    numer = numer + phi_q @ prior_state
    denom = denom + phi_q @ prior_ksum.unsqueeze(-1)

    numer = numer.reshape(batch, heads, n_chunks * chunk, dim_v)[:, :, :seq]
    denom = denom.reshape(batch, heads, n_chunks * chunk, 1)[:, :, :seq]
    return numer, denom


def _exclusive_cumsum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """y_c = sum_{c' < c} x_c' along ``dim`` (a shifted cumsum, exact rather than cumsum - x)."""
    shifted = x.narrow(dim, 0, x.shape[dim] - 1)
    zero = torch.zeros_like(x.narrow(dim, 0, 1))
    return torch.cat([zero, shifted], dim=dim).cumsum(dim=dim)
