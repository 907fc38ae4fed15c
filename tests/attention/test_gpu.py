"""GPU fast paths (``fmmformer_pl.attention.cuda``) against the PyTorch reference.

Every case draws fresh random inputs, runs the fast path in the test dtype and the reference
(``backend="reference"``) in float64 on the same (rounded) values, and compares the output
and the gradients of q, k, v by ||fast - ref|| / ||ref||. Skipped without CUDA (or triton).
Run on the GPU machine: ``python -m pytest -m gpu tests/attention/test_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch

from fmmformer_pl.attention import far_field, far_fields, near_field
from fmmformer_pl.attention.config import AttentionConfig
from fmmformer_pl.attention.layer import FMMAttention
from fmmformer_pl.attention.naive import visible_keys

from .conftest import dense_band_dropout

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# Relative error bounds (output, gradients): bf16/fp16 round inputs and outputs to 8/11 bits.
# fp16 far-field products run in bf16 (so that 1 / den cannot underflow): bf16-like bounds.
TOL = {torch.bfloat16: (1.5e-2, 3e-2), torch.float16: (1e-2, 2e-2), torch.float32: (1e-4, 2e-4)}


@pytest.fixture(autouse=True)
def _exact_fp32(exact_fp32):
    """float32 cases follow torch's matmul precision: ask for exact float32 products."""


def _inputs(batch, heads, seq, dim, dim_v, dtype, seq_major=True):
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


def _padding(batch, seq, kind):
    if kind == "none":
        return None
    lengths = torch.randint(1, seq + 1, (batch,))
    lengths[0] = max(1, seq // 3)
    mask = torch.arange(seq)[None, :] >= lengths[:, None]  # right padding
    if kind == "scattered":
        mask = torch.rand(batch, seq) < 0.3
        mask[:, 0] = False
    return mask.cuda()


def _rel(a, b):
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-12)).item()


def _compare(fast_fn, ref_fn, q, k, v, dtype, label):
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
        "out": _rel(out, ref),
        "dq": _rel(qf.grad, qr.grad),
        "dk": _rel(kf.grad, kr.grad),
        "dv": _rel(vf.grad, vr.grad),
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


# ---------------------------------------------------------------- far field


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize(
    "shape", [(2, 3, 1, 64, 64), (2, 3, 63, 64, 64), (1, 2, 1000, 40, 24), (1, 8, 5000, 64, 64)]
)
def test_far_field_matches_reference(dtype, causal, normalize, shape):
    batch, heads, seq, dim, dim_v = shape
    q, k, v = _inputs(batch, heads, seq, dim, dim_v, dtype)
    mask = _padding(batch, seq, "right")
    kw = dict(feature_map="elu", causal=causal, normalize=normalize, key_padding_mask=mask)
    _compare(
        lambda a, b, c: far_field(a, b, c, backend="cuda", **kw),
        lambda a, b, c: far_field(a, b, c, backend="reference", **kw),
        q, k, v, dtype, f"far {shape} {dtype} causal={causal} normalize={normalize}",
    )  # fmt: skip


@pytest.mark.parametrize("feature_map", ["elu", "elu_flip", "tanh", "relu", "softplus"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padding", ["none", "scattered"])
def test_far_field_feature_maps_and_padding(feature_map, causal, padding):
    q, k, v = _inputs(2, 4, 777, 64, 64, torch.bfloat16, seq_major=False)
    mask = _padding(2, 777, padding)
    kw = dict(feature_map=feature_map, causal=causal, key_padding_mask=mask)
    _compare(
        lambda a, b, c: far_field(a, b, c, backend="cuda", **kw),
        lambda a, b, c: far_field(a, b, c, backend="reference", **kw),
        q, k, v, torch.bfloat16, f"far {feature_map} causal={causal} padding={padding}",
    )  # fmt: skip


@pytest.mark.parametrize("causal", [False, True])
def test_far_field_long_sequence_many_segments(causal):
    """70k positions: ~1100 chunks over many segments (the scan across segments)."""
    q, k, v = _inputs(1, 2, 70_001, 64, 64, torch.bfloat16)
    kw = dict(feature_map="elu", causal=causal)
    _compare(
        lambda a, b, c: far_field(a, b, c, backend="cuda", **kw),
        lambda a, b, c: far_field(a, b, c, backend="reference", **kw),
        q, k, v, torch.bfloat16, f"far long causal={causal}",
    )  # fmt: skip


def _cat_fields(fn):
    """Several far fields as one tensor (last dim), so that _compare checks them together."""
    return lambda a, b, c: torch.cat(fn(a, b, c), dim=-1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("maps", [("elu", "elu_flip"), ("tanh", "softplus", "relu")])
@pytest.mark.parametrize("shape", [(2, 3, 63, 64, 64), (1, 2, 1000, 40, 24), (1, 8, 5000, 64, 64)])
def test_far_fields_several_maps_match_reference(dtype, causal, normalize, maps, shape):
    """Two maps per pass (and a third in a second pass), gradients summed over the maps."""
    batch, heads, seq, dim, dim_v = shape
    q, k, v = _inputs(batch, heads, seq, dim, dim_v, dtype)
    mask = _padding(batch, seq, "scattered")
    kw = dict(causal=causal, normalize=normalize, key_padding_mask=mask)
    _compare(
        _cat_fields(lambda a, b, c: far_fields(a, b, c, maps, backend="cuda", **kw)),
        _cat_fields(lambda a, b, c: far_fields(a, b, c, maps, backend="reference", **kw)),
        q, k, v, dtype, f"far_fields {maps} {shape} {dtype} causal={causal} norm={normalize}",
    )  # fmt: skip


@pytest.mark.parametrize(
    "causal, paired", [(False, ()), (True, ()), (True, ("fwd", "dq", "dkv")), (True, None)]
)
def test_far_fields_long_sequence_many_segments(causal, paired, monkeypatch):
    """Long sequences; causal walks of one map at a time, of both maps at once, and the plan's
    mix (paired None)."""
    from fmmformer_pl.attention.cuda import far

    if paired is not None:
        monkeypatch.setattr(far, "PLAN", {**far.PLAN, "pair_maps_causal": paired})
    q, k, v = _inputs(1, 2, 70_001, 64, 64, torch.bfloat16)
    kw = dict(causal=causal)
    maps = ("elu", "elu_flip")
    _compare(
        _cat_fields(lambda a, b, c: far_fields(a, b, c, maps, backend="cuda", **kw)),
        _cat_fields(lambda a, b, c: far_fields(a, b, c, maps, backend="reference", **kw)),
        q, k, v, torch.bfloat16, f"far_fields long causal={causal}",
    )  # fmt: skip


@pytest.mark.parametrize("causal", [False, True])
def test_far_fields_one_output_unused(causal):
    """Only the second map reaches the loss: the first output's gradient is zero (autograd
    passes zeros, or None where materialize_grads is off: far_backward takes both)."""
    q, k, v = _inputs(1, 2, 300, 64, 64, torch.float32)
    _compare(
        lambda a, b, c: far_fields(a, b, c, ("elu", "elu_flip"), causal=causal, backend="cuda")[1],
        lambda a, b, c: far_field(a, b, c, "elu_flip", causal=causal, backend="reference"),
        q, k, v, torch.float32, f"far_fields unused output causal={causal}",
    )  # fmt: skip


@pytest.mark.parametrize("causal", [False, True])
def test_cached_launches_match_reference_across_calls_and_alignments(causal):
    """cuda/launch.py: a repeated call hands its arguments to the compiled kernels directly
    (from the third call of a kernel with the same arguments, straight to its C launcher), and
    bf16 views one element off 16-byte alignment make Triton specialise anew. Every call,
    forward and backward, matches the reference."""
    from fmmformer_pl.attention.cuda import launch as launch_module

    for cache in (launch_module._CACHE, launch_module._EXACT, launch_module._LEADING):
        cache.clear()
    maps, shape, tol_out, tol_grad = ("elu", "elu_flip"), (1, 2, 333, 64), *TOL[torch.bfloat16]
    n = 2 * 333 * 64
    for offset in (0, 0, 0, 1, 1, 1):
        bases = [torch.randn(n + offset, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
        bases = [b.requires_grad_() for b in bases]
        q, k, v = (b[offset:].view(shape) for b in bases)
        assert (q.data_ptr() % 16 == 0) == (offset == 0)
        refs = [b.detach()[offset:].view(shape).double().requires_grad_() for b in bases]
        out = torch.cat(far_fields(q, k, v, maps, causal=causal, backend="cuda"), dim=-1)
        ref = torch.cat(far_fields(*refs, maps, causal=causal, backend="reference"), dim=-1)
        grad = torch.randn_like(ref)
        out.backward(grad.to(out.dtype))
        ref.backward(grad)
        assert _rel(out, ref) < tol_out, (offset, _rel(out, ref))
        for b, r in zip(bases, refs, strict=True):
            assert _rel(b.grad[offset:].view(shape), r.grad) < tol_grad, offset
    compiled = [e for e in launch_module._CACHE.values() if e is not None]
    # forward and backward kernels, once for the aligned and once for the unaligned inputs
    assert len(compiled) == len(launch_module._CACHE) >= 6
    # the exact hits of the later calls went straight to the C launchers
    assert any(e[2] is not None for e in launch_module._EXACT.values())


def test_far_field_callable_feature_map_falls_back():
    q, k, v = _inputs(1, 2, 100, 32, 32, torch.float32)
    phi = lambda x: torch.nn.functional.elu(x) + 1.0  # noqa: E731
    out = far_field(q, k, v, feature_map=phi)  # auto: the fast path declines, reference runs
    ref = far_field(q, k, v, feature_map="elu", backend="reference")
    torch.testing.assert_close(out, ref)
    with pytest.raises(RuntimeError, match="does not support"):
        far_field(q, k, v, feature_map=phi, backend="cuda")


# ---------------------------------------------------------------- near field


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bandwidth", [1, 5, 64, 100])
@pytest.mark.parametrize("shape", [(2, 3, 1, 64, 64), (2, 3, 63, 64, 64), (1, 2, 1000, 40, 24)])
def test_near_field_matches_reference(dtype, causal, bandwidth, shape):
    batch, heads, seq, dim, dim_v = shape
    q, k, v = _inputs(batch, heads, seq, dim, dim_v, dtype)
    mask = _padding(batch, seq, "right")
    kw = dict(causal=causal, key_padding_mask=mask)
    _compare(
        lambda a, b, c: near_field(a, b, c, bandwidth, backend="cuda", **kw),
        lambda a, b, c: near_field(a, b, c, bandwidth, backend="reference", **kw),
        q, k, v, dtype, f"near {shape} {dtype} w={bandwidth} causal={causal}",
    )  # fmt: skip


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bandwidth", [5, 64, 100])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_near_field_one_kernel_backward_matches_reference(causal, bandwidth, dtype, monkeypatch):
    """The backward as one kernel (``near.MERGED_BACKWARD`` on; the tests above run the
    default, the dq kernel then the dk/dv kernel)."""
    from fmmformer_pl.attention.cuda import near

    monkeypatch.setattr(near, "MERGED_BACKWARD", {"wide": True, "narrow": True})
    q, k, v = _inputs(2, 3, 1000, 40, 24, dtype)
    kw = dict(causal=causal, key_padding_mask=_padding(2, 1000, "right"))
    _compare(
        lambda a, b, c: near_field(a, b, c, bandwidth, backend="cuda", **kw),
        lambda a, b, c: near_field(a, b, c, bandwidth, backend="reference", **kw),
        q, k, v, dtype, f"near one-kernel backward {dtype} w={bandwidth} causal={causal}",
    )  # fmt: skip


@pytest.mark.parametrize("causal", [False, True])
def test_near_field_scattered_padding_and_empty_rows(causal):
    """Padding everywhere but position 0 of one sequence: rows with no key give 0, no NaN."""
    q, k, v = _inputs(2, 2, 300, 64, 64, torch.bfloat16)
    mask = _padding(2, 300, "scattered")
    mask[1, 1:] = True
    kw = dict(causal=causal, key_padding_mask=mask)
    _compare(
        lambda a, b, c: near_field(a, b, c, 8, backend="cuda", **kw),
        lambda a, b, c: near_field(a, b, c, 8, backend="reference", **kw),
        q, k, v, torch.bfloat16, f"near scattered causal={causal}",
    )  # fmt: skip
    out = near_field(q, k, v, 8, backend="cuda", **kw)
    assert (out[1, :, 9:] == 0).all()  # beyond the band of the only key: empty rows


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padding", ["none", "right"])
@pytest.mark.parametrize("width", [5, 16, 20, 64])
def test_near_field_dropout_matches_masked_reference(causal, padding, width):
    """Dropout: the kernel's keep pattern (regenerated from the seed) applied to the dense
    reference gives the same output and gradients; about 1 - p of the entries are kept.
    Widths 5 and 16 run the 16-wide tiles, 20 the 32-wide ones, 64 the wide ones."""
    from fmmformer_pl.attention.cuda.near import band_attention_triton, dropout_keep_matrix

    batch, heads, seq, dim, p, seed = 2, 2, 300, 64, 0.25, 1234
    q, k, v = _inputs(batch, heads, seq, dim, dim, torch.float32)
    mask = _padding(batch, seq, padding)
    keep = torch.stack(
        [dropout_keep_matrix(seq, width, p, seed + n, q.device) for n in range(batch * heads)]
    ).view(batch, heads, seq, seq)
    visible = visible_keys(seq, width, causal, mask, q.device)
    kept = keep[visible.expand_as(keep)].float().mean().item()
    assert abs(kept - (1 - p)) < 0.03, kept

    _compare(
        lambda a, b, c: band_attention_triton(a, b, c, width, causal, mask, p, seed),
        lambda a, b, c: dense_band_dropout(a, b, c, visible, keep, p), q, k, v, torch.float32, f"near dropout causal={causal} padding={padding}",
    )  # fmt: skip


@pytest.mark.parametrize("width", [5, 64])
def test_near_field_dropout_seed_read_from_device_memory(width):
    """The compiled op's seed is a device tensor the kernels load: same draws as the int."""
    from fmmformer_pl.attention.cuda.near import near_backward, near_forward

    q, k, v = _inputs(2, 2, 300, 64, 64, torch.bfloat16)
    mask = _padding(2, 300, "right")
    dout = torch.randn_like(q)
    results = []
    for seed in (1234, torch.tensor([1234], device="cuda")):
        out, saved = near_forward(q, k, v, mask, width, False, 0.3, seed)
        results.append([out, *near_backward(saved, dout)])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_near_field_dropout_through_public_api_is_random_but_seeded():
    q, k, v = _inputs(1, 2, 200, 64, 64, torch.bfloat16)
    torch.manual_seed(0)
    a = near_field(q, k, v, 16, dropout_p=0.5, backend="cuda")
    torch.manual_seed(0)
    b = near_field(q, k, v, 16, dropout_p=0.5, backend="cuda")
    c = near_field(q, k, v, 16, dropout_p=0.5, backend="cuda")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


# ---------------------------------------------------------------- the layer


@pytest.mark.parametrize("kind", ["band", "linear", "fmm"])
@pytest.mark.parametrize("causal", [False, True])
def test_layer_cuda_backend_matches_reference_backend(kind, causal):
    """FMMAttention (r = 2, band 64, per-head blend) on the fast path equals the reference."""
    torch.manual_seed(0)
    cfg = dict(kind=kind, bandwidth=64, feature_maps=["elu", "elu_flip"])
    fast = FMMAttention(256, 4, AttentionConfig(**cfg, backend="cuda"), causal).cuda()
    ref = FMMAttention(256, 4, AttentionConfig(**cfg, backend="reference"), causal).cuda()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 1500, 256, device="cuda")
    mask = _padding(2, 1500, "right")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y_fast = fast(x, key_padding_mask=mask)
    y_ref = ref(x, key_padding_mask=mask)  # float32 reference
    keep = ~mask[:, :, None]
    err = ((y_fast.float() - y_ref) * keep).norm() / (y_ref * keep).norm()
    assert err < 2e-2, err.item()
    (y_fast.float() * keep).square().mean().backward()
    (y_ref * keep).square().mean().backward()
    # Some gradients vanish in exact arithmetic (softmax ignores the key bias: it adds the same
    # q.b to a whole row), so each is measured against the largest gradient as well.
    scale = max(p.grad.norm() for p in ref.parameters())
    for (name, p_fast), p_ref in zip(fast.named_parameters(), ref.parameters(), strict=True):
        rel = (p_fast.grad - p_ref.grad).norm() / torch.maximum(p_ref.grad.norm(), 1e-2 * scale)
        assert rel < 5e-2, (name, rel.item())


@pytest.mark.parametrize("causal", [False, True])
def test_compiled_layer_runs_the_custom_op_in_one_graph(causal):
    """torch.compile (inductor, fullgraph: a graph break fails) of the FMM layer equals the
    eager layer, output and parameter gradients, bf16 autocast, padding, dropout off."""
    torch.manual_seed(0)
    cfg = AttentionConfig(kind="fmm", bandwidth=64, feature_maps=["elu", "elu_flip"])
    layer = FMMAttention(256, 4, cfg, causal).cuda()
    x = torch.randn(2, 1500, 256, device="cuda")
    mask = _padding(2, 1500, "right")
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    grads = []
    for fn in (compiled, layer):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = fn(x, key_padding_mask=mask)
        grads.append([y, *torch.autograd.grad(y.float().square().mean(), list(layer.parameters()))])
    for a, b in zip(*grads, strict=True):
        err = (a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-6)
        assert err < 1e-2, err.item()


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_layer_compiles_with_cuda_graphs(dropout):
    """mode="reduce-overhead": inductor replays forward and backward as CUDA graphs around
    the custom ops (a CPU tensor or a host sync in the op would stop that). Dropout off: the
    replays equal the eager layer; on: they differ from call to call (a fresh seed each)."""
    torch.manual_seed(0)
    cfg = AttentionConfig(
        kind="fmm", bandwidth=5, feature_maps=["elu", "elu_flip"], dropout=dropout
    )
    layer = FMMAttention(64, 2, cfg, False).cuda().train()
    x = torch.randn(4, 1000, 64, device="cuda")
    mask = _padding(4, 1000, "right")
    params = list(layer.parameters())
    torch._dynamo.reset()
    compiled = torch.compile(layer, mode="reduce-overhead", fullgraph=True)

    def step(fn):
        torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = fn(x, key_padding_mask=mask)
        grads = torch.autograd.grad(y.float().square().mean(), params)
        return [t.float().clone() for t in (y, *grads)]  # a replay overwrites its outputs

    # Inductor skips CUDA graphs with only a warning (a CPU tensor, an unsafe op): make it fail.
    with torch._inductor.config.patch({"triton.cudagraph_or_error": True}):
        runs = [step(compiled) for _ in range(4)]  # warm-up, recording, replays
    for tensors in runs:
        assert all(torch.isfinite(t).all() for t in tensors)
    if dropout == 0.0:
        for a, b in zip(runs[-1], step(layer), strict=True):
            err = (a - b).norm() / b.norm().clamp_min(1e-6)
            assert err < 1e-2, err.item()
    else:
        assert not torch.equal(runs[-1][0], runs[-2][0])


# ---------------------------------------------------------------- blend


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("granularity", ["scalar", "head", "channel"])
@pytest.mark.parametrize(
    "kind, maps, group",
    [
        ("fmm", ["elu", "elu_flip"], "head"),
        ("fmm", ["elu"], None),
        ("linear", ["elu"] * 3, "channel"),
    ],
)
def test_fused_blend_matches_pytorch_blend(dtype, granularity, kind, maps, group):
    """Blend on CUDA fields (one Triton kernel each way) against the PyTorch blend in float64:
    the output, every field's gradient and every weight's gradient."""
    from fmmformer_pl.attention.blend import Blend
    from fmmformer_pl.attention.config import BlendWeight

    heads, dim = 4, 40
    cfg = AttentionConfig(
        kind=kind, bandwidth=8, feature_maps=maps,
        near_weight=BlendWeight(0.7, granularity), far_weights=[BlendWeight(0.3, granularity)],
        far_group_weight=None if group is None else BlendWeight(-0.4, group),
    )  # fmt: skip
    fused = Blend(cfg, heads, dim).cuda()
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(torch.randn_like(p))
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
    assert _rel(out, expect) < tol
    for g, w in zip(got, want, strict=True):
        assert _rel(g, w) < tol, (_rel(g, w), g.shape)


@pytest.mark.parametrize("causal", [False, True])
def test_fused_layer_far_length_scaling_matches_reference(causal):
    """The fused node folds prefill's far_length rescaling (far_normalize=False) into the
    blend coefficients: same result as the reference path."""
    torch.manual_seed(0)
    cfg = dict(kind="fmm", bandwidth=16, feature_maps=["elu", "elu_flip"], far_normalize=False)
    fast = FMMAttention(128, 4, AttentionConfig(**cfg, backend="cuda"), causal).cuda()
    ref = FMMAttention(128, 4, AttentionConfig(**cfg, backend="reference"), causal).cuda()
    ref.load_state_dict(fast.state_dict())
    with torch.no_grad():
        for p in fast.blend.parameters():
            p.add_(torch.randn_like(p))
    ref.load_state_dict(fast.state_dict())
    q, k, v = _inputs(2, 4, 300, 32, 32, torch.float32)
    out = fast._attend(q, k, v, None, far_length=1024)
    expect = ref._attend(q.double(), k.double(), v.double(), None, far_length=1024)
    assert _rel(out, expect) < 1e-4


# ---------------------------------------------------------------- short path


def _short(monkeypatch, on: bool):
    """The short path (``fmm_short.py``) for every bidirectional length here, or
    the general path (``fmm.py``'s field kernels)."""
    from fmmformer_pl.attention.cuda import fmm_short

    limits = {"max_seq": (1 << 20) * on, "max_blocks_per_sm": 1 << 20}
    monkeypatch.setattr(fmm_short, "SHORT", {**fmm_short.SHORT, **limits})


@pytest.mark.parametrize("path", ["short", "general"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize(
    "maps, bandwidth, padding, shape",
    [
        (["elu", "elu_flip"], 64, "right", (2, 3, 63, 64)),
        (["elu", "elu_flip"], 64, "none", (1, 8, 1024, 64)),
        (["elu", "elu_flip"], 5, "scattered", (3, 2, 1000, 32)),  # LRA-like: band 5, dim 32
        (["tanh"], 20, "right", (2, 4, 2047, 40)),
    ],
)
def test_fused_layer_short_and_general_paths_match_reference(
    path, dtype, normalize, maps, bandwidth, padding, shape, monkeypatch
):
    """FMMAttention's fused node on the short path and on the general path,
    against the float64 reference layer: output, q, k, v and blend-weight gradients."""
    _short(monkeypatch, path == "short")
    batch, heads, seq, dim = shape
    cfg = dict(kind="fmm", bandwidth=bandwidth, feature_maps=maps, far_normalize=normalize)
    fast = FMMAttention(heads * dim, heads, AttentionConfig(**cfg), False).cuda()
    ref = FMMAttention(heads * dim, heads, AttentionConfig(**cfg, backend="reference"), False)
    with torch.no_grad():
        for p in fast.blend.parameters():
            p.add_(torch.randn_like(p))
    ref.load_state_dict(fast.state_dict())
    ref = ref.cuda().double()
    mask = _padding(batch, seq, padding)
    q, k, v = _inputs(batch, heads, seq, dim, dim, dtype)
    xs = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    xr = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    out, expect = fast._attend(*xs, mask), ref._attend(*xr, mask)
    assert out.dtype == dtype
    grad = torch.randn_like(expect)
    got = torch.autograd.grad(out, xs + list(fast.blend.parameters()), grad.to(dtype))
    want = torch.autograd.grad(expect, xr + list(ref.blend.parameters()), grad)
    tol_out, tol_grad = TOL[dtype]
    assert _rel(out, expect) < tol_out
    for name, g, w in zip(("dq", "dk", "dv", "dc0", "dc1", "dc2"), got, want, strict=False):
        assert _rel(g, w) < tol_grad, (name, _rel(g, w))


@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_short_path_equals_the_general_path_on_the_gpu(dropout_p, monkeypatch):
    """float32, same seed: the short-path kernels and the field kernels agree (the same
    dropout draws included)."""
    from fmmformer_pl.attention.cuda import fmm_attention_cuda

    q, k, v = _inputs(2, 4, 777, 64, 64, torch.float32)
    mask = _padding(2, 777, "right")
    coeffs = torch.randn(3, 4, 64, device="cuda")

    def run(on):
        _short(monkeypatch, on)
        xs = [t.detach().clone().requires_grad_(True) for t in (q, k, v, coeffs)]
        y = fmm_attention_cuda(
            *xs[:3], xs[3], 16, ["elu", "elu_flip"], key_padding_mask=mask, dropout_p=dropout_p
        )
        g = torch.randn(y.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
        return [y, *torch.autograd.grad(y, xs, g)]

    torch.manual_seed(3)
    short = run(True)
    torch.manual_seed(3)
    general = run(False)
    for a, b in zip(short, general, strict=True):
        assert _rel(a, b.double()) < 1e-4


@pytest.mark.parametrize("programs_per_sm", [2, 1])
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_short_path_programmatic_launch_changes_no_number(dropout_p, programs_per_sm, monkeypatch):
    """The short path's main kernels launched with PDL (starting while their state kernels
    run, ``fmm_short_kernels.py``) give the numbers they give without it: bit for bit,
    but the blend weights' gradient (atomics in any order). On Hopper the launches do use
    PDL. One program per SM: 2 blocks per program on the H200, so a program waits for the
    states at its first block and reads them at its second."""
    from fmmformer_pl.attention.cuda import fmm_attention_cuda, fmm_short, launch
    from fmmformer_pl.attention.cuda.far import hopper

    q, k, v = _inputs(3, 4, 901, 64, 64, torch.bfloat16)
    mask = _padding(3, 901, "scattered")
    coeffs = torch.randn(3, 4, 64, device="cuda")

    def run(pdl):
        _short(monkeypatch, True)
        monkeypatch.setitem(fmm_short.SHORT, "pdl", pdl)
        monkeypatch.setitem(fmm_short.SHORT, "programs_per_sm", programs_per_sm)
        xs = [t.detach().clone().requires_grad_(True) for t in (q, k, v, coeffs)]
        torch.manual_seed(5)
        y = fmm_attention_cuda(
            *xs[:3], xs[3], 33, ["elu", "elu_flip"], key_padding_mask=mask, dropout_p=dropout_p
        )
        g = torch.randn(y.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(2))
        return [y, *torch.autograd.grad(y, xs, g)]

    plain, overlapped = run(False), run(True)
    for a, b in zip(overlapped[:4], plain[:4], strict=True):
        assert torch.equal(a, b)
    assert _rel(overlapped[4], plain[4].double()) < 1e-5
    used = {
        entry[0].metadata.launch_pdl
        for key, entry in launch._CACHE.items()
        if entry is not None
        and key[0] in (fmm_short._short_fwd_kernel, fmm_short._short_bwd_kernel)
    }
    assert True in used if hopper(q.device) else used == {False}
