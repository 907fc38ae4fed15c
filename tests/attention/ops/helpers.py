"""Shared pieces of the ops' tests: marks, inputs, and comparisons against the references.

``interpreter`` tests run the kernels on CPU tensors (Triton's interpreter; skipped with CUDA,
where the interpreter would replace the real kernels, and without triton). ``gpu`` tests run
the compiled kernels (skipped without CUDA). Nothing here imports triton.
"""

from __future__ import annotations

import pytest
import torch

from fmmformer_pl.attention.ops.plan import KernelPlan

CUDA = torch.cuda.is_available()


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


HAS_TRITON = _has_triton()

# The interpreter warns on every launch (numpy scalar conversions, CPU tensors).
_QUIET = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
_INTERPRETER = pytest.mark.skipif(
    CUDA or not HAS_TRITON,
    reason="the kernel interpreter runs without CUDA and needs triton (extra kernels-cpu)",
)

# The kernels on CPU tensors (the interpreter counts 8 SMs).
INTERPRET = KernelPlan(interpret=True)
# The fused node's general path (the field kernels), which short bidirectional cases would
# otherwise leave for the short path (``test_short.py`` runs that), and the short path forced
# at any length, its states in two segments.
GENERAL = INTERPRET.with_(short=dict(max_seq=0))
SHORT = INTERPRET.with_(
    short=dict(max_seq=1 << 20, max_blocks_per_sm=1 << 20, programs_per_sm=1, state_segments=2)
)


def interpreter(fn):
    for mark in (*_QUIET, _INTERPRETER):
        fn = mark(fn)
    return fn


def gpu(fn):
    fn = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")(fn)
    return pytest.mark.gpu(fn)


# ------------------------------------------------------------------ interpreter (CPU)


def rel(a, b):
    # Floor 1e-3: some gradients vanish in exact arithmetic (one visible key), leaving rounding.
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-3)).item()


def inputs(batch, heads, seq, dim, dim_v, seed):
    """CPU q, k, v (q and v laid out as a model makes them) and a random padding mask."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seq, heads, dim, generator=g).transpose(1, 2)  # model layout
    k = torch.randn(batch, heads, seq, dim, generator=g)
    v = torch.randn(batch, seq, heads, dim_v, generator=g).transpose(1, 2)
    mask = torch.rand(batch, seq, generator=g) < 0.3
    return q, k, v, mask


def check(fast, ref, tensors, params=(), ref_params=None, tol=1e-5):
    """Forward and gradients (inputs and params; ref's own copies of them in ref_params) of
    fast (float32) vs ref (float64 inputs)."""
    xs = [t.detach().clone().requires_grad_(True) for t in tensors]
    xr = [t.detach().double().requires_grad_(True) for t in tensors]
    out, expect = fast(*xs), ref(*xr)
    g = torch.randn(expect.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = torch.autograd.grad(out, xs + list(params), g.float())
    want = torch.autograd.grad(expect, xr + list(params if ref_params is None else ref_params), g)
    assert rel(out, expect) < tol
    for a, b in zip(got, want, strict=True):
        assert rel(a, b) < tol, rel(a, b)


# ------------------------------------------------------------------ GPU

# Relative error bounds (output, gradients): bf16/fp16 round inputs and outputs to 8/11 bits.
# fp16 far-field products run in bf16 (so that 1 / den cannot underflow): bf16-like bounds.
TOL = {torch.bfloat16: (1.5e-2, 3e-2), torch.float16: (1e-2, 2e-2), torch.float32: (1e-4, 2e-4)}


def cuda_inputs(batch, heads, seq, dim, dim_v, dtype, seq_major=True):
    """q, k, v with fresh random values; v (and q) laid out (batch, seq, heads, dim) and
    transposed, as a model produces them, when seq_major."""
    g = torch.Generator(device="cuda").manual_seed(torch.randint(0, 2**31, (1,)).item())

    def make(d):
        if seq_major:
            t = torch.randn(batch, seq, heads, d, device="cuda", generator=g).transpose(1, 2)
        else:
            t = torch.randn(batch, heads, seq, d, device="cuda", generator=g)
        return t.to(dtype)

    return make(dim), make(dim), make(dim_v)


def cuda_padding(batch, seq, kind):
    if kind == "none":
        return None
    lengths = torch.randint(1, seq + 1, (batch,))
    lengths[0] = max(1, seq // 3)
    mask = torch.arange(seq)[None, :] >= lengths[:, None]  # right padding
    if kind == "scattered":
        mask = torch.rand(batch, seq) < 0.3
        mask[:, 0] = False
    return mask.cuda()


def cuda_rel(a, b):
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-12)).item()


def compare(fast_fn, ref_fn, q, k, v, dtype, label):
    """Forward and backward of fast (inputs in dtype) vs reference (float64)."""
    qf, kf, vf = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    qr, kr, vr = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    out = fast_fn(qf, kf, vf)
    ref = ref_fn(qr, kr, vr)
    assert out.dtype == dtype and out.shape == ref.shape
    assert torch.isfinite(out).all(), f"{label}: non-finite output"
    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    errs = {
        "out": cuda_rel(out, ref),
        "dq": cuda_rel(qf.grad, qr.grad),
        "dk": cuda_rel(kf.grad, kr.grad),
        "dv": cuda_rel(vf.grad, vr.grad),
    }
    tol_out, tol_grad = TOL[dtype]
    msg = f"{label}: " + " ".join(f"{n}={e:.2e}" for n, e in errs.items())
    print(msg)
    assert errs["out"] < tol_out, msg
    for name in ("dq", "dk", "dv"):
        # A gradient that is zero in the reference (band 1: softmax over one key) must be tiny.
        ref_grad = {"dq": qr.grad, "dk": kr.grad, "dv": vr.grad}[name]
        if ref_grad.norm() < 1e-9:
            fast_grad = {"dq": qf.grad, "dk": kf.grad, "dv": vf.grad}[name]
            assert fast_grad.float().abs().max() < 1e-2, msg
        else:
            assert errs[name] < tol_grad, msg


def cat_fields(fn):
    """Several far fields as one tensor (last dim), so that compare checks them together."""
    return lambda a, b, c: torch.cat(fn(a, b, c), dim=-1)
