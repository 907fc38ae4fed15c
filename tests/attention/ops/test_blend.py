"""The blend's kernels (``ops/blend``) against the PyTorch blend: the output, every field's
gradient and every weight's gradient, for each weight granularity. ``helpers.py`` says where
each test runs."""

from __future__ import annotations

import pytest
import torch

from fmmformer_pl.attention.blend import Blend
from fmmformer_pl.attention.config import AttentionConfig, BlendWeight

from .helpers import INTERPRET, check, cuda_rel, gpu, interpreter

_CASES = [
    ("fmm", ["elu", "elu_flip"], "head"),
    ("fmm", ["elu"], None),
    ("linear", ["elu"] * 3, "channel"),
]


def _blend(kind, maps, group, granularity, heads, dim, backend="auto"):
    cfg = AttentionConfig(
        kind=kind, bandwidth=4, feature_maps=maps, backend=backend,
        near_weight=BlendWeight(0.7, granularity), far_weights=[BlendWeight(0.3, granularity)],
        far_group_weight=None if group is None else BlendWeight(-0.4, group),
    )  # fmt: skip
    blend = Blend(cfg, heads, dim)
    with torch.no_grad():
        for p in blend.parameters():
            p.add_(torch.randn_like(p))
    return blend


@interpreter
@pytest.mark.parametrize("kind, maps, group", _CASES)
@pytest.mark.parametrize("granularity", ["scalar", "head", "channel"])
def test_blend_kernels(kind, maps, group, granularity):
    from fmmformer_pl.attention.ops.blend.op import blend_kernel

    heads, dim = 3, 24
    blend = _blend(kind, maps, group, granularity, heads, dim, backend="reference")
    n = len(maps) + (kind == "fmm")
    fields = [torch.randn(2, 150, heads, dim).transpose(1, 2) for _ in range(n)]

    def split(xs):
        return (xs[0], xs[1:]) if kind == "fmm" else (None, xs)

    check(
        lambda *xs: blend_kernel(list(xs), blend.coefficients(), plan=INTERPRET),
        lambda *xs: blend(*split(list(xs))),
        fields,
        params=list(blend.parameters()),
    )


@interpreter
def test_blend_module_runs_the_kernel_through_the_dispatch():
    """Blend(..., plan=interpret) takes the kernel; its reference and naive.py agree."""
    from fmmformer_pl.attention.ops.blend.naive import blend_reference

    blend = _blend("fmm", ["elu", "elu_flip"], "head", "channel", 2, 16)
    fields = [torch.randn(1, 2, 70, 16) for _ in range(3)]
    out = blend(fields[0], fields[1:], plan=INTERPRET)
    assert out.grad_fn is not None and "BlendFields" in type(out.grad_fn).__name__
    torch.testing.assert_close(out, blend(fields[0], fields[1:]))
    torch.testing.assert_close(out, blend_reference(fields, blend.coefficients()))


@interpreter
def test_blend_kernel_declines_strided_fields():
    """A sliced (non-dense) field would get a contiguous gradient buffer written with its own
    strides: the kernel declines it and the PyTorch blend runs."""
    from fmmformer_pl.attention.ops.blend.op import blend_kernel

    fields = [torch.randn(1, 2, 70, 32)[..., :16] for _ in range(2)]
    assert blend_kernel(fields, torch.ones(2, 2, 16), plan=INTERPRET) is None
    dense = [f.contiguous() for f in fields]
    assert blend_kernel(dense, torch.ones(2, 2, 16), plan=INTERPRET) is not None


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("granularity", ["scalar", "head", "channel"])
@pytest.mark.parametrize("kind, maps, group", _CASES)
def test_fused_blend_matches_pytorch_blend(dtype, granularity, kind, maps, group):
    """Blend on CUDA fields (one Triton kernel each way) against the PyTorch blend in float64:
    the output, every field's gradient and every weight's gradient."""
    heads, dim = 4, 40
    fused = _blend(kind, maps, group, granularity, heads, dim).cuda()
    cfg = fused.config
    ref = Blend(AttentionConfig(**{**cfg.__dict__, "backend": "reference"}), heads, dim).cuda()
    ref.load_state_dict(fused.state_dict())
    ref.double()
    n_fields = len(maps) + (kind == "fmm")
    fields = [
        torch.randn(2, 777, heads, dim, device="cuda").to(dtype).transpose(1, 2)
        for _ in range(n_fields)
    ]
    fast_in = [f.detach().clone().requires_grad_(True) for f in fields]
    ref_in = [f.detach().double().requires_grad_(True) for f in fields]

    def run(blend, xs):
        return blend(xs[0], xs[1:]) if kind == "fmm" else blend(None, xs)

    out, expect = run(fused, fast_in), run(ref, ref_in)
    assert out.dtype == dtype
    grad = torch.randn_like(expect).to(dtype).double()  # both sides get the same rounded dy
    got = torch.autograd.grad(out, fast_in + list(fused.parameters()), grad.to(dtype))
    want = torch.autograd.grad(expect, ref_in + list(ref.parameters()), grad)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    assert cuda_rel(out, expect) < tol
    for g, w in zip(got, want, strict=True):
        assert cuda_rel(g, w) < tol, (cuda_rel(g, w), g.shape)
