"""The fused FMM layer (``ops/fmm``: near field, far fields and blend as one autograd node)
against the layer's reference path, its custom ops (what torch.compile runs) against the
autograd.Function, and the compiled layer. ``helpers.py`` says where each test runs."""

from __future__ import annotations

import pytest
import torch

from fmmformer_pl.attention import dispatch
from fmmformer_pl.attention.config import AttentionConfig, BlendWeight
from fmmformer_pl.attention.layer import FMMAttention
from fmmformer_pl.attention.ops.plan import ByMode, FusedPlan

from .helpers import (
    GENERAL,
    INTERPRET,
    SHORT,
    check,
    cuda_inputs,
    cuda_padding,
    cuda_rel,
    gpu,
    inputs,
    interpreter,
    rel,
)

# Many segments (the states' cumsum and their rebuild in the backward op) or one.
MANY_SEGMENTS = dict(single_segment_chunks=0, min_segment_chunks=1, main_chunks_bidir=2)


def layer_pair(kind, maps, causal, normalize=True, bandwidth=5, dropout=0.0, heads=2, dim=16,
               plan=GENERAL, **layer_kw):  # fmt: skip
    """A layer on the kernels (``plan``) and a reference layer with the same weights
    (``layer_kw``: more ``FMMAttention`` arguments, for both)."""
    cfg = dict(
        kind=kind, bandwidth=bandwidth, feature_maps=maps, far_normalize=normalize,
        dropout=dropout,
    )  # fmt: skip
    fused = FMMAttention(
        heads * dim, heads, AttentionConfig(**cfg), causal, kernel_plan=plan, **layer_kw
    )
    ref = FMMAttention(
        heads * dim, heads, AttentionConfig(**cfg, backend="reference"), causal, **layer_kw
    )
    with torch.no_grad():
        for p in fused.blend.parameters():
            p.add_(torch.randn_like(p))
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def check_layers(fused, ref, q, k, v, mask, far_length=None):
    """The kernel layer's ``_attend`` against the reference layer's: output and the gradients
    of q, k, v and the blend weights."""
    check(
        lambda q, k, v: fused._attend(q, k, v, mask, far_length=far_length),
        lambda q, k, v: ref._attend(q, k, v, mask, far_length=far_length),
        (q, k, v),
        params=list(fused.blend.parameters()),
        ref_params=list(ref.blend.parameters()),
    )


# ------------------------------------------------------------------ interpreter


@interpreter
@pytest.mark.parametrize(
    "kind, maps", [("fmm", ["elu", "elu_flip"]), ("linear", ["elu", "tanh", "relu"])]
)
@pytest.mark.parametrize("causal", [False, True])
def test_fused_layer_kernels(kind, maps, causal):
    """Near + far + blend as one node (gradients of q, k, v accumulated across the fields'
    kernels) against the layer's reference path and naive.py, blend weights included."""
    from fmmformer_pl.attention.ops.fmm.naive import fmm_attention_reference
    from fmmformer_pl.attention.ops.fmm.op import fmm_attention_kernel

    heads, dim = 2, 16
    cfg = AttentionConfig(
        kind=kind, bandwidth=9, feature_maps=maps, backend="reference",
        near_weight=BlendWeight(0.5, "head"), far_weights=[BlendWeight(0.3, "channel")],
    )  # fmt: skip
    layer = FMMAttention(heads * dim, heads, cfg, causal)
    with torch.no_grad():
        for p in layer.blend.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    q, k, v, mask = inputs(2, heads, 200, dim, dim, seed=3)
    bandwidth = 9 if kind == "fmm" else None
    kw = dict(causal=causal, key_padding_mask=mask)
    check(
        lambda q, k, v: fmm_attention_kernel(
            q, k, v, layer.blend.coefficients(), bandwidth, maps, plan=GENERAL, **kw
        ),
        lambda q, k, v: layer._attend(q, k, v, mask),
        (q, k, v),
        params=list(layer.blend.parameters()),
    )
    check(
        lambda q, k, v: fmm_attention_kernel(
            q, k, v, layer.blend.coefficients(), bandwidth, maps, plan=GENERAL, **kw
        ),
        lambda q, k, v: fmm_attention_reference(
            q, k, v, layer.blend.coefficients().double(), bandwidth, maps, **kw
        ),
        (q, k, v),
    )


@interpreter
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "kind, maps", [("fmm", ["elu", "elu_flip"]), ("linear", ["elu", "elu_flip"]),
                   ("fmm", ["elu", "elu_flip", "tanh"])],
)  # fmt: skip
def test_layer_fused_path_incl_far_length(kind, maps, causal):
    """FMMAttention._attend through the fused route (the layer's own glue: coefficients,
    bandwidth or none, far_length folded into the far coefficients for far_normalize=False;
    r = 3 with the near field is 4 fields, two far-field passes) against the reference path,
    forward and backward (q, k, v and the blend weights), with padding."""
    heads, dim = 2, 16
    fused, ref = layer_pair(kind, maps, causal, normalize=False)
    q, k, v, mask = inputs(1, heads, 90, dim, dim, seed=5)
    assert dispatch.route("auto", q, fused._fusable(), fused.kernel_plan) == "fused"
    assert dispatch.route("auto", q, ref._fusable(), ref.kernel_plan) == "reference"
    for far_length in (None, 256):
        check_layers(fused, ref, q, k, v, mask, far_length)


@interpreter
@pytest.mark.parametrize("maps_per_call, pair", [(1, True), (2, True), (2, False)])
@pytest.mark.parametrize("causal", [False, True])
def test_layer_fused_path_many_segments(causal, maps_per_call, pair):
    """The fused node with many far-field segments (the gradient accumulation of the near
    field and both maps over the cumsum-scanned states), the maps in one call or one each,
    causal walks for both maps at once (pair) or one after the other."""
    far = dict(single_segment_chunks=2, min_segment_chunks=1, main_chunks_bidir=2)
    far.update(maps_per_call=ByMode(maps_per_call, maps_per_call))
    far.update(pair_maps_causal=("fwd", "dq", "dkv") if pair else ())
    fused, ref = layer_pair("fmm", ["elu", "elu_flip"], causal, plan=GENERAL.with_(far=far))
    q, k, v, mask = inputs(1, 2, 1100, 16, 16, seed=9)
    check_layers(fused, ref, q, k, v, mask)


@interpreter
@pytest.mark.parametrize("near_blend", [True, False], ids=["near_blends", "no_near_blend"])
@pytest.mark.parametrize("bandwidth", [5, None])
@pytest.mark.parametrize("causal", [False, True])
def test_fused_layer_with_the_per_mode_choices_flipped(causal, bandwidth, near_blend):
    """The blend formed by the far forward kernels, by the near forward kernel or by the
    blend kernel, the far fields' blend-coefficient gradients summed by the state pass or by
    the blend backward (``FusedPlan``: here the other way round from the default;
    near_forms_blend both ways), with and without a near field."""
    flipped = FusedPlan(
        far_forms_blend=ByMode(causal=True, bidirectional=False),
        near_forms_blend=ByMode(causal=near_blend, bidirectional=near_blend),
        dc_in_state_pass=ByMode(causal=False, bidirectional=True),
    )
    kind = "fmm" if bandwidth else "linear"
    fused, ref = layer_pair(kind, ["elu", "elu_flip"], causal, plan=GENERAL.with_(fused=flipped))
    q, k, v, mask = inputs(1, 2, 150, 16, 16, seed=11)
    check_layers(fused, ref, q, k, v, mask)


@interpreter
@pytest.mark.parametrize("plan", ["general", "short", "many"])
@pytest.mark.parametrize("causal", [False, True])
def test_layer_with_the_released_far_field_runs_the_kernels(causal, plan):
    """FMMAttention with the released LM code's far field (feature normalisation, eps 1e-5)
    takes the fused route, and field by field the far-field kernels, both equal to the
    reference path (forward, q, k, v and blend-weight gradients). The short path lacks the
    options: its plan runs the general fused path."""
    from fmmformer_pl.attention.ops.fmm.op import takes_short

    plan = {"general": GENERAL, "short": SHORT, "many": GENERAL.with_(far=MANY_SEGMENTS)}[plan]
    released = dict(far_feature_normalize=True, far_eps=1e-5)
    fused, ref = layer_pair("fmm", ["elu", "elu_flip"], causal, plan=plan, **released)
    q, k, v, mask = inputs(1, 2, 37, 24, 24, seed=6)
    assert dispatch.route("auto", q, fused._fusable(), fused.kernel_plan) == "fused"
    assert not takes_short(q, (5,), (0, 1), causal, plan, True, 1e-5)
    check_layers(fused, ref, q, k, v, mask)
    fused._fusable = lambda: False  # field by field: far_fields on its kernels
    assert dispatch.route("auto", q, fused._fusable(), fused.kernel_plan) == "fields"
    check_layers(fused, ref, q, k, v, mask)


@interpreter
def test_layer_fused_path_validates_inputs():
    """Bad masks and inputs are refused as on the reference path, not read as raw bytes."""
    fused, _ = layer_pair("fmm", ["elu"], causal=False)
    q, k, v, mask = inputs(2, 2, 50, 16, 16, seed=1)
    with pytest.raises(TypeError, match="key_padding_mask must be bool"):
        fused._attend(q, k, v, mask.float())
    with pytest.raises(ValueError, match="key_padding_mask"):
        fused._attend(q, k, v, mask[:, :10])
    with pytest.raises(TypeError, match="share a dtype"):
        fused._attend(q, k.double(), v, mask)


@interpreter
@pytest.mark.parametrize("causal", [False, True])
def test_layer_fused_and_unfused_gpu_paths_draw_the_same_dropout(causal, monkeypatch):
    """Training with attention dropout: the one-node route and the field-by-field kernels
    (near_field, far_fields, blend) give the same output under the same torch seed."""
    fused, _ = layer_pair("fmm", ["elu", "elu_flip"], causal, dropout=0.3)
    q, k, v, mask = inputs(1, 2, 120, 16, 16, seed=2)
    fused.train()
    torch.manual_seed(123)
    a = fused._attend(q, k, v, mask)
    monkeypatch.setattr(fused, "_fusable", lambda: False)  # this layer: field by field
    assert dispatch.route("auto", q, fused._fusable(), fused.kernel_plan) == "fields"
    torch.manual_seed(123)
    b = fused._attend(q, k, v, mask)
    torch.manual_seed(124)
    c = fused._attend(q, k, v, mask)
    assert rel(a, b) < 1e-6
    assert rel(c, b) > 1e-3  # another seed, other dropout


def _op_cases():
    # (bandwidth or None, maps, causal, normalize, masked)
    return [
        (5, ("elu", "elu_flip"), False, True, True),
        (5, ("elu", "elu_flip"), True, True, True),
        (None, ("elu",), True, False, False),
        (7, ("tanh", "softplus", "relu"), False, False, True),
    ]


def _plan(segments):
    return {"one": GENERAL, "many": GENERAL.with_(far=MANY_SEGMENTS), "short": SHORT}[segments]


@interpreter
@pytest.mark.parametrize("segments", ["one", "many", "short"])
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("bandwidth, maps, causal, normalize, masked", _op_cases())
def test_fmm_custom_op_matches_the_function(
    bandwidth, maps, causal, normalize, masked, dropout_p, segments
):
    """The custom ops (what torch.compile runs) against the autograd.Function (eager), with
    the same dropout draws; the short path where it applies (bidirectional, r <= 2)."""
    from fmmformer_pl.attention.ops.fmm.custom_op import fmm_attention_op
    from fmmformer_pl.attention.ops.fmm.op import fmm_attention_kernel

    plan = _plan(segments)
    q, k, v, mask = inputs(1, 2, 150, 16, 16, seed=3)  # 3 chunks: 3 segments when "many"
    mask = mask if masked else None
    n_fields = len(maps) + (bandwidth is not None)
    coeffs = torch.randn(n_fields, 2, 16)
    kw = dict(causal=causal, normalize=normalize, key_padding_mask=mask, dropout_p=dropout_p)

    def run(fn):
        xs = [t.detach().clone().requires_grad_(True) for t in (q, k, v, coeffs)]
        torch.manual_seed(5)
        y = fn(*xs[:3], xs[3], bandwidth, maps, plan=plan, **kw)
        g = torch.autograd.grad(y, xs, torch.ones_like(y))
        return [y, *g]

    for a, b in zip(run(fmm_attention_op), run(fmm_attention_kernel), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@interpreter
@pytest.mark.parametrize("causal, segments", [(False, "short"), (True, "many")])
def test_fmm_custom_op_with_the_released_far_field(causal, segments):
    """The custom ops with feature normalisation and eps equal the autograd.Function,
    forward and backward (the short plan: the general path, decided alike by the op's forward
    and backward). The schema with these arguments: ``test_fmm_custom_op_passes_opcheck``."""
    from fmmformer_pl.attention.ops.fmm.custom_op import fmm_attention_op
    from fmmformer_pl.attention.ops.fmm.op import fmm_attention_kernel

    plan = _plan(segments)
    q, k, v, mask = inputs(1, 2, 150, 16, 16, seed=3)
    coeffs = torch.randn(3, 2, 16)
    kw = dict(causal=causal, key_padding_mask=mask, feature_normalize=True, eps=1e-5)

    def run(fn):
        xs = [t.detach().clone().requires_grad_(True) for t in (q, k, v, coeffs)]
        y = fn(*xs[:3], xs[3], 5, ("elu", "elu_flip"), plan=plan, **kw)
        return [y, *torch.autograd.grad(y, xs, torch.ones_like(y))]

    for a, b in zip(run(fmm_attention_op), run(fmm_attention_kernel), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@interpreter
@pytest.mark.parametrize("segments", ["one", "many", "short"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("normalize, dropout_p", [(True, 0.0), (False, 0.2)])
def test_fmm_custom_op_passes_opcheck(causal, normalize, dropout_p, segments):
    """Schema, fake tensors (shapes and strides of every output, also the segment states of
    a many-segment plan and the short path's extras), autograd registration and AOT dispatch
    of the forward op, as torch.library checks them."""
    import fmmformer_pl.attention.ops.fmm.custom_op  # noqa: F401  registers torch.ops.fmmformer

    if segments == "short" and causal:
        pytest.skip("the short path is bidirectional")
    q, k, v, mask = inputs(1, 2, 150, 16, 16, seed=4)  # 3 chunks: 3 segments when "many"
    seed = torch.tensor([123]) if dropout_p > 0 else None
    args = (
        q.detach().requires_grad_(True), k.detach().requires_grad_(True),
        v.detach().requires_grad_(True), torch.randn(3, 2, 16, requires_grad=True), mask,
        5, dropout_p, seed, causal, [0, 1], normalize, False, 0.0, _plan(segments).key,
    )  # fmt: skip
    torch.library.opcheck(torch.ops.fmmformer.fmm_attention_fwd.default, args)


@interpreter
@pytest.mark.parametrize("short", [False, True], ids=["general", "short"])
def test_compiled_op_does_not_recompile_per_sequence_length(short):
    """dynamic=True: two lengths with the same segment plan trace once (a guard on the length,
    e.g. from math.sqrt in the fake, would compile a graph per length)."""
    from torch._dynamo.testing import CompileCounter

    from fmmformer_pl.attention.ops.fmm.custom_op import fmm_attention_op

    plan = INTERPRET.with_(short=dict(max_seq=1 << 20, max_blocks_per_sm=1 << 20,
                                      state_segments=0)) if short else GENERAL  # fmt: skip
    counter = CompileCounter()
    coeffs = torch.randn(3, 2, 16)

    def attend(q, k, v):
        return fmm_attention_op(q, k, v, coeffs, 5, ["elu", "elu_flip"], normalize=False,
                                plan=plan)  # fmt: skip

    torch._dynamo.reset()
    compiled = torch.compile(attend, backend=counter, dynamic=True, fullgraph=True)
    for seq in (70, 90):  # two chunks of 64 each: one plan
        q, k, v, _ = inputs(1, 2, seq, 16, 16, seed=seq)
        torch.testing.assert_close(compiled(q, k, v), attend(q, k, v))
    assert counter.frame_count == 1


@interpreter
@pytest.mark.parametrize("causal", [False, True])
def test_layer_compiles_in_one_graph_with_the_custom_op(causal):
    """torch.compile(fullgraph=True) of the layer: the fused route traces as the custom ops
    (no graph break), with the output and gradients of the eager layer."""
    fused, ref = layer_pair("fmm", ["elu", "elu_flip"], causal)
    x = torch.randn(2, 70, 32, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(2, 70, dtype=torch.bool)
    mask[1, 50:] = True
    torch._dynamo.reset()
    compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)
    y = compiled(x, mask)
    y_ref = ref(x, mask)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.autograd.grad(y.sum(), list(fused.parameters()))
    g_ref = torch.autograd.grad(y_ref.sum(), list(ref.parameters()))
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@interpreter
def test_compiled_layer_draws_a_fresh_dropout_seed_per_call():
    """Under torch.compile the near field's dropout seed is drawn in the graph, not baked in
    at trace time: calls differ from each other and match the eager layer's draws."""
    fused, _ = layer_pair("fmm", ["elu", "elu_flip"], False, dropout=0.3)
    fused.train()
    x = torch.randn(1, 90, 32, generator=torch.Generator().manual_seed(6))
    torch._dynamo.reset()
    compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)
    params = list(fused.parameters())
    torch.manual_seed(11)
    y1, y2 = compiled(x), compiled(x)
    g1 = torch.autograd.grad(y1.square().sum(), params)
    torch.manual_seed(11)
    e1, e2 = fused(x), fused(x)
    h1 = torch.autograd.grad(e1.square().sum(), params)
    assert not torch.allclose(y1, y2)
    torch.testing.assert_close(y1, e1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y2, e2, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, h1, strict=True):  # the backward replays the forward's dropout
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ GPU


@gpu
@pytest.mark.parametrize(
    "kind, released", [("band", False), ("linear", False), ("fmm", False), ("fmm", True)]
)
@pytest.mark.parametrize("causal", [False, True])
def test_layer_cuda_backend_matches_reference_backend(kind, released, causal):
    """FMMAttention (r = 2, band 64, per-head blend) on the kernels equals the reference;
    released: the LM configs' far field (feature normalisation, eps 1e-5)."""
    torch.manual_seed(0)
    cfg = dict(kind=kind, bandwidth=64, feature_maps=["elu", "elu_flip"])
    kw = dict(far_feature_normalize=released, far_eps=1e-5 if released else 0.0)
    fast = FMMAttention(256, 4, AttentionConfig(**cfg, backend="cuda"), causal, **kw).cuda()
    ref = FMMAttention(256, 4, AttentionConfig(**cfg, backend="reference"), causal, **kw).cuda()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 1500, 256, device="cuda")
    mask = cuda_padding(2, 1500, "right")
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
        rel_err = (p_fast.grad - p_ref.grad).norm() / torch.maximum(p_ref.grad.norm(), 1e-2 * scale)
        assert rel_err < 5e-2, (name, rel_err.item())


@gpu
@pytest.mark.parametrize("causal", [False, True])
def test_compiled_layer_runs_the_custom_op_in_one_graph(causal):
    """torch.compile (inductor, fullgraph: a graph break fails) of the FMM layer equals the
    eager layer, output and parameter gradients, bf16 autocast, padding, dropout off."""
    torch.manual_seed(0)
    cfg = AttentionConfig(kind="fmm", bandwidth=64, feature_maps=["elu", "elu_flip"])
    layer = FMMAttention(256, 4, cfg, causal).cuda()
    x = torch.randn(2, 1500, 256, device="cuda")
    mask = cuda_padding(2, 1500, "right")
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


@gpu
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
    mask = cuda_padding(4, 1000, "right")
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


@gpu
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
    q, k, v = cuda_inputs(2, 4, 300, 32, 32, torch.float32)
    out = fast._attend(q, k, v, None, far_length=1024)
    expect = ref._attend(q.double(), k.double(), v.double(), None, far_length=1024)
    assert cuda_rel(out, expect) < 1e-4
