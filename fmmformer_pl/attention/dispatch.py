"""The one place that chooses between the PyTorch references and the GPU kernels (``ops/``).

A layer call (``FMMAttention._attend``) asks ``route`` once: "fused" runs near field, far
fields and blend as one autograd node (``ops/fmm``); "fields" runs them one by one, each on
its kernel where that covers the case (``near_field_kernel`` ...), else on its reference;
"reference" runs the PyTorch references only. The public functions ``near_field``,
``far_field(s)`` and ``Blend`` ask this module for their kernel in the same way.

The kernels are tried for CUDA tensors with ``backend`` "auto" or "cuda" (and for CPU tensors
when ``KernelPlan.interpret``: Triton's interpreter, in the tests). ``backend="cuda"`` turns
"the kernels do not cover this" into an error. The ``ops`` modules import triton; they are
imported here on first use, so this module imports on machines without triton or a GPU.
"""

from __future__ import annotations

import importlib
from typing import Literal

import torch

from .ops.plan import DEFAULT_PLAN, KernelPlan

Route = Literal["fused", "fields", "reference"]
_OPS = "fmmformer_pl.attention.ops"


def check_backend(backend: str) -> None:
    if backend not in ("auto", "reference", "cuda"):
        raise ValueError(f"backend must be 'auto', 'reference' or 'cuda', got {backend!r}")


def wants_kernels(backend: str, q: torch.Tensor, plan: KernelPlan = DEFAULT_PLAN) -> bool:
    """Whether ``backend`` asks for the kernels for q (raises for a bad backend, or for
    ``backend="cuda"`` with CPU tensors). Plain checks: torch.compile traces them."""
    check_backend(backend)
    if backend == "reference":
        return False
    if not q.is_cuda and not plan.interpret:
        if backend == "cuda":
            raise RuntimeError(f"backend='cuda' needs CUDA tensors, got device {q.device}")
        return False
    return True


def _entry(module: str, name: str, backend: str):
    """``ops.<module>.<name>``, or None where triton does not import (an error for
    ``backend="cuda"``)."""
    try:
        loaded = importlib.import_module(f"{_OPS}.{module}")  # sys.modules once imported
    except ImportError as err:
        if backend == "cuda":
            raise RuntimeError(
                f"backend='cuda' but the GPU kernels are unavailable: {err}"
            ) from err
        return None
    return getattr(loaded, name)


def _covered(out, backend: str, what: str):
    if out is None and backend == "cuda":
        raise RuntimeError(f"backend='cuda': the {what} kernels do not support this case")
    return out


# torch.compile does not trace into the eager entries below: the kernels are already fused,
# and their host code (launch grids, a dropout seed drawn with .item()) would only cause
# graph breaks. Compiled code runs the fused custom op instead (``compiled_fused_op``).
@torch.compiler.disable
def near_field(q, k, v, bandwidth, causal, key_padding_mask, dropout_p, backend,
               plan: KernelPlan = DEFAULT_PLAN) -> torch.Tensor | None:  # fmt: skip
    """The near field on its kernels, or None: run the reference."""
    if not wants_kernels(backend, q, plan):
        return None
    fn = _entry("near_field.op", "near_field_kernel", backend)
    if fn is None:
        return None
    out = fn(q, k, v, bandwidth, causal=causal, key_padding_mask=key_padding_mask,
             dropout_p=dropout_p, plan=plan)  # fmt: skip
    return _covered(out, backend, "near-field")


@torch.compiler.disable
def far_fields(q, k, v, feature_maps, causal, normalize, key_padding_mask, backend,
               plan: KernelPlan = DEFAULT_PLAN, feature_normalize: bool = False,
               eps: float = 0.0) -> list[torch.Tensor] | None:  # fmt: skip
    """The far fields of several feature maps on their kernels, or None: run the reference."""
    if not wants_kernels(backend, q, plan):
        return None
    fn = _entry("far_field.op", "far_fields_kernel", backend)
    if fn is None:
        return None
    outs = fn(q, k, v, feature_maps, causal=causal, normalize=normalize,
              key_padding_mask=key_padding_mask, plan=plan,
              feature_normalize=feature_normalize, eps=eps)  # fmt: skip
    return _covered(outs, backend, "far-field")


def blend(fields, coefficients, backend, plan: KernelPlan = DEFAULT_PLAN) -> torch.Tensor | None:
    """``sum_f c[f] * fields[f]`` on the blend kernel, or None: blend in PyTorch.
    ``coefficients()`` gives c (``Blend.coefficients``), called only where the kernel runs.

    ``backend="cuda"`` is a requirement on the fields, not on this sum: CPU fields (e.g. a
    decoding step's) still blend in PyTorch, and the kernel declining is no error. Compiled
    code blends in PyTorch too, which the compiler fuses with its neighbours (no graph break:
    a decoding step compiles whole, ``StaticDecoder(compile=True)``)."""
    if torch.compiler.is_compiling():
        return None
    return _blend_eager(fields, coefficients, backend, plan)


@torch.compiler.disable
def _blend_eager(fields, coefficients, backend, plan: KernelPlan) -> torch.Tensor | None:
    backend = "reference" if backend == "reference" else "auto"
    if not wants_kernels(backend, fields[0], plan):
        return None
    fn = _entry("blend.op", "blend_kernel", backend)
    return None if fn is None else fn(fields, coefficients(), plan=plan)


@torch.compiler.disable
def _fused_eager(*args, **kwargs):
    fn = _entry("fmm.op", "fmm_attention_kernel", kwargs["backend"])
    del kwargs["backend"]
    return None if fn is None else fn(*args, **kwargs)


# The custom op that compiled code runs, resolved outside tracing (torch.compile does not
# trace imports): at import on machines with CUDA, else by ``prepare`` (an interpreting plan).
_COMPILED_OP: list = []


def prepare(plan: KernelPlan) -> None:
    """Import the fused custom op where this plan may use it (called by ``FMMAttention``)."""
    if _COMPILED_OP or not (torch.cuda.is_available() or plan.interpret):
        return
    try:
        from .ops.fmm.custom_op import fmm_attention_op
    except Exception:  # noqa: BLE001 - a broken triton install must not break the layer
        return
    _COMPILED_OP.append(fmm_attention_op)


prepare(DEFAULT_PLAN)


def route(backend: str, q: torch.Tensor, fusable: bool, plan: KernelPlan = DEFAULT_PLAN) -> Route:
    """How one layer call runs: "fused" (one node), "fields" (field by field, each on its
    kernel where it covers the case) or "reference". ``fusable``: the layer's fields are what
    the fused node computes (a far field, feature maps the kernels compute)."""
    if not wants_kernels(backend, q, plan):
        return "reference"
    if fusable and (not torch.compiler.is_compiling() or _COMPILED_OP or backend == "cuda"):
        return "fused"
    return "fields"


def fused(q, k, v, coeffs, bandwidth, feature_maps, causal, normalize, key_padding_mask,
          dropout_p, backend, plan: KernelPlan = DEFAULT_PLAN, feature_normalize: bool = False,
          eps: float = 0.0) -> torch.Tensor | None:  # fmt: skip
    """Near field, far fields and blend as one node (``ops/fmm``), or None where the kernels
    do not cover the case (the caller then runs the fields). Under torch.compile the custom
    op, which traces into the compiled graph (the eager autograd.Function would break it)."""
    kw = dict(causal=causal, normalize=normalize, key_padding_mask=key_padding_mask,
              dropout_p=dropout_p, plan=plan, feature_normalize=feature_normalize,
              eps=eps)  # fmt: skip
    args = (q, k, v, coeffs, bandwidth, feature_maps)
    if torch.compiler.is_compiling():
        if not _COMPILED_OP:
            if backend == "cuda":
                raise RuntimeError(
                    "backend='cuda' but the fused GPU kernels (triton) are unavailable"
                )
            return None
        return _COMPILED_OP[0](*args, **kw)
    return _fused_eager(*args, backend=backend, **kw)
