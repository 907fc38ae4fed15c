"""The Triton kernels' logic on the CPU: Triton's interpreter against the float64 reference.

Every GPU kernel of ``fmmformer_pl.attention.cuda`` (near field, far fields with 1-3 maps,
blend, the one-node FMM layer) runs here on CPU tensors under ``TRITON_INTERPRET=1`` in
float32 with exact products, so CI checks their indexing, masking, segment scans and gradient
accumulation on every change, without a GPU. Speed, bf16 rounding and the compiled code are
checked on the GPU machine instead (``test_gpu.py``). Skipped where triton is missing, and on
machines with CUDA (there the interpreter would replace the real kernels in this process).
"""

from __future__ import annotations

import os

import pytest
import torch

if torch.cuda.is_available():
    pytest.skip("CUDA machine: test_gpu.py runs the compiled kernels", allow_module_level=True)
os.environ["TRITON_INTERPRET"] = "1"  # before the kernels' modules import triton
pytest.importorskip("triton", reason="the kernel interpreter needs triton (extra kernels-cpu)")

from fmmformer_pl.attention import far_field, near_field  # noqa: E402
from fmmformer_pl.attention.config import AttentionConfig, BlendWeight  # noqa: E402
from fmmformer_pl.attention.layer import FMMAttention  # noqa: E402

# The interpreter warns on every launch (numpy scalar conversions, CPU tensors).
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


@pytest.fixture(autouse=True)
def _exact_fp32(exact_fp32):
    """float32 cases follow torch's matmul precision: ask for exact float32 products."""


@pytest.fixture(autouse=True)
def _general_fmm_path(monkeypatch):
    """The fused-layer tests below check the general path (``fmm.py``'s field kernels); the
    short path (``fmm_short.py``) would take their short bidirectional cases.
    ``_short_path`` turns it back on."""
    from fmmformer_pl.attention.cuda import fmm_short

    monkeypatch.setattr(fmm_short, "SHORT", {**fmm_short.SHORT, "max_seq": 0})


def _short_path(monkeypatch, programs_per_sm=2, state_step=64, state_segments=0):
    """The short path for every bidirectional sequence of these tests. The interpreter
    counts 8 SMs: ``programs_per_sm`` * 8 programs over the grid, so few programs per row
    own several blocks each. ``state_step``, ``state_segments``: ``fmm_short.SHORT``'s."""
    from fmmformer_pl.attention.cuda import fmm_short

    short = dict(max_seq=1 << 20, max_blocks_per_sm=1 << 20, programs_per_sm=programs_per_sm)
    short["state_step"] = state_step
    short["state_segments"] = state_segments
    monkeypatch.setattr(fmm_short, "SHORT", {**fmm_short.SHORT, **short})


def _rel(a, b):
    # Floor 1e-3: some gradients vanish in exact arithmetic (one visible key), leaving rounding.
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-3)).item()


def _inputs(batch, heads, seq, dim, dim_v, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seq, heads, dim, generator=g).transpose(1, 2)  # model layout
    k = torch.randn(batch, heads, seq, dim, generator=g)
    v = torch.randn(batch, seq, heads, dim_v, generator=g).transpose(1, 2)
    mask = torch.rand(batch, seq, generator=g) < 0.3
    return q, k, v, mask


def _check(fast, ref, inputs, params=(), ref_params=None, tol=1e-5):
    """Forward and gradients (inputs and params; ref's own copies of them in ref_params) of
    fast (float32) vs ref (float64 inputs)."""
    xs = [t.detach().clone().requires_grad_(True) for t in inputs]
    xr = [t.detach().double().requires_grad_(True) for t in inputs]
    out, expect = fast(*xs), ref(*xr)
    g = torch.randn(expect.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = torch.autograd.grad(out, xs + list(params), g.float())
    want = torch.autograd.grad(expect, xr + list(params if ref_params is None else ref_params), g)
    assert _rel(out, expect) < tol
    for a, b in zip(got, want, strict=True):
        assert _rel(a, b) < tol, _rel(a, b)


@pytest.mark.parametrize("maps", [("elu",), ("elu", "elu_flip"), ("tanh", "softplus", "relu")])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("shape", [(2, 1, 77, 40, 24), (1, 2, 300, 16, 32)])
def test_far_fields_kernels(maps, causal, normalize, shape):
    from fmmformer_pl.attention.cuda.far import far_fields_triton

    q, k, v, mask = _inputs(*shape, seed=len(maps))
    kw = dict(causal=causal, normalize=normalize, key_padding_mask=mask)

    def fast(q, k, v):
        return torch.cat(far_fields_triton(q, k, v, maps, **kw), dim=-1)

    def ref(q, k, v):
        outs = [far_field(q, k, v, m, backend="reference", **kw) for m in maps]
        return torch.cat(outs, dim=-1)

    _check(fast, ref, (q, k, v))


@pytest.mark.parametrize("causal, pair", [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize("normalize", [True, False])
def test_far_fields_many_segments_and_short_state_steps(causal, pair, normalize, monkeypatch):
    """Many segments (the cumsum scans), several chunks per bidirectional program, state
    kernels stepping 16 positions inside 64-position chunks; causal walks for both maps at once
    (pair) or one map after the other."""
    from fmmformer_pl.attention.cuda import far

    plan = dict(single_segment_chunks=2, min_segment_chunks=1, main_chunks_bidir=3)
    plan.update(state_chunk=16, pair_maps_causal=("fwd", "dq", "dkv") if pair else ())
    monkeypatch.setattr(far, "PLAN", {**far.PLAN, **plan})
    q, k, v, mask = _inputs(2, 1, 1111, 24, 16, seed=7)
    maps = ("elu", "elu_flip")
    kw = dict(causal=causal, normalize=normalize, key_padding_mask=mask)
    _check(
        lambda q, k, v: torch.cat(far.far_fields_triton(q, k, v, maps, **kw), dim=-1),
        lambda q, k, v: torch.cat(
            [far_field(q, k, v, m, backend="reference", **kw) for m in maps], dim=-1
        ),
        (q, k, v),
    )


@pytest.mark.parametrize("merged", [True, False], ids=["one_bwd_kernel", "dq_then_dkv"])
@pytest.mark.parametrize("blocks", [(64, 64), (128, 32)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "bandwidth, narrow", [(5, True), (5, False), (16, True), (20, True), (100, True)]
)
def test_near_field_kernels(blocks, causal, bandwidth, narrow, merged, monkeypatch):
    """Against the reference, with the wide tiles and (narrow bands) the 16- and 32-tiles;
    the backward as one kernel or as two."""
    from fmmformer_pl.attention.cuda import near

    monkeypatch.setattr(near, "_BLOCK_M", blocks[0])
    monkeypatch.setattr(near, "_BLOCK_N", blocks[1])
    monkeypatch.setattr(near, "NARROW_TILES", ((16, 16), (32, 32)) if narrow else ())
    monkeypatch.setattr(near, "MERGED_BACKWARD", {"wide": merged, "narrow": merged})
    q, k, v, mask = _inputs(1, 2, 300, 16, 16, seed=bandwidth)
    kw = dict(causal=causal, key_padding_mask=mask)
    _check(
        lambda q, k, v: near.band_attention_triton(q, k, v, bandwidth, **kw),
        lambda q, k, v: near_field(q, k, v, bandwidth, backend="reference", **kw),
        (q, k, v),
    )


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bandwidth", [5, 20, 33])  # 16-, 32- and 64-wide tiles
@pytest.mark.parametrize("seed_kind", ["int", "tensor"])
@pytest.mark.parametrize("merged", [True, False], ids=["one_bwd_kernel", "dq_then_dkv"])
def test_near_field_dropout_matches_the_dense_reference(
    causal, bandwidth, seed_kind, merged, monkeypatch
):
    """Dropout in every kernel against the dense reference with the kernels' own keep
    pattern (``dropout_keep_matrix``): output and gradients, padding, the seed as an int (eager)
    or as a tensor the kernels load (the compiled op), the backward as one kernel or two."""
    from fmmformer_pl.attention.cuda import near

    monkeypatch.setattr(near, "MERGED_BACKWARD", {"wide": merged, "narrow": merged})
    from fmmformer_pl.attention.naive import visible_keys

    from .conftest import dense_band_dropout

    batch, heads, seq, dim, p, seed = 1, 2, 150, 16, 0.3, 77
    q, k, v, mask = _inputs(batch, heads, seq, dim, dim, seed=bandwidth)
    keep = torch.stack(
        [near.dropout_keep_matrix(seq, bandwidth, p, seed + n, "cpu") for n in range(heads)]
    ).view(batch, heads, seq, seq)
    visible = visible_keys(seq, bandwidth, causal, mask, q.device)
    seed_arg = seed if seed_kind == "int" else torch.tensor([seed])

    def fast(a, b, c):
        return near._BandAttention.apply(a, b, c, mask, bandwidth, causal, p, seed_arg)

    _check(fast, lambda a, b, c: dense_band_dropout(a, b, c, visible, keep, p), (q, k, v))


def test_near_field_tiles_follow_the_band(monkeypatch):
    """Narrow bands get tiles of 16 or 32 across the band (both kernels' sides), wide 64."""
    from fmmformer_pl.attention.cuda import near

    monkeypatch.setattr(near, "MERGED_BACKWARD", {"wide": True, "narrow": True})

    assert near._tiles(5) == (dict(BM=64, BN=16), dict(BM=16, BN=64))
    assert near._tiles(20) == (dict(BM=64, BN=32), dict(BM=32, BN=64))
    assert near._tiles(64) == (dict(BM=64, BN=64), dict(BM=64, BN=64))
    # the merged backward: blocks of 64 positions, stepping by the same tiles
    assert near._merged_tiles(5) == dict(B=64, TQ=16, TK=16)
    assert near._merged_tiles(20) == dict(B=64, TQ=32, TK=32)
    assert near._merged_tiles(64) == dict(B=64, TQ=64, TK=64)
    monkeypatch.setattr(near, "MERGED_BACKWARD", {"wide": False, "narrow": True})
    assert near._merged_tiles(64) is None and near._merged_tiles(5) is not None


@pytest.mark.parametrize(
    "kind, maps, group",
    [
        ("fmm", ["elu", "elu_flip"], "head"),
        ("fmm", ["elu"], None),
        ("linear", ["elu"] * 3, "channel"),
    ],
)
@pytest.mark.parametrize("granularity", ["scalar", "head", "channel"])
def test_blend_kernels(kind, maps, group, granularity):
    from fmmformer_pl.attention.blend import Blend
    from fmmformer_pl.attention.cuda.blend import blend_triton

    heads, dim = 3, 24
    cfg = AttentionConfig(
        kind=kind, bandwidth=4, feature_maps=maps, backend="reference",
        near_weight=BlendWeight(0.7, granularity), far_weights=[BlendWeight(0.3, granularity)],
        far_group_weight=None if group is None else BlendWeight(-0.4, group),
    )  # fmt: skip
    blend = Blend(cfg, heads, dim)
    with torch.no_grad():
        for p in blend.parameters():
            p.add_(torch.randn_like(p))
    n = len(maps) + (kind == "fmm")
    fields = [torch.randn(2, 150, heads, dim).transpose(1, 2) for _ in range(n)]

    def split(xs):
        return (xs[0], xs[1:]) if kind == "fmm" else (None, xs)

    _check(
        lambda *xs: blend_triton(list(xs), blend.coefficients()),
        lambda *xs: blend(*split(list(xs))),
        fields,
        params=list(blend.parameters()),
    )


@pytest.mark.parametrize(
    "kind, maps", [("fmm", ["elu", "elu_flip"]), ("linear", ["elu", "tanh", "relu"])]
)
@pytest.mark.parametrize("causal", [False, True])
def test_fused_layer_kernels(kind, maps, causal):
    """Near + far + blend as one node (gradients of q, k, v accumulated across the fields'
    kernels) against the layer's reference path, blend weights included."""
    from fmmformer_pl.attention.cuda.fmm import fmm_attention_triton

    heads, dim = 2, 16
    cfg = AttentionConfig(
        kind=kind, bandwidth=9, feature_maps=maps, backend="reference",
        near_weight=BlendWeight(0.5, "head"), far_weights=[BlendWeight(0.3, "channel")],
    )  # fmt: skip
    layer = FMMAttention(heads * dim, heads, cfg, causal)
    with torch.no_grad():
        for p in layer.blend.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    q, k, v, mask = _inputs(2, heads, 200, dim, dim, seed=3)
    bandwidth = 9 if kind == "fmm" else None
    _check(
        lambda q, k, v: fmm_attention_triton(
            q,
            k,
            v,
            layer.blend.coefficients(),
            bandwidth,
            maps,
            causal=causal,
            key_padding_mask=mask,
        ),  # fmt: skip
        lambda q, k, v: layer._attend(q, k, v, mask),
        (q, k, v),
        params=list(layer.blend.parameters()),
    )


def _interpreted_dispatch(monkeypatch, calls=None):
    """Point every ``_fast_path`` lookup at the interpreted kernels (CPU tensors allowed), as
    the CUDA dispatch would on a GPU; backend="reference" still gets the PyTorch path."""
    import importlib

    # (the package re-exports the functions far_field / near_field under the modules' names)
    modules = [
        importlib.import_module(f"fmmformer_pl.attention.{name}")
        for name in ("blend", "far_field", "layer", "near_field")
    ]
    from fmmformer_pl.attention.cuda.blend import blend_triton
    from fmmformer_pl.attention.cuda.far import far_field_triton, far_fields_triton
    from fmmformer_pl.attention.cuda.fmm import fmm_attention_triton
    from fmmformer_pl.attention.cuda.near import band_attention_triton

    kernels = {
        "fmm_attention_cuda": fmm_attention_triton,
        "near_field_cuda": band_attention_triton,
        "far_field_cuda": far_field_triton,
        "far_fields_cuda": far_fields_triton,
        "blend_cuda": blend_triton,
    }

    def dispatch(name, backend, q):
        if backend == "reference":
            return None
        if calls is not None:
            calls.append(name)
        return kernels[name]

    for module in modules:
        monkeypatch.setattr(module, "_fast_path", dispatch)


def _check_layers(fused, ref, q, k, v, mask):
    """The fused layer's ``_attend`` against the reference layer's: output and the gradients
    of q, k, v and the blend weights."""
    _check(
        lambda q, k, v: fused._attend(q, k, v, mask),
        lambda q, k, v: ref._attend(q, k, v, mask),
        (q, k, v),
        params=list(fused.blend.parameters()),
        ref_params=list(ref.blend.parameters()),
    )


def _layer_pair(kind, maps, causal, normalize=True, bandwidth=5, dropout=0.0, heads=2, dim=16):
    cfg = dict(
        kind=kind, bandwidth=bandwidth, feature_maps=maps, far_normalize=normalize,
        dropout=dropout,
    )  # fmt: skip
    fused = FMMAttention(heads * dim, heads, AttentionConfig(**cfg), causal)
    ref = FMMAttention(heads * dim, heads, AttentionConfig(**cfg, backend="reference"), causal)
    with torch.no_grad():
        for p in fused.blend.parameters():
            p.add_(torch.randn_like(p))
    ref.load_state_dict(fused.state_dict())
    return fused, ref


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "kind, maps", [("fmm", ["elu", "elu_flip"]), ("linear", ["elu", "elu_flip"]),
                   ("fmm", ["elu", "elu_flip", "tanh"])],
)  # fmt: skip
def test_layer_fused_path_incl_far_length(kind, maps, causal, monkeypatch):
    """FMMAttention._attend through its fused branch (the layer's own glue: coefficients,
    bandwidth or none, far_length folded into the far coefficients for far_normalize=False;
    r = 3 with the near field is 4 fields, two far-field passes) against the reference path,
    forward and backward (q, k, v and the blend weights), with padding."""
    calls = []
    _interpreted_dispatch(monkeypatch, calls)
    heads, dim = 2, 16
    fused, ref = _layer_pair(kind, maps, causal, normalize=False)
    q, k, v, mask = _inputs(1, heads, 90, dim, dim, seed=5)
    for far_length in (None, 256):
        _check(
            lambda q, k, v, n=far_length: fused._attend(q, k, v, mask, far_length=n),
            lambda q, k, v, n=far_length: ref._attend(q, k, v, mask, far_length=n),
            (q, k, v),
            params=list(fused.blend.parameters()),
            ref_params=list(ref.blend.parameters()),
        )
    assert calls == ["fmm_attention_cuda", "fmm_attention_cuda"]


@pytest.mark.parametrize("maps_per_call, pair", [(1, True), (2, True), (2, False)])
@pytest.mark.parametrize("causal", [False, True])
def test_layer_fused_path_many_segments(causal, maps_per_call, pair, monkeypatch):
    """The fused node with many far-field segments (the gradient accumulation of the near
    field and both maps over the cumsum-scanned states), the maps in one call or one each,
    causal walks for both maps at once (pair) or one after the other."""
    from fmmformer_pl.attention.cuda import far

    _interpreted_dispatch(monkeypatch)
    plan = dict(single_segment_chunks=2, min_segment_chunks=1, main_chunks_bidir=2)
    plan.update(maps_per_call_causal=maps_per_call, maps_per_call_bidir=maps_per_call)
    plan.update(pair_maps_causal=("fwd", "dq", "dkv") if pair else ())
    monkeypatch.setattr(far, "PLAN", {**far.PLAN, **plan})
    fused, ref = _layer_pair("fmm", ["elu", "elu_flip"], causal)
    q, k, v, mask = _inputs(1, 2, 1100, 16, 16, seed=9)
    _check_layers(fused, ref, q, k, v, mask)


@pytest.mark.parametrize("near_blend", [True, False], ids=["near_blends", "no_near_blend"])
@pytest.mark.parametrize("bandwidth", [5, None])
@pytest.mark.parametrize("causal", [False, True])
def test_fused_layer_with_the_per_mode_choices_flipped(causal, bandwidth, near_blend, monkeypatch):
    """The blend formed by the far forward kernels, by the near forward kernel or by the
    blend kernel, the far fields' blend-coefficient gradients summed by the state pass or by
    the blend backward (fmm.BLEND_IN_FAR_FORWARD, fmm.DC_IN_STATE_PASS, here the other way
    round from the plan; fmm.BLEND_IN_NEAR_FORWARD both ways), with and without a near
    field."""
    from fmmformer_pl.attention.cuda import fmm

    _interpreted_dispatch(monkeypatch)
    monkeypatch.setattr(fmm, "BLEND_IN_FAR_FORWARD", {"causal": True, "bidirectional": False})
    monkeypatch.setattr(fmm, "DC_IN_STATE_PASS", {"causal": False, "bidirectional": True})
    switch = {"causal": near_blend, "bidirectional": near_blend}
    monkeypatch.setattr(fmm, "BLEND_IN_NEAR_FORWARD", switch)
    kind = "fmm" if bandwidth else "linear"
    fused, ref = _layer_pair(kind, ["elu", "elu_flip"], causal)
    q, k, v, mask = _inputs(1, 2, 150, 16, 16, seed=11)
    _check_layers(fused, ref, q, k, v, mask)


@pytest.mark.parametrize(
    "maps, normalize, bandwidth, plan, heads, dim",
    [
        # a few blocks per program; the reverse states of 3 segments, in steps of 32
        (["elu", "elu_flip"], True, 5, (1, 32, 3), 2, 16),
        (["elu", "elu_flip"], False, 20, (64, 64, 0), 2, 16),  # a block each, 32-key tiles
        (["elu"], True, 100, (2, 128, 2), 3, 24),  # wide tiles, head_dim 24 (tiles of 32)
        (["tanh", "softplus"], True, 64, (1, 64, 0), 1, 16),  # phi' needs k, q
    ],
)
def test_short_layer_kernels(maps, normalize, bandwidth, plan, heads, dim, monkeypatch):
    """The short-path FMM layer (``fmm_short.py``) against the reference layer: output and
    the gradients of q, k, v and the blend weights, with padding, odd lengths, one or several
    blocks per program, state walks of 32-128 positions per step, the reverse states walked
    by every program or summed per segment by a second launch (``plan``: programs per SM,
    state step, reverse-state segments)."""
    from fmmformer_pl.attention.cuda import fmm

    _short_path(monkeypatch, *plan)
    calls = []
    forward = fmm.short_forward
    monkeypatch.setattr(fmm, "short_forward", lambda *a: calls.append(1) or forward(*a))
    _interpreted_dispatch(monkeypatch)
    fused, ref = _layer_pair("fmm", maps, False, normalize, bandwidth, heads=heads, dim=dim)
    for seq in (77, 200):
        q, k, v, mask = _inputs(2, heads, seq, dim, dim, seed=seq)
        _check_layers(fused, ref, q, k, v, mask)
    assert len(calls) == 2


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("masked", [True, False])
def test_short_path_equals_the_general_path(dropout_p, masked, monkeypatch):
    """Same seed, same dropout draws: the short-path kernels and the field kernels give the
    same output and gradients (coefficients included)."""
    from fmmformer_pl.attention.cuda.fmm import fmm_attention_triton

    q, k, v, mask = _inputs(2, 2, 150, 16, 16, seed=13)
    mask = mask if masked else None
    coeffs = torch.randn(3, 2, 16, generator=torch.Generator().manual_seed(4))

    def run():
        xs = [t.detach().clone().requires_grad_(True) for t in (q, k, v, coeffs)]
        torch.manual_seed(8)
        y = fmm_attention_triton(
            *xs[:3], xs[3], 9, ["elu", "elu_flip"], key_padding_mask=mask, dropout_p=dropout_p
        )
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
        return [y, *torch.autograd.grad(y, xs, g)]

    general = run()
    for segments in (0, 2):
        _short_path(monkeypatch, programs_per_sm=1, state_segments=segments)
        for a, b in zip(run(), general, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_short_path_applies_to_short_bidirectional_fmm_in_small_grids_only(monkeypatch):
    from fmmformer_pl.attention.cuda import fmm_short

    short = {**fmm_short.SHORT, "max_seq": 128, "max_blocks_per_sm": 1}
    monkeypatch.setattr(fmm_short, "SHORT", short)
    q = torch.zeros(1, 2, 128, 16)  # 2 rows x 2 blocks; the interpreter counts 8 SMs
    near = (5, 0.0, 0)
    assert fmm_short.short_applies(q, near, (0, 1), causal=False)
    assert fmm_short.short_applies(q, near, (0,), causal=False)
    assert not fmm_short.short_applies(q, near, (0, 1), causal=True)
    assert not fmm_short.short_applies(q, None, (0, 1), causal=False)  # kind "linear"
    assert not fmm_short.short_applies(q, near, (0, 1, 2), causal=False)  # two far groups
    assert not fmm_short.short_applies(torch.zeros(1, 2, 129, 16), near, (0,), causal=False)
    assert fmm_short.short_applies(torch.zeros(2, 2, 128, 16), near, (0,), causal=False)
    assert not fmm_short.short_applies(torch.zeros(3, 2, 128, 16), near, (0,), causal=False)


def test_short_path_segments_are_whole_state_steps(monkeypatch):
    from fmmformer_pl.attention.cuda import fmm_short

    monkeypatch.setattr(fmm_short, "SHORT", {**fmm_short.SHORT, "state_step": 64})
    for n, seq, expected in [(4, 1024, (4, 256)), (4, 100, (2, 64)), (3, 1000, (3, 384)),
                             (4, 1, (1, 64)), (0, 1024, (0, 0))]:  # fmt: skip
        monkeypatch.setitem(fmm_short.SHORT, "state_segments", n)
        n_seg, length = fmm_short.segments(seq)
        assert (n_seg, length) == expected
        if n_seg:
            assert length % 64 == 0 and (n_seg - 1) * length < seq <= n_seg * length


@pytest.mark.parametrize("segments", [4, 0])
@pytest.mark.parametrize("pdl, is_hopper", [(True, True), (False, True), (True, False)])
def test_short_path_launches_main_kernels_with_pdl_right_after_their_state_kernels(
    segments, pdl, is_hopper, monkeypatch
):
    """What makes programmatic dependent launch safe (``fmm_short_kernels.py``): a main kernel
    launched with PDL comes right after its state kernel, and only then; the kernels' PDL
    constexpr follows SHORT["pdl"] and the device (Hopper). Launches recorded, none run."""
    from fmmformer_pl.attention.cuda import fmm_short

    calls = []
    monkeypatch.setattr(
        fmm_short, "launch", lambda kernel, grid, *a, **kw: calls.append((kernel, kw))
    )
    monkeypatch.setattr(fmm_short, "hopper", lambda device: is_hopper)
    short = {"state_segments": segments, "pdl": pdl}
    monkeypatch.setattr(fmm_short, "SHORT", {**fmm_short.SHORT, **short})
    q = torch.randn(1, 2, 300, 16)
    coeffs = torch.randn(3, 2, 16)
    y, fields, saved = fmm_short.short_forward(q, q, q, coeffs, None, (5, 0.0, 0), (0, 1), True)
    fmm_short.short_backward(torch.ones_like(y), coeffs, fields, saved)

    kernels = [kernel for kernel, _ in calls]
    states = [fmm_short._short_state_kernel, fmm_short._short_rstate_kernel]
    mains = [fmm_short._short_fwd_kernel, fmm_short._short_bwd_kernel]
    on = pdl and is_hopper
    if segments:
        assert kernels == [states[0], mains[0], states[1], mains[1]]
    else:
        assert kernels == mains
    for kernel, kw in calls:
        assert kw["PDL"] is on
        assert kw.get("launch_pdl", False) is (on and kernel in mains and bool(segments))


def test_far_kernels_refuse_malformed_fused_arguments(monkeypatch):
    """far_forward's blend and far_backward's scales are read as contiguous float32 rows by
    the kernels: anything else is refused, as is a blend the walks cannot form."""
    from fmmformer_pl.attention.cuda import far
    from fmmformer_pl.attention.cuda._common import empty_like_layout

    q, k, v, _ = _inputs(1, 2, 70, 16, 16, seed=1)
    y = empty_like_layout(q, 16)
    good = torch.zeros(3, 2, 16)
    for coeffs in (good[:2], good.double(), good.transpose(1, 2).contiguous().transpose(1, 2)):
        with pytest.raises(ValueError, match="blend coeffs"):
            far.far_forward(q, k, v, None, (0, 1), False, True, (y, y, coeffs))
    monkeypatch.setattr(far, "PLAN", {**far.PLAN, "pair_maps_causal": ()})
    with pytest.raises(ValueError, match="blend_fusable"):
        far.far_forward(q, k, v, None, (0, 1), True, True, (y, y, good))
    outs, saved = far.far_forward(q, k, v, None, (0, 1), False, True)
    dy = torch.ones_like(outs[0])
    with pytest.raises(ValueError, match="dscales needs scales"):
        far.far_backward(saved, [dy], dscales=torch.zeros(2, 2, 16))
    with pytest.raises(ValueError, match="scales must be contiguous float32"):
        far.far_backward(saved, [dy], scales=torch.zeros(3, 2, 16))
    with pytest.raises(ValueError, match="dscales must be contiguous float32"):
        far.far_backward(saved, [dy], scales=torch.zeros(2, 2, 16), dscales=torch.zeros(2, 2, 8))


def test_near_kernel_refuses_a_malformed_blend():
    """near_forward's blend: 1-3 far fields and y laid out like its output, contiguous float32
    coefficients, one row per field."""
    from fmmformer_pl.attention.cuda import near
    from fmmformer_pl.attention.cuda._common import empty_like_layout

    q, k, v, _ = _inputs(1, 2, 70, 16, 16, seed=1)
    y, far = empty_like_layout(q, 16), empty_like_layout(q, 16)
    good = torch.zeros(3, 2, 16)
    args = (q, k, v, None, 5, False, 0.0, 0)
    for coeffs in (good[:2], good.double(), good.transpose(1, 2).contiguous().transpose(1, 2)):
        with pytest.raises(ValueError, match="blend coeffs"):
            near.near_forward(*args, (y, [far, far], coeffs))
    # no far field, four, one laid out otherwise (contiguous, not the model's layout), y so,
    # one of another dtype, one shorter with the same strides
    short = far[:, :, :50]
    cases = [([], y), ([far] * 4, y), ([far, far.contiguous()], y), ([far, far], k)]
    cases += [([far, far.double()], y), ([far, short], y)]
    for fars, out in cases:
        with pytest.raises(ValueError, match="laid out like out"):
            near.near_forward(*args, (out, fars, torch.zeros(len(fars) + 1, 2, 16)))


def test_layer_fused_path_validates_inputs(monkeypatch):
    """Bad masks and inputs are refused as on the reference path, not read as raw bytes."""
    _interpreted_dispatch(monkeypatch)
    fused, _ = _layer_pair("fmm", ["elu"], causal=False)
    q, k, v, mask = _inputs(2, 2, 50, 16, 16, seed=1)
    with pytest.raises(TypeError, match="key_padding_mask must be bool"):
        fused._attend(q, k, v, mask.float())
    with pytest.raises(ValueError, match="key_padding_mask"):
        fused._attend(q, k, v, mask[:, :10])
    with pytest.raises(TypeError, match="share a dtype"):
        fused._attend(q, k.double(), v, mask)


@pytest.mark.parametrize("causal", [False, True])
def test_layer_fused_and_unfused_gpu_paths_draw_the_same_dropout(causal, monkeypatch):
    """Training with attention dropout: the one-node path and the field-by-field GPU path
    (near_field, far_fields, blend) give the same output under the same torch seed."""
    _interpreted_dispatch(monkeypatch)
    fused, unfused = _layer_pair("fmm", ["elu", "elu_flip"], causal, dropout=0.3)
    q, k, v, mask = _inputs(1, 2, 120, 16, 16, seed=2)
    fused.train()
    torch.manual_seed(123)
    a = fused._attend(q, k, v, mask)
    monkeypatch.setattr(fused, "_fused", lambda *args: None)  # force the field-by-field path
    torch.manual_seed(123)
    b = fused._attend(q, k, v, mask)
    torch.manual_seed(124)
    c = fused._attend(q, k, v, mask)
    assert _rel(a, b) < 1e-6
    assert _rel(c, b) > 1e-3  # another seed, other dropout


def test_blend_kernel_declines_strided_fields():
    """A sliced (non-dense) field would get a contiguous gradient buffer written with its own
    strides: the kernel declines it and the PyTorch blend runs."""
    from fmmformer_pl.attention.cuda.blend import blend_triton

    fields = [torch.randn(1, 2, 70, 32)[..., :16] for _ in range(2)]
    assert blend_triton(fields, torch.ones(2, 2, 16)) is None
    dense = [f.contiguous() for f in fields]
    assert blend_triton(dense, torch.ones(2, 2, 16)) is not None


def test_cuda_entry_points_pass_their_arguments_through(monkeypatch):
    """``fmmformer_pl.attention.cuda``'s entry points (what the dispatch calls on a GPU) reach
    the kernels with every argument: run here with the device check bypassed."""
    from fmmformer_pl.attention import cuda

    q, k, v, mask = _inputs(1, 2, 70, 16, 16, seed=4)
    assert cuda.near_field_cuda(q, k, v, 5) is None  # CPU tensors: declined
    monkeypatch.setattr(cuda, "_usable", lambda q: True)
    for causal in (False, True):
        kw = dict(causal=causal, key_padding_mask=mask)
        torch.testing.assert_close(
            cuda.near_field_cuda(q, k, v, 5, **kw),
            near_field(q, k, v, 5, backend="reference", **kw),
        )
        torch.testing.assert_close(
            cuda.far_field_cuda(q, k, v, "tanh", normalize=False, **kw),
            far_field(q, k, v, "tanh", normalize=False, backend="reference", **kw),
        )
        got = cuda.far_fields_cuda(q, k, v, ["elu", "relu"], **kw)
        for out, name in zip(got, ["elu", "relu"], strict=True):
            torch.testing.assert_close(out, far_field(q, k, v, name, backend="reference", **kw))
        coeffs = torch.rand(3, 2, 16)
        fields = [got[0], got[1], got[0] * 2]
        expect = sum(c[None, :, None, :] * f for c, f in zip(coeffs, fields, strict=True))
        torch.testing.assert_close(cuda.blend_cuda(fields, coeffs), expect)
        fmm = cuda.fmm_attention_cuda(q, k, v, coeffs[:2], None, ["elu", "relu"], **kw)
        torch.testing.assert_close(
            fmm, coeffs[0][None, :, None] * got[0] + coeffs[1][None, :, None] * got[1]
        )


def test_map_groups_follow_the_plan(monkeypatch):
    from fmmformer_pl.attention.cuda import far

    monkeypatch.setattr(far, "PLAN", {**far.PLAN, "maps_per_call_causal": 1})
    assert far.map_groups((0, 1, 2), causal=True) == [(0,), (1,), (2,)]
    assert far.map_groups((0, 1, 2), causal=False) == [(0, 1), (2,)]
    monkeypatch.setattr(far, "PLAN", {**far.PLAN, "maps_per_call_bidir": 3})
    with pytest.raises(ValueError, match="maps per call"):
        far.map_groups((0, 1, 2), causal=False)


def _op_cases():
    # (bandwidth or None, maps, causal, normalize, masked)
    return [
        (5, ("elu", "elu_flip"), False, True, True),
        (5, ("elu", "elu_flip"), True, True, True),
        (None, ("elu",), True, False, False),
        (7, ("tanh", "softplus", "relu"), False, False, True),
    ]


# Many segments (the states' cumsum and their rebuild in the backward op) or one.
_MANY_SEGMENTS = dict(single_segment_chunks=0, min_segment_chunks=1, main_chunks_bidir=2)


@pytest.mark.parametrize("segments", ["one", "many", "short"])
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("bandwidth, maps, causal, normalize, masked", _op_cases())
def test_fmm_custom_op_matches_the_function(
    bandwidth, maps, causal, normalize, masked, dropout_p, segments, monkeypatch
):
    """The custom ops (what torch.compile runs) against the autograd.Function (eager), with
    the same dropout draws."""
    from fmmformer_pl.attention.cuda import far
    from fmmformer_pl.attention.cuda.fmm import fmm_attention_triton
    from fmmformer_pl.attention.cuda.fmm_op import fmm_attention_op

    if segments == "many":
        monkeypatch.setattr(far, "PLAN", {**far.PLAN, **_MANY_SEGMENTS})
    if segments == "short":  # the short path where it applies (bidirectional, r <= 2)
        _short_path(monkeypatch, programs_per_sm=1, state_segments=2)
    q, k, v, mask = _inputs(1, 2, 150, 16, 16, seed=3)  # 3 chunks: 3 segments when "many"
    mask = mask if masked else None
    n_fields = len(maps) + (bandwidth is not None)
    coeffs = torch.randn(n_fields, 2, 16)
    kw = dict(causal=causal, normalize=normalize, key_padding_mask=mask, dropout_p=dropout_p)

    def run(fn):
        xs = [t.detach().clone().requires_grad_(True) for t in (q, k, v, coeffs)]
        torch.manual_seed(5)
        y = fn(*xs[:3], xs[3], bandwidth, maps, **kw)
        g = torch.autograd.grad(y, xs, torch.ones_like(y))
        return [y, *g]

    for a, b in zip(run(fmm_attention_op), run(fmm_attention_triton), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("segments", ["one", "many", "short"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("normalize, dropout_p", [(True, 0.0), (False, 0.2)])
def test_fmm_custom_op_passes_opcheck(causal, normalize, dropout_p, segments, monkeypatch):
    """Schema, fake tensors (shapes and strides of every output, also the segment states of
    a many-segment plan and the short path's extras), autograd registration and AOT dispatch
    of the forward op, as torch.library checks them."""
    from fmmformer_pl.attention.cuda import far, fmm_op  # noqa: F401 (fmm_op registers)

    if segments == "many":
        monkeypatch.setattr(far, "PLAN", {**far.PLAN, **_MANY_SEGMENTS})
    if segments == "short":
        if causal:
            pytest.skip("the short path is bidirectional")
        _short_path(monkeypatch, programs_per_sm=1)
    q, k, v, mask = _inputs(1, 2, 150, 16, 16, seed=4)  # 3 chunks: 3 segments when "many"
    seed = torch.tensor([123]) if dropout_p > 0 else None
    args = (
        q.detach().requires_grad_(True), k.detach().requires_grad_(True),
        v.detach().requires_grad_(True), torch.randn(3, 2, 16, requires_grad=True), mask,
        5, dropout_p, seed, causal, [0, 1], normalize,
    )  # fmt: skip
    torch.library.opcheck(torch.ops.fmmformer.fmm_attention_fwd.default, args)


@pytest.mark.parametrize("short", [False, True], ids=["general", "short"])
def test_compiled_op_does_not_recompile_per_sequence_length(short, monkeypatch):
    """dynamic=True: two lengths with the same segment plan trace once (a guard on the length,
    e.g. from math.sqrt in the fake, would compile a graph per length)."""
    from torch._dynamo.testing import CompileCounter

    from fmmformer_pl.attention.cuda.fmm_op import fmm_attention_op

    if short:
        _short_path(monkeypatch)

    counter = CompileCounter()
    coeffs = torch.randn(3, 2, 16)

    def attend(q, k, v):
        return fmm_attention_op(q, k, v, coeffs, 5, ["elu", "elu_flip"], normalize=False)

    torch._dynamo.reset()
    compiled = torch.compile(attend, backend=counter, dynamic=True, fullgraph=True)
    for seq in (70, 90):  # two chunks of 64 each: one plan
        q, k, v, _ = _inputs(1, 2, seq, 16, 16, seed=seq)
        torch.testing.assert_close(compiled(q, k, v), attend(q, k, v))
    assert counter.frame_count == 1


def test_compiled_dispatch_checks_like_the_eager_one(monkeypatch):
    from fmmformer_pl.attention import layer as layer_module

    q = torch.zeros(1, 1, 4, 8)
    assert layer_module._compiled_fast_path("auto", q) is None
    assert layer_module._compiled_fast_path("reference", q) is None
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        layer_module._compiled_fast_path("cuda", q)
    with pytest.raises(ValueError, match="backend must be"):
        layer_module._compiled_fast_path("gpu", q)


@pytest.mark.parametrize("causal", [False, True])
def test_layer_compiles_in_one_graph_with_the_custom_op(causal, monkeypatch):
    """torch.compile(fullgraph=True) of the layer: the fused path traces as the custom ops
    (no graph break), with the output and gradients of the eager layer."""
    from fmmformer_pl.attention import layer as layer_module
    from fmmformer_pl.attention.cuda.fmm_op import fmm_attention_op

    _interpreted_dispatch(monkeypatch)
    monkeypatch.setattr(
        layer_module,
        "_compiled_fast_path",
        lambda backend, q: None if backend == "reference" else fmm_attention_op,
    )
    fused, ref = _layer_pair("fmm", ["elu", "elu_flip"], causal)
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


def test_compiled_layer_draws_a_fresh_dropout_seed_per_call(monkeypatch):
    """Under torch.compile the near field's dropout seed is drawn in the graph, not baked in
    at trace time: calls differ from each other and match the eager layer's draws."""
    from fmmformer_pl.attention import layer as layer_module
    from fmmformer_pl.attention.cuda.fmm_op import fmm_attention_op

    _interpreted_dispatch(monkeypatch)
    monkeypatch.setattr(layer_module, "_compiled_fast_path", lambda b, q: fmm_attention_op)
    fused, _ = _layer_pair("fmm", ["elu", "elu_flip"], False, dropout=0.3)
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
