"""The short path (``ops/short``: the bidirectional FMM layer of a short sequence in two
launches each way) against the reference layer and against the general path, when it applies,
and its launch order under programmatic dependent launch. ``helpers.py`` says where each test
runs."""

from __future__ import annotations

import pytest
import torch

from fmmformer_pl.attention.config import AttentionConfig
from fmmformer_pl.attention.layer import FMMAttention
from fmmformer_pl.attention.ops.plan import DEFAULT_PLAN

from .helpers import (
    INTERPRET,
    TOL,
    cuda_inputs,
    cuda_padding,
    cuda_rel,
    gpu,
    inputs,
    interpreter,
)
from .test_fmm import GENERAL, check_layers, layer_pair


def short_plan(base=INTERPRET, programs_per_sm=2, state_step=64, state_segments=0, **extra):
    """The short path for every bidirectional sequence of these tests. The interpreter
    counts 8 SMs: ``programs_per_sm`` * 8 programs over the grid, so few programs per row
    own several blocks each."""
    short = dict(max_seq=1 << 20, max_blocks_per_sm=1 << 20, programs_per_sm=programs_per_sm)
    return base.with_(short=dict(short, state_step=state_step, state_segments=state_segments,
                                 **extra))  # fmt: skip


# ------------------------------------------------------------------ interpreter


@interpreter
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
def test_short_layer_kernels(maps, normalize, bandwidth, plan, heads, dim):
    """The short-path FMM layer against the reference layer: output and the gradients of q,
    k, v and the blend weights, with padding, odd lengths, one or several blocks per program,
    state walks of 32-128 positions per step, the reverse states walked by every program or
    summed per segment by a second launch (``plan``: programs per SM, state step,
    reverse-state segments)."""
    from fmmformer_pl.attention.feature_maps import kernel_codes
    from fmmformer_pl.attention.ops.short.op import short_applies

    kernel_plan = short_plan(INTERPRET, *plan)
    fused, ref = layer_pair("fmm", maps, False, normalize, bandwidth, heads=heads, dim=dim,
                            plan=kernel_plan)  # fmt: skip
    for seq in (77, 200):
        q, k, v, mask = inputs(2, heads, seq, dim, dim, seed=seq)
        assert short_applies(q, (bandwidth,), kernel_codes(maps), False, kernel_plan)
        check_layers(fused, ref, q, k, v, mask)


@interpreter
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("masked", [True, False])
def test_short_path_equals_the_general_path(dropout_p, masked):
    """Same seed, same dropout draws: the short-path kernels and the field kernels give the
    same output and gradients (coefficients included)."""
    from fmmformer_pl.attention.ops.fmm.op import fmm_attention_kernel

    q, k, v, mask = inputs(2, 2, 150, 16, 16, seed=13)
    mask = mask if masked else None
    coeffs = torch.randn(3, 2, 16, generator=torch.Generator().manual_seed(4))

    def run(plan):
        xs = [t.detach().clone().requires_grad_(True) for t in (q, k, v, coeffs)]
        torch.manual_seed(8)
        y = fmm_attention_kernel(
            *xs[:3], xs[3], 9, ["elu", "elu_flip"], key_padding_mask=mask, dropout_p=dropout_p,
            plan=plan,
        )  # fmt: skip
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
        return [y, *torch.autograd.grad(y, xs, g)]

    general = run(GENERAL)
    for segments in (0, 2):
        for a, b in zip(run(short_plan(programs_per_sm=1, state_segments=segments)), general,
                        strict=True):  # fmt: skip
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_short_path_applies_to_short_bidirectional_fmm_in_small_grids_only():
    pytest.importorskip("triton")
    from fmmformer_pl.attention.ops.short.op import short_applies

    plan = INTERPRET.with_(short=dict(max_seq=128, max_blocks_per_sm=1))
    q = torch.zeros(1, 2, 128, 16)  # 2 rows x 2 blocks; the interpreter counts 8 SMs
    near = (5, 0.0, 0)
    assert short_applies(q, near, (0, 1), False, plan)
    assert short_applies(q, near, (0,), False, plan)
    assert not short_applies(q, near, (0, 1), True, plan)
    assert not short_applies(q, None, (0, 1), False, plan)  # kind "linear"
    assert not short_applies(q, near, (0, 1, 2), False, plan)  # two far groups
    assert not short_applies(torch.zeros(1, 2, 129, 16), near, (0,), False, plan)
    assert short_applies(torch.zeros(2, 2, 128, 16), near, (0,), False, plan)
    assert not short_applies(torch.zeros(3, 2, 128, 16), near, (0,), False, plan)


def test_short_path_segments_are_whole_state_steps():
    pytest.importorskip("triton")
    from fmmformer_pl.attention.ops.short.op import segments

    for n, seq, expected in [(4, 1024, (4, 256)), (4, 100, (2, 64)), (3, 1000, (3, 384)),
                             (4, 1, (1, 64)), (0, 1024, (0, 0))]:  # fmt: skip
        plan = DEFAULT_PLAN.with_(short=dict(state_step=64, state_segments=n))
        n_seg, length = segments(seq, plan)
        assert (n_seg, length) == expected
        if n_seg:
            assert length % 64 == 0 and (n_seg - 1) * length < seq <= n_seg * length


@interpreter
@pytest.mark.parametrize("segments", [4, 0])
@pytest.mark.parametrize("pdl, is_hopper", [(True, True), (False, True), (True, False)])
def test_short_path_launches_main_kernels_with_pdl_right_after_their_state_kernels(
    segments, pdl, is_hopper, monkeypatch
):
    """What makes programmatic dependent launch safe (``kernels.py``): a main kernel
    launched with PDL comes right after its state kernel, and only then; the kernels' PDL
    constexpr follows ``ShortPlan.pdl`` and the device (Hopper). Launches recorded (a spy in
    place of the launcher), none run."""
    from fmmformer_pl.attention.ops.short import op as short_op

    calls = []
    monkeypatch.setattr(
        short_op, "launch", lambda kernel, grid, *a, **kw: calls.append((kernel, kw))
    )
    monkeypatch.setattr(short_op, "hopper", lambda device, plan: is_hopper)
    plan = DEFAULT_PLAN.with_(short=dict(state_segments=segments, pdl=pdl))
    q = torch.randn(1, 2, 300, 16)
    coeffs = torch.randn(3, 2, 16)
    y, fields, saved = short_op.short_forward(
        q, q, q, coeffs, None, (5, 0.0, 0), (0, 1), True, plan
    )
    short_op.short_backward(torch.ones_like(y), coeffs, fields, saved)

    kernels = [kernel for kernel, _ in calls]
    states = [short_op.short_state_kernel, short_op.short_rstate_kernel]
    mains = [short_op.short_fwd_kernel, short_op.short_bwd_kernel]
    on = pdl and is_hopper
    if segments:
        assert kernels == [states[0], mains[0], states[1], mains[1]]
    else:
        assert kernels == mains
    for kernel, kw in calls:
        assert kw["PDL"] is on
        assert kw.get("launch_pdl", False) is (on and kernel in mains and bool(segments))


# ------------------------------------------------------------------ GPU


@gpu
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
    path, dtype, normalize, maps, bandwidth, padding, shape
):
    """FMMAttention's fused node on the short path and on the general path,
    against the float64 reference layer: output, q, k, v and blend-weight gradients."""
    plan = _gpu_plan(path == "short")
    batch, heads, seq, dim = shape
    cfg = dict(kind="fmm", bandwidth=bandwidth, feature_maps=maps, far_normalize=normalize)
    fast = FMMAttention(heads * dim, heads, AttentionConfig(**cfg), False, kernel_plan=plan)
    fast = fast.cuda()
    ref = FMMAttention(heads * dim, heads, AttentionConfig(**cfg, backend="reference"), False)
    with torch.no_grad():
        for p in fast.blend.parameters():
            p.add_(torch.randn_like(p))
    ref.load_state_dict(fast.state_dict())
    ref = ref.cuda().double()
    mask = cuda_padding(batch, seq, padding)
    q, k, v = cuda_inputs(batch, heads, seq, dim, dim, dtype)
    xs = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    xr = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    out, expect = fast._attend(*xs, mask), ref._attend(*xr, mask)
    assert out.dtype == dtype
    grad = torch.randn_like(expect)
    got = torch.autograd.grad(out, xs + list(fast.blend.parameters()), grad.to(dtype))
    want = torch.autograd.grad(expect, xr + list(ref.blend.parameters()), grad)
    tol_out, tol_grad = TOL[dtype]
    assert cuda_rel(out, expect) < tol_out
    for name, g, w in zip(("dq", "dk", "dv", "dc0", "dc1", "dc2"), got, want, strict=False):
        assert cuda_rel(g, w) < tol_grad, (name, cuda_rel(g, w))


def _gpu_plan(short: bool, **extra):
    """The short path for every bidirectional length here, or the general path."""
    limits = dict(max_seq=(1 << 20) * short, max_blocks_per_sm=1 << 20, **extra)
    return DEFAULT_PLAN.with_(short=limits)


@gpu
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_short_path_equals_the_general_path_on_the_gpu(dropout_p):
    """float32, same seed: the short-path kernels and the field kernels agree (the same
    dropout draws included)."""
    from fmmformer_pl.attention.ops.fmm.op import fmm_attention_kernel

    q, k, v = cuda_inputs(2, 4, 777, 64, 64, torch.float32)
    mask = cuda_padding(2, 777, "right")
    coeffs = torch.randn(3, 4, 64, device="cuda")

    def run(on):
        xs = [t.detach().clone().requires_grad_(True) for t in (q, k, v, coeffs)]
        y = fmm_attention_kernel(
            *xs[:3], xs[3], 16, ["elu", "elu_flip"], key_padding_mask=mask, dropout_p=dropout_p,
            plan=_gpu_plan(on),
        )  # fmt: skip
        g = torch.randn(y.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
        return [y, *torch.autograd.grad(y, xs, g)]

    torch.manual_seed(3)
    short = run(True)
    torch.manual_seed(3)
    general = run(False)
    for a, b in zip(short, general, strict=True):
        assert cuda_rel(a, b.double()) < 1e-4


@gpu
@pytest.mark.parametrize("programs_per_sm", [2, 1])
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_short_path_programmatic_launch_changes_no_number(dropout_p, programs_per_sm):
    """The short path's main kernels launched with PDL (starting while their state kernels
    run, ``kernels.py``) give the numbers they give without it: bit for bit, but the blend
    weights' gradient (atomics in any order). On Hopper the launches do use PDL. One program
    per SM: 2 blocks per program on the H200, so a program waits for the states at its first
    block and reads them at its second."""
    from fmmformer_pl.attention.ops.common import launch
    from fmmformer_pl.attention.ops.common.host import hopper
    from fmmformer_pl.attention.ops.fmm.op import fmm_attention_kernel
    from fmmformer_pl.attention.ops.short import op as short_op

    q, k, v = cuda_inputs(3, 4, 901, 64, 64, torch.bfloat16)
    mask = cuda_padding(3, 901, "scattered")
    coeffs = torch.randn(3, 4, 64, device="cuda")

    def run(pdl):
        plan = _gpu_plan(True, pdl=pdl, programs_per_sm=programs_per_sm)
        xs = [t.detach().clone().requires_grad_(True) for t in (q, k, v, coeffs)]
        torch.manual_seed(5)
        y = fmm_attention_kernel(
            *xs[:3], xs[3], 33, ["elu", "elu_flip"], key_padding_mask=mask, dropout_p=dropout_p,
            plan=plan,
        )  # fmt: skip
        g = torch.randn(y.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(2))
        return [y, *torch.autograd.grad(y, xs, g)]

    plain, overlapped = run(False), run(True)
    for a, b in zip(overlapped[:4], plain[:4], strict=True):
        assert torch.equal(a, b)
    assert cuda_rel(overlapped[4], plain[4].double()) < 1e-5
    used = {
        entry[0].metadata.launch_pdl
        for key, entry in launch._CACHE.items()
        if entry is not None and key[0] in (short_op.short_fwd_kernel, short_op.short_bwd_kernel)
    }
    assert True in used if hopper(q.device, DEFAULT_PLAN) else used == {False}
