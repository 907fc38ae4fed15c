"""The far field's kernels (``ops/far_field``) against its reference: one to three feature
maps, causal and bidirectional, normalised or not, padding, odd sizes, many segments (the
scans over segment states), causal walks of one map or both, and every map of the feature-map
table. ``helpers.py`` says where each test runs."""

from __future__ import annotations

import pytest
import torch

from fmmformer_pl.attention import far_field, far_fields
from fmmformer_pl.attention.feature_maps import FEATURE_MAP_TABLE
from fmmformer_pl.attention.ops.plan import DEFAULT_PLAN, ByMode, FarPlan

from .helpers import (
    INTERPRET,
    TOL,
    cat_fields,
    check,
    compare,
    cuda_inputs,
    cuda_padding,
    cuda_rel,
    gpu,
    inputs,
    interpreter,
    rel,
)

# Many segments, several chunks per bidirectional program, state kernels stepping 16
# positions inside 64-position chunks.
MANY_SEGMENTS = dict(
    single_segment_chunks=2, min_segment_chunks=1, main_chunks_bidir=3, state_chunk=16
)

# ------------------------------------------------------------------ interpreter


@interpreter
@pytest.mark.parametrize("maps", [("elu",), ("elu", "elu_flip"), ("tanh", "softplus", "relu")])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("shape", [(2, 1, 77, 40, 24), (1, 2, 300, 16, 32)])
def test_far_fields_kernels(maps, causal, normalize, shape):
    from fmmformer_pl.attention.ops.far_field.op import far_fields_kernel

    q, k, v, mask = inputs(*shape, seed=len(maps))
    kw = dict(causal=causal, normalize=normalize, key_padding_mask=mask)

    def fast(q, k, v):
        return torch.cat(far_fields_kernel(q, k, v, maps, plan=INTERPRET, **kw), dim=-1)

    def ref(q, k, v):
        outs = [far_field(q, k, v, m, backend="reference", **kw) for m in maps]
        return torch.cat(outs, dim=-1)

    check(fast, ref, (q, k, v))


@interpreter
@pytest.mark.parametrize("causal, pair", [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize("normalize", [True, False])
def test_far_fields_many_segments_and_short_state_steps(causal, pair, normalize):
    """Many segments (the cumsum scans), several chunks per bidirectional program, state
    kernels stepping 16 positions inside 64-position chunks; causal walks for both maps at once
    (pair) or one map after the other."""
    from fmmformer_pl.attention.ops.far_field.op import far_fields_kernel

    pairs = ("fwd", "dq", "dkv") if pair else ()
    plan = INTERPRET.with_(far=dict(MANY_SEGMENTS, pair_maps_causal=pairs))
    q, k, v, mask = inputs(2, 1, 1111, 24, 16, seed=7)
    maps = ("elu", "elu_flip")
    kw = dict(causal=causal, normalize=normalize, key_padding_mask=mask)
    check(
        lambda q, k, v: torch.cat(far_fields_kernel(q, k, v, maps, plan=plan, **kw), dim=-1),
        lambda q, k, v: torch.cat(
            [far_field(q, k, v, m, backend="reference", **kw) for m in maps], dim=-1
        ),
        (q, k, v),
    )


@interpreter
@pytest.mark.parametrize("name", sorted(FEATURE_MAP_TABLE))
def test_every_kernel_code_computes_its_tables_function(name):
    """The feature-map table's PyTorch function and the kernels' branch of its code agree
    (through the far field, forward and backward)."""
    from fmmformer_pl.attention.ops.far_field.op import far_fields_kernel

    assert FEATURE_MAP_TABLE[name].kernel_code is not None
    q, k, v, mask = inputs(1, 2, 90, 16, 16, seed=3)
    check(
        lambda q, k, v: far_fields_kernel(q, k, v, [name], key_padding_mask=mask, plan=INTERPRET)[
            0
        ],  # fmt: skip
        lambda q, k, v: far_field(
            q, k, v, FEATURE_MAP_TABLE[name].fn, key_padding_mask=mask, backend="reference"
        ),  # fmt: skip
        (q, k, v),
    )


# The released LM code's options: (maps, feature_normalize, eps, normalize). Feature
# normalisation with and without the denominator (normalize=False: the query's normalisation
# does not cancel), eps alone, and maps whose phi' is recomputed from q, k (tanh, softplus).
RELEASED = [
    (("elu", "elu_flip"), True, 1e-5, True),
    (("tanh",), True, 0.0, False),
    (("softplus", "relu"), True, 0.1, True),
    (("elu",), False, 0.5, True),
]


@interpreter
@pytest.mark.parametrize("maps, feature_normalize, eps, normalize", RELEASED)
@pytest.mark.parametrize("causal", [False, True])
def test_far_fields_kernels_feature_normalize_and_eps(
    maps, feature_normalize, eps, normalize, causal
):
    """phi(x) / sum_d phi(x)_d and numer / (denom + eps) in the kernels (forward, and the
    backward through the normalisation) against the reference, odd sizes, padding."""
    from fmmformer_pl.attention.ops.far_field.op import far_fields_kernel

    q, k, v, mask = inputs(2, 1, 37, 24, 16, seed=len(maps))
    kw = dict(causal=causal, normalize=normalize, key_padding_mask=mask,
              feature_normalize=feature_normalize, eps=eps)  # fmt: skip
    check(
        lambda q, k, v: torch.cat(far_fields_kernel(q, k, v, maps, plan=INTERPRET, **kw), dim=-1),
        lambda q, k, v: torch.cat(
            [far_field(q, k, v, m, backend="reference", **kw) for m in maps], dim=-1
        ),
        (q, k, v),
    )


@interpreter
@pytest.mark.parametrize("causal, pair", [(False, True), (True, True), (True, False)])
def test_far_fields_feature_normalize_many_segments(causal, pair):
    """Feature normalisation where the state pass stores phi(k) and the walks read it back
    (many segments), causal walks of both maps at once or one after the other."""
    from fmmformer_pl.attention.ops.far_field.op import far_fields_kernel

    pairs = ("fwd", "dq", "dkv") if pair else ()
    plan = INTERPRET.with_(far=dict(MANY_SEGMENTS, pair_maps_causal=pairs))
    q, k, v, mask = inputs(1, 2, 150, 24, 16, seed=8)
    maps = ("elu", "elu_flip")
    kw = dict(causal=causal, key_padding_mask=mask, feature_normalize=True, eps=1e-5)
    check(
        lambda q, k, v: torch.cat(far_fields_kernel(q, k, v, maps, plan=plan, **kw), dim=-1),
        lambda q, k, v: torch.cat(
            [far_field(q, k, v, m, backend="reference", **kw) for m in maps], dim=-1
        ),
        (q, k, v),
    )


@interpreter
def test_far_field_cuda_backend_runs_the_kernels_with_the_released_options(monkeypatch):
    """``far_field(..., backend="cuda")`` with feature_normalize and eps runs the kernels (no
    longer an error): here on the interpreter, the kernel entry's call observed."""
    from fmmformer_pl.attention.ops.far_field import op

    calls = []
    kernel = op.far_fields_kernel
    monkeypatch.setattr(
        op, "far_fields_kernel", lambda *a, **kw: calls.append(kw) or kernel(*a, **kw)
    )
    q, k, v, mask = inputs(1, 1, 20, 16, 16, seed=2)
    kw = dict(causal=True, key_padding_mask=mask, feature_normalize=True, eps=1e-5)
    out = far_field(q, k, v, "elu", backend="cuda", plan=INTERPRET, **kw)
    ref = far_field(q.double(), k.double(), v.double(), "elu", backend="reference", **kw)
    assert [(c["feature_normalize"], c["eps"]) for c in calls] == [(True, 1e-5)]
    assert rel(out, ref) < 1e-5


def test_map_groups_follow_the_plan():
    pytest.importorskip("triton")
    from fmmformer_pl.attention.ops.far_field.op import map_groups

    plan = FarPlan(maps_per_call=ByMode(causal=1, bidirectional=2))
    assert map_groups((0, 1, 2), True, plan) == [(0,), (1,), (2,)]
    assert map_groups((0, 1, 2), False, plan) == [(0, 1), (2,)]
    plan = FarPlan(maps_per_call=ByMode(causal=2, bidirectional=3))
    with pytest.raises(ValueError, match="maps per call"):
        map_groups((0, 1, 2), False, plan)


@interpreter
def test_far_kernels_refuse_malformed_fused_arguments():
    """far_forward's blend and far_backward's scales are read as contiguous float32 rows by
    the kernels: anything else is refused, as is a blend the walks cannot form."""
    from fmmformer_pl.attention.ops.common.host import empty_like_layout
    from fmmformer_pl.attention.ops.far_field.op import far_backward, far_forward

    q, k, v, _ = inputs(1, 2, 70, 16, 16, seed=1)
    y = empty_like_layout(q, 16)
    good = torch.zeros(3, 2, 16)
    for coeffs in (good[:2], good.double(), good.transpose(1, 2).contiguous().transpose(1, 2)):
        with pytest.raises(ValueError, match="blend coeffs"):
            far_forward(q, k, v, None, (0, 1), False, True, INTERPRET, (y, y, coeffs))
    unpaired = INTERPRET.with_(far=dict(pair_maps_causal=()))
    with pytest.raises(ValueError, match="blend_fusable"):
        far_forward(q, k, v, None, (0, 1), True, True, unpaired, (y, y, good))
    outs, saved = far_forward(q, k, v, None, (0, 1), False, True, INTERPRET)
    dy = torch.ones_like(outs[0])
    with pytest.raises(ValueError, match="dscales needs scales"):
        far_backward(saved, [dy], dscales=torch.zeros(2, 2, 16))
    with pytest.raises(ValueError, match="scales must be contiguous float32"):
        far_backward(saved, [dy], scales=torch.zeros(3, 2, 16))
    with pytest.raises(ValueError, match="dscales must be contiguous float32"):
        far_backward(saved, [dy], scales=torch.zeros(2, 2, 16), dscales=torch.zeros(2, 2, 8))


# ------------------------------------------------------------------ GPU


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize(
    "shape", [(2, 3, 1, 64, 64), (2, 3, 63, 64, 64), (1, 2, 1000, 40, 24), (1, 8, 5000, 64, 64)]
)
def test_far_field_matches_reference(dtype, causal, normalize, shape):
    batch, heads, seq, dim, dim_v = shape
    q, k, v = cuda_inputs(batch, heads, seq, dim, dim_v, dtype)
    mask = cuda_padding(batch, seq, "right")
    kw = dict(feature_map="elu", causal=causal, normalize=normalize, key_padding_mask=mask)
    compare(
        lambda a, b, c: far_field(a, b, c, backend="cuda", **kw),
        lambda a, b, c: far_field(a, b, c, backend="reference", **kw),
        q, k, v, dtype, f"far {shape} {dtype} causal={causal} normalize={normalize}",
    )  # fmt: skip


@gpu
@pytest.mark.parametrize("feature_map", sorted(FEATURE_MAP_TABLE))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padding", ["none", "scattered"])
def test_far_field_feature_maps_and_padding(feature_map, causal, padding):
    q, k, v = cuda_inputs(2, 4, 777, 64, 64, torch.bfloat16, seq_major=False)
    mask = cuda_padding(2, 777, padding)
    kw = dict(feature_map=feature_map, causal=causal, key_padding_mask=mask)
    compare(
        lambda a, b, c: far_field(a, b, c, backend="cuda", **kw),
        lambda a, b, c: far_field(a, b, c, backend="reference", **kw),
        q, k, v, torch.bfloat16, f"far {feature_map} causal={causal} padding={padding}",
    )  # fmt: skip


@gpu
@pytest.mark.parametrize("causal", [False, True])
def test_far_field_long_sequence_many_segments(causal):
    """70k positions: ~1100 chunks over many segments (the scan across segments)."""
    q, k, v = cuda_inputs(1, 2, 70_001, 64, 64, torch.bfloat16)
    kw = dict(feature_map="elu", causal=causal)
    compare(
        lambda a, b, c: far_field(a, b, c, backend="cuda", **kw),
        lambda a, b, c: far_field(a, b, c, backend="reference", **kw),
        q, k, v, torch.bfloat16, f"far long causal={causal}",
    )  # fmt: skip


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("maps", [("elu", "elu_flip"), ("tanh", "softplus", "relu")])
@pytest.mark.parametrize("shape", [(2, 3, 63, 64, 64), (1, 2, 1000, 40, 24), (1, 8, 5000, 64, 64)])
def test_far_fields_several_maps_match_reference(dtype, causal, normalize, maps, shape):
    """Two maps per pass (and a third in a second pass), gradients summed over the maps."""
    batch, heads, seq, dim, dim_v = shape
    q, k, v = cuda_inputs(batch, heads, seq, dim, dim_v, dtype)
    mask = cuda_padding(batch, seq, "scattered")
    kw = dict(causal=causal, normalize=normalize, key_padding_mask=mask)
    compare(
        cat_fields(lambda a, b, c: far_fields(a, b, c, maps, backend="cuda", **kw)),
        cat_fields(lambda a, b, c: far_fields(a, b, c, maps, backend="reference", **kw)),
        q, k, v, dtype, f"far_fields {maps} {shape} {dtype} causal={causal} norm={normalize}",
    )  # fmt: skip


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("maps, feature_normalize, eps, normalize", RELEASED)
@pytest.mark.parametrize("shape", [(2, 3, 37, 24, 24), (1, 8, 5000, 64, 64)])
def test_far_fields_feature_normalize_and_eps_match_reference(
    dtype, causal, maps, feature_normalize, eps, normalize, shape
):
    """The released LM code's far field (phi / sum_d phi, denominator + eps) on the compiled
    kernels, one and two maps per pass, padding."""
    batch, heads, seq, dim, dim_v = shape
    q, k, v = cuda_inputs(batch, heads, seq, dim, dim_v, dtype)
    mask = cuda_padding(batch, seq, "scattered")
    kw = dict(causal=causal, normalize=normalize, key_padding_mask=mask,
              feature_normalize=feature_normalize, eps=eps)  # fmt: skip
    compare(
        cat_fields(lambda a, b, c: far_fields(a, b, c, maps, backend="cuda", **kw)),
        cat_fields(lambda a, b, c: far_fields(a, b, c, maps, backend="reference", **kw)),
        q, k, v, dtype,
        f"far_fields {maps} {shape} {dtype} causal={causal} fn={feature_normalize} eps={eps}",
    )  # fmt: skip


@gpu
@pytest.mark.parametrize("causal", [False, True])
def test_far_fields_feature_normalize_long_sequence(causal):
    """The paper LM's far field (elu, elu_flip; feature normalisation, eps 1e-5) at 70k
    positions: many segments, the plan's causal walks."""
    q, k, v = cuda_inputs(1, 2, 70_001, 64, 64, torch.bfloat16)
    kw = dict(causal=causal, feature_normalize=True, eps=1e-5)
    maps = ("elu", "elu_flip")
    compare(
        cat_fields(lambda a, b, c: far_fields(a, b, c, maps, backend="cuda", **kw)),
        cat_fields(lambda a, b, c: far_fields(a, b, c, maps, backend="reference", **kw)),
        q, k, v, torch.bfloat16, f"far_fields normalised features long causal={causal}",
    )  # fmt: skip


@gpu
@pytest.mark.parametrize(
    "causal, paired", [(False, ()), (True, ()), (True, ("fwd", "dq", "dkv")), (True, None)]
)
def test_far_fields_long_sequence_many_segments(causal, paired):
    """Long sequences; causal walks of one map at a time, of both maps at once, and the plan's
    mix (paired None)."""
    plan = DEFAULT_PLAN
    if paired is not None:
        plan = plan.with_(far=dict(pair_maps_causal=paired))
    q, k, v = cuda_inputs(1, 2, 70_001, 64, 64, torch.bfloat16)
    kw = dict(causal=causal)
    maps = ("elu", "elu_flip")
    compare(
        cat_fields(lambda a, b, c: far_fields(a, b, c, maps, backend="cuda", plan=plan, **kw)),
        cat_fields(lambda a, b, c: far_fields(a, b, c, maps, backend="reference", **kw)),
        q, k, v, torch.bfloat16, f"far_fields long causal={causal}",
    )  # fmt: skip


@gpu
@pytest.mark.parametrize("causal", [False, True])
def test_far_fields_one_output_unused(causal):
    """Only the second map reaches the loss: the first output's gradient is zero (autograd
    passes zeros, or None where materialize_grads is off: far_backward takes both)."""
    q, k, v = cuda_inputs(1, 2, 300, 64, 64, torch.float32)
    compare(
        lambda a, b, c: far_fields(a, b, c, ("elu", "elu_flip"), causal=causal, backend="cuda")[1],
        lambda a, b, c: far_field(a, b, c, "elu_flip", causal=causal, backend="reference"),
        q, k, v, torch.float32, f"far_fields unused output causal={causal}",
    )  # fmt: skip


@gpu
@pytest.mark.parametrize("causal", [False, True])
def test_cached_launches_match_reference_across_calls_and_alignments(causal):
    """ops/common/launch.py: a repeated call hands its arguments to the compiled kernels
    directly (from the third call of a kernel with the same arguments, straight to its C
    launcher), and bf16 views one element off 16-byte alignment make Triton specialise anew.
    Every call, forward and backward, matches the reference."""
    from fmmformer_pl.attention.ops.common import launch as launch_module

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
        assert cuda_rel(out, ref) < tol_out, (offset, cuda_rel(out, ref))
        for b, r in zip(bases, refs, strict=True):
            assert cuda_rel(b.grad[offset:].view(shape), r.grad) < tol_grad, offset
    compiled = [e for e in launch_module._CACHE.values() if e is not None]
    # forward and backward kernels, once for the aligned and once for the unaligned inputs
    assert len(compiled) == len(launch_module._CACHE) >= 6
    # the exact hits of the later calls went straight to the C launchers
    assert any(e[2] is not None for e in launch_module._EXACT.values())


@gpu
def test_far_field_callable_feature_map_falls_back():
    q, k, v = cuda_inputs(1, 2, 100, 32, 32, torch.float32)
    phi = lambda x: torch.nn.functional.elu(x) + 1.0  # noqa: E731
    out = far_field(q, k, v, feature_map=phi)  # auto: the kernels decline, the reference runs
    ref = far_field(q, k, v, feature_map="elu", backend="reference")
    torch.testing.assert_close(out, ref)
    with pytest.raises(RuntimeError, match="kernels do not support this case"):
        far_field(q, k, v, feature_map=phi, backend="cuda")
