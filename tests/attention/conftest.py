"""Shared helpers for the attention tests: random inputs and reference comparisons."""

from __future__ import annotations

import math

import pytest
import torch


def random_qkv(batch=2, heads=3, seq=63, head_dim=8, head_dim_v=6, dtype=torch.float64, seed=0):
    """q, k ``(batch, heads, seq, head_dim)`` and v ``(..., head_dim_v)``, requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(batch, heads, seq, head_dim)] * 2 + [(batch, heads, seq, head_dim_v)]
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def random_padding(batch, seq, seed=0):
    """Bool (batch, seq), True = padding; the last batch element is padded everywhere."""
    gen = torch.Generator().manual_seed(seed + 1)
    mask = torch.rand(batch, seq, generator=gen) < 0.4
    mask[-1] = True
    return mask


def outputs_and_grads(fn, q, k, v, seed=0):
    """fn(q, k, v) and the gradients of <fn(q, k, v), g> w.r.t. (q, k, v) for a fixed random g."""
    out = fn(q, k, v)
    gen = torch.Generator().manual_seed(seed + 2)
    g = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    grads = torch.autograd.grad(out, (q, k, v), g)
    return out, grads


def assert_matches(fast, reference, q, k, v, atol=1e-10, rtol=1e-8):
    """Forward and (q, k, v) gradients of ``fast`` equal ``reference``; all finite."""
    out, grads = outputs_and_grads(fast, q, k, v)
    ref_out, ref_grads = outputs_and_grads(reference, q, k, v)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref_out, atol=atol, rtol=rtol)
    for name, g, ref_g in zip("qkv", grads, ref_grads, strict=True):
        assert torch.isfinite(g).all(), f"non-finite grad of {name}"
        torch.testing.assert_close(
            g, ref_g, atol=atol, rtol=rtol, msg=lambda m, name=name: f"grad of {name}: {m}"
        )


def dense_band_dropout(q, k, v, visible, keep, p):
    """Banded softmax attention with dropout, densely: softmax over the ``visible`` keys
    (bool, broadcast to (batch, heads, seq, seq); empty rows give 0), then the probabilities
    times the 0/1 ``keep`` pattern / (1 - p). The oracle of the kernels' in-kernel dropout."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~visible, float("-inf"))
    top = scores.amax(-1, keepdim=True).detach()
    weights = torch.exp(scores - torch.where(torch.isfinite(top), top, 0.0)) * visible
    total = weights.sum(-1, keepdim=True)
    probs = weights / torch.where(total > 0, total, 1.0)
    return (probs * keep / (1 - p)) @ v


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def exact_fp32():
    """float32 products exact ("highest"): the kernels follow torch's matmul precision."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(old)
