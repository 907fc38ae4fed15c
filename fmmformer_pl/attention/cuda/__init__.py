"""Fast GPU paths of the near field and the far field (Triton kernels, FlashAttention).

``near_field`` and ``far_field`` (``fmmformer_pl.attention``) call these for CUDA inputs
unless ``backend="reference"``. Each returns the result, or None for a case the fast path does
not cover (the caller then runs the PyTorch reference). This module imports nothing from
triton until a function is called, so it imports on machines without triton or a GPU; there
the functions return None.

    near_field_cuda: Triton sliding-window flash kernel with in-kernel dropout (``near.py``).
    far_field_cuda: Triton chunked linear attention with float32 states (``far.py``).
    far_fields_cuda: the same for several feature maps, two per pass over the inputs.
    blend_cuda: the weighted sum of the fields, one kernel forward and one backward.
    fmm_attention_cuda: all of the above as one autograd node (what FMMAttention runs).
"""

from __future__ import annotations

import importlib

import torch


def _usable(q: torch.Tensor) -> bool:
    return q.is_cuda and torch.cuda.is_available()


def _kernel(q: torch.Tensor, module: str, name: str):
    """``name`` from the Triton module ``module`` of this package (imported on first use), or
    None when q is not a CUDA tensor or triton does not import."""
    if not _usable(q):
        return None
    try:
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)
    except ImportError:
        return None


# torch.compile does not trace into these: the kernels are already fused, and their host code
# (launch grids, a dropout seed drawn with .item()) would only cause graph breaks. Compiling a
# model fuses everything around the attention; the attention itself runs these kernels.
@torch.compiler.disable
def near_field_cuda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bandwidth: int,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor | None:
    """Banded softmax attention on the GPU (same arguments and result as ``near_field``)."""
    fn = _kernel(q, "near", "band_attention_triton")
    if fn is None:
        return None
    return fn(
        q, k, v, bandwidth, causal=causal, key_padding_mask=key_padding_mask, dropout_p=dropout_p
    )


@torch.compiler.disable
def far_field_cuda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    feature_map="elu",
    causal: bool = False,
    normalize: bool = True,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Kernelised linear attention on the GPU (same arguments and result as ``far_field``)."""
    fn = _kernel(q, "far", "far_field_triton")
    if fn is None:
        return None
    return fn(
        q, k, v, feature_map, causal=causal, normalize=normalize, key_padding_mask=key_padding_mask
    )


@torch.compiler.disable
def far_fields_cuda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    feature_maps,
    causal: bool = False,
    normalize: bool = True,
    key_padding_mask: torch.Tensor | None = None,
) -> list[torch.Tensor] | None:
    """Several feature maps' far fields at once (same arguments and result as ``far_fields``)."""
    fn = _kernel(q, "far", "far_fields_triton")
    if fn is None:
        return None
    return fn(
        q, k, v, feature_maps, causal=causal, normalize=normalize, key_padding_mask=key_padding_mask
    )


@torch.compiler.disable
def blend_cuda(fields: list[torch.Tensor], coeffs: torch.Tensor) -> torch.Tensor | None:
    """``sum_f coeffs[f] * fields[f]`` in one kernel each way (``blend.py``), or None."""
    fn = _kernel(fields[0], "blend", "blend_triton")
    return None if fn is None else fn(fields, coeffs)


@torch.compiler.disable
def fmm_attention_cuda(
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
) -> torch.Tensor | None:
    """Near field, far fields and blend as one autograd node (``fmm.py``), or None."""
    fn = _kernel(q, "fmm", "fmm_attention_triton")
    if fn is None:
        return None
    return fn(
        q, k, v, coeffs, bandwidth, feature_maps, causal=causal, normalize=normalize,
        key_padding_mask=key_padding_mask, dropout_p=dropout_p,
    )  # fmt: skip


__all__ = [
    "near_field_cuda",
    "far_field_cuda",
    "far_fields_cuda",
    "blend_cuda",
    "fmm_attention_cuda",
]
