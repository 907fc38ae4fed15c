"""Far field: kernelised (linear) attention in O(seq * head_dim^2) time, O(seq * head_dim) memory.

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
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .feature_maps import get_feature_map
from .near_field import _check_inputs, _compute_dtype, _fast_path

# Causal chunk length: the intra-chunk product costs seq * _CHUNK * head_dim, the inter-chunk
# states seq / _CHUNK * head_dim^2; 64 balances them for head_dim 32-128.
_CHUNK = 64


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
    out_i = numer_i / (denom_i + eps) (that code uses 1e-5). Neither is a pre-scaling of the
    kernels' inputs (the kernels apply phi themselves), so either setting runs this PyTorch
    path on every device (``backend="cuda"`` raises).

    Padding keys contribute nothing (phi(k_j) is zeroed there); padded queries still get an
    output, which callers ignore. bf16/fp16 inputs are accumulated in float32; the result
    has the input dtype.

    backend: ``"auto"`` uses ``fmmformer_pl.attention.cuda.far_field_cuda`` for CUDA inputs
    when available, ``"reference"`` always this path, ``"cuda"`` requires the fast path.

    Returns ``(batch, heads, seq, head_dim_v)``.
    """
    _check_inputs(q, k, v, key_padding_mask)
    if isinstance(feature_map, str):
        phi = get_feature_map(feature_map)
    elif callable(feature_map):
        phi = feature_map
    else:
        raise TypeError(
            f"feature_map must be a name or a callable, got {type(feature_map).__name__}"
        )

    if feature_normalize or eps:
        backend = _reference_only(backend)
    fast = _fast_path("far_field_cuda", backend, q)
    if fast is not None:
        out = fast(
            q,
            k,
            v,
            feature_map=feature_map,
            causal=causal,
            normalize=normalize,
            key_padding_mask=key_padding_mask,
        )
        if out is not None:
            return out
        if backend == "cuda":
            raise RuntimeError("backend='cuda': far_field_cuda does not support this case")

    batch, heads, seq, _ = q.shape
    out_dtype = q.dtype
    if seq == 0:
        return q.new_zeros(batch, heads, 0, v.shape[-1])

    phi_q = phi(_compute_dtype(q))  # (b, h, seq, d)
    phi_k = phi(_compute_dtype(k))
    if feature_normalize:
        phi_q = phi_q / phi_q.sum(dim=-1, keepdim=True)
        phi_k = phi_k / phi_k.sum(dim=-1, keepdim=True)
    v = _compute_dtype(v)
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


def _reference_only(backend: str) -> str:
    """The backend for options the GPU kernels lack (feature normalisation, eps)."""
    if backend == "cuda":
        raise RuntimeError(
            "backend='cuda': the GPU far-field kernels support neither feature_normalize nor "
            "eps (use backend='auto' or 'reference')"
        )
    return "reference"


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
) -> list[torch.Tensor]:
    """``[far_field(q, k, v, phi) for phi in feature_maps]`` (same arguments and results).

    On the GPU fast path the maps are computed two at a time from one pass over q, k, v (the
    paper's rank-2 far field reads its inputs once); elsewhere, and for callable maps, one
    ``far_field`` per map.
    """
    maps = list(feature_maps)
    if not maps:
        raise ValueError("far_fields needs at least one feature map")
    _check_inputs(q, k, v, key_padding_mask)
    for m in maps:
        if isinstance(m, str):
            get_feature_map(m)  # unknown names fail here, whichever path runs
    if feature_normalize or eps:
        backend = _reference_only(backend)
    fast = _fast_path("far_fields_cuda", backend, q)
    if fast is not None:
        outs = fast(
            q, k, v, maps, causal=causal, normalize=normalize, key_padding_mask=key_padding_mask
        )
        if outs is not None:
            return outs
        if backend == "cuda":
            raise RuntimeError("backend='cuda': far_fields_cuda does not support this case")
    kw = dict(causal=causal, normalize=normalize, key_padding_mask=key_padding_mask,
              feature_normalize=feature_normalize, eps=eps)  # fmt: skip
    return [far_field(q, k, v, m, backend=backend, **kw) for m in maps]


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
    phi_q = F.pad(phi_q, (0, 0, 0, pad)).view(batch, heads, n_chunks, chunk, dim)
    phi_k = F.pad(phi_k, (0, 0, 0, pad)).view(batch, heads, n_chunks, chunk, dim)
    v = F.pad(v, (0, 0, 0, pad)).view(batch, heads, n_chunks, chunk, dim_v)

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
