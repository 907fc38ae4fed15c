"""Near field: banded softmax attention in O(seq * bandwidth) time and memory.

Shapes: q, k ``(batch, heads, seq, head_dim)``, v ``(batch, heads, seq, head_dim_v)``,
key_padding_mask bool ``(batch, seq)``, True where the position is padding (the convention
of ``torch.nn.MultiheadAttention``).

The released FMMformer code builds the full (seq x seq) score matrix and masks it to a band.
Here queries are cut into blocks; each block attends only to the slab of keys its band can
reach, so the largest tensor is ``(batch, heads, seq / block, block, slab)`` with
``slab = block + 2 (bandwidth - 1)`` (``block + bandwidth - 1`` when causal).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

# Smallest query block: below this, per-block overhead dominates for tiny bandwidths
# (the paper's band 5) while the slab stays small in absolute terms.
_MIN_BLOCK = 32


def near_field(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bandwidth: int,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Banded softmax attention (the FMMformer near field).

    out_i = sum_{j in V(i)} exp(s_ij) v_j / sum_{j in V(i)} exp(s_ij),  s_ij = q_i.k_j / sqrt(head_dim)

    where V(i) holds the keys j that are not padding and lie in the band:
    ``|i - j| < bandwidth`` (bidirectional) or ``i - bandwidth < j <= i`` (causal).
    A query with an empty V(i) outputs zeros (never NaN, in forward or backward).
    ``dropout_p > 0`` applies inverted dropout to the probabilities (callers pass 0 in eval).
    bf16/fp16 inputs are computed in float32; the result has the input dtype.

    backend: ``"auto"`` uses ``fmmformer_pl.attention.cuda.near_field_cuda`` for CUDA inputs
    when that package exists and supports the case, else this PyTorch path; ``"reference"``
    always uses this path; ``"cuda"`` requires the fast path and raises otherwise.

    Returns ``(batch, heads, seq, head_dim_v)``.
    """
    _check_inputs(q, k, v, key_padding_mask)
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, int):
        raise TypeError(f"bandwidth must be an int, got {type(bandwidth).__name__}")
    if bandwidth < 1:
        raise ValueError(f"bandwidth must be >= 1, got {bandwidth}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")

    fast = _fast_path("near_field_cuda", backend, q)
    if fast is not None:
        out = fast(
            q,
            k,
            v,
            bandwidth,
            causal=causal,
            key_padding_mask=key_padding_mask,
            dropout_p=dropout_p,
        )
        if out is not None:
            return out
        if backend == "cuda":
            raise RuntimeError("backend='cuda': near_field_cuda does not support this case")

    return _near_field_blocked(q, k, v, bandwidth, causal, key_padding_mask, dropout_p)


def _near_field_blocked(q, k, v, bandwidth, causal, key_padding_mask, dropout_p):
    batch, heads, seq, head_dim = q.shape
    head_dim_v = v.shape[-1]
    out_dtype = q.dtype
    if seq == 0:
        return q.new_zeros(batch, heads, 0, head_dim_v)
    q, k, v = (_compute_dtype(t) for t in (q, k, v))

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


def _check_inputs(q, k, v, key_padding_mask) -> None:
    """Shared input checks of the near and far fields (clear errors, not broadcasting)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must be (batch, heads, seq, head_dim), got shape {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if q.shape != k.shape:
        raise ValueError(
            f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"v must match q in (batch, heads, seq), got {tuple(v.shape)} for q {tuple(q.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(f"key_padding_mask must be bool, got {key_padding_mask.dtype}")
        expected = (q.shape[0], q.shape[2])
        if tuple(key_padding_mask.shape) != expected:
            raise ValueError(
                f"key_padding_mask must be (batch, seq) = {expected}, "
                f"got {tuple(key_padding_mask.shape)}"
            )


def _wants_fast_path(backend: str, q: torch.Tensor) -> bool:
    """Whether ``backend`` asks for the GPU path for q (raises for a bad backend, or for
    ``backend="cuda"`` with CPU tensors). Plain checks: torch.compile traces them."""
    if backend not in ("auto", "reference", "cuda"):
        raise ValueError(f"backend must be 'auto', 'reference' or 'cuda', got {backend!r}")
    if backend == "reference":
        return False
    if not q.is_cuda:
        if backend == "cuda":
            raise RuntimeError(f"backend='cuda' needs CUDA tensors, got device {q.device}")
        return False
    return True


def _fast_path(name: str, backend: str, q: torch.Tensor) -> Callable | None:
    """The fused GPU function ``fmmformer_pl.attention.cuda.<name>`` if it should be tried.

    Returns None when the PyTorch reference path is to be used. The cuda package is optional
    (it may not exist, or its imports may fail on machines without triton).
    """
    if not _wants_fast_path(backend, q):
        return None
    try:
        return getattr(importlib.import_module("fmmformer_pl.attention.cuda"), name)
    except (ImportError, AttributeError) as err:
        if backend == "cuda":
            raise RuntimeError(
                f"backend='cuda' but fmmformer_pl.attention.cuda.{name} is unavailable: {err}"
            ) from err
        return None
