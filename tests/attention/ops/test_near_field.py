"""The near field's kernels (``ops/near_field``) against its reference: forward and the
gradients of q, k, v over odd sizes, padding, causal and bidirectional bands, the narrow and
wide tiles, and the in-kernel dropout against the dense reference with the kernels' own keep
pattern. ``helpers.py`` says where each test runs."""

from __future__ import annotations

import pytest
import torch

from fmmformer_pl.attention import near_field
from fmmformer_pl.attention.naive import visible_keys
from fmmformer_pl.attention.ops.plan import DEFAULT_PLAN, NearPlan

from ..conftest import dense_band_dropout
from .helpers import (
    INTERPRET,
    check,
    compare,
    cuda_inputs,
    cuda_padding,
    gpu,
    inputs,
    interpreter,
)

# ------------------------------------------------------------------ interpreter


@interpreter
@pytest.mark.parametrize("blocks", [(64, 64), (128, 32)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "bandwidth, narrow", [(5, True), (5, False), (16, True), (20, True), (100, True)]
)
def test_near_field_kernels(blocks, causal, bandwidth, narrow):
    """Against the reference, with the wide tiles and (narrow bands) the 16- and 32-tiles."""
    from fmmformer_pl.attention.ops.near_field.op import near_field_kernel

    near = NearPlan(block_m=blocks[0], block_n=blocks[1])
    if not narrow:
        near = NearPlan(block_m=blocks[0], block_n=blocks[1], narrow_tiles=())
    plan = INTERPRET.with_(near=near)
    q, k, v, mask = inputs(1, 2, 300, 16, 16, seed=bandwidth)
    kw = dict(causal=causal, key_padding_mask=mask)
    check(
        lambda q, k, v: near_field_kernel(q, k, v, bandwidth, plan=plan, **kw),
        lambda q, k, v: near_field(q, k, v, bandwidth, backend="reference", **kw),
        (q, k, v),
    )


@interpreter
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bandwidth", [5, 20, 33])  # 16-, 32- and 64-wide tiles
@pytest.mark.parametrize("seed_kind", ["int", "tensor"])
def test_near_field_dropout_matches_the_dense_reference(causal, bandwidth, seed_kind):
    """Dropout in every kernel against the dense reference with the kernels' own keep
    pattern: output and gradients, padding, the seed as an int (eager) or as a tensor the
    kernels load (the compiled op)."""
    from fmmformer_pl.attention.ops.near_field.op import near_field_kernel

    from .keep_matrix import dropout_keep_matrix

    batch, heads, seq, dim, p, seed = 1, 2, 150, 16, 0.3, 77
    q, k, v, mask = inputs(batch, heads, seq, dim, dim, seed=bandwidth)
    keep = torch.stack(
        [dropout_keep_matrix(seq, bandwidth, p, seed + n, "cpu") for n in range(heads)]
    ).view(batch, heads, seq, seq)
    visible = visible_keys(seq, bandwidth, causal, mask, q.device)
    seed_arg = seed if seed_kind == "int" else torch.tensor([seed])

    def fast(a, b, c):
        return near_field_kernel(a, b, c, bandwidth, causal, mask, p, seed_arg, plan=INTERPRET)

    check(fast, lambda a, b, c: dense_band_dropout(a, b, c, visible, keep, p), (q, k, v))


def test_near_field_tiles_follow_the_band():
    """Narrow bands get tiles of 16 or 32 across the band (both kernels' sides), wide 64."""
    plan = NearPlan()
    assert plan.tiles(5) == (dict(BM=64, BN=16), dict(BM=16, BN=64))
    assert plan.tiles(20) == (dict(BM=64, BN=32), dict(BM=32, BN=64))
    assert plan.tiles(64) == (dict(BM=64, BN=64), dict(BM=64, BN=64))
    assert NearPlan(narrow_tiles=()).tiles(5) == (dict(BM=64, BN=64), dict(BM=64, BN=64))


@interpreter
def test_near_kernel_refuses_a_malformed_blend():
    """near_forward's blend: 1-3 far fields and y laid out like its output, contiguous float32
    coefficients, one row per field."""
    from fmmformer_pl.attention.ops.common.host import empty_like_layout
    from fmmformer_pl.attention.ops.near_field.op import NearArgs, near_forward

    q, k, v, _ = inputs(1, 2, 70, 16, 16, seed=1)
    y, far = empty_like_layout(q, 16), empty_like_layout(q, 16)
    good = torch.zeros(3, 2, 16)
    args = (q, k, v, None, NearArgs(5, 0.0, 0), False, INTERPRET.near)
    for coeffs in (good[:2], good.double(), good.transpose(1, 2).contiguous().transpose(1, 2)):
        with pytest.raises(ValueError, match="blend coeffs"):
            near_forward(*args, (y, [far, far], coeffs))
    # no far field, four, one laid out otherwise (contiguous, not the model's layout), y so,
    # one of another dtype, one shorter with the same strides
    short = far[:, :, :50]
    cases = [([], y), ([far] * 4, y), ([far, far.contiguous()], y), ([far, far], k)]
    cases += [([far, far.double()], y), ([far, short], y)]
    for fars, out in cases:
        with pytest.raises(ValueError, match="laid out like out"):
            near_forward(*args, (out, fars, torch.zeros(len(fars) + 1, 2, 16)))


# ------------------------------------------------------------------ GPU


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bandwidth", [1, 5, 64, 100])
@pytest.mark.parametrize("shape", [(2, 3, 1, 64, 64), (2, 3, 63, 64, 64), (1, 2, 1000, 40, 24)])
def test_near_field_matches_reference(dtype, causal, bandwidth, shape):
    batch, heads, seq, dim, dim_v = shape
    q, k, v = cuda_inputs(batch, heads, seq, dim, dim_v, dtype)
    mask = cuda_padding(batch, seq, "right")
    kw = dict(causal=causal, key_padding_mask=mask)
    compare(
        lambda a, b, c: near_field(a, b, c, bandwidth, backend="cuda", **kw),
        lambda a, b, c: near_field(a, b, c, bandwidth, backend="reference", **kw),
        q, k, v, dtype, f"near {shape} {dtype} w={bandwidth} causal={causal}",
    )  # fmt: skip


@gpu
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bandwidth", [5, 64, 100])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_near_field_other_tiles_match_reference(causal, bandwidth, dtype):
    """Wide tiles for every band, and blocks of 128 x 32 (the tests above run the plan's)."""
    q, k, v = cuda_inputs(2, 3, 1000, 40, 24, dtype)
    kw = dict(causal=causal, key_padding_mask=cuda_padding(2, 1000, "right"))
    for near in (NearPlan(narrow_tiles=()), NearPlan(block_m=128, block_n=32)):
        plan = DEFAULT_PLAN.with_(near=near)
        compare(
            lambda a, b, c, plan=plan: near_field(a, b, c, bandwidth, backend="cuda", plan=plan,
                                                  **kw),
            lambda a, b, c: near_field(a, b, c, bandwidth, backend="reference", **kw),
            q, k, v, dtype, f"near {near} {dtype} w={bandwidth} causal={causal}",
        )  # fmt: skip


@gpu
@pytest.mark.parametrize("causal", [False, True])
def test_near_field_scattered_padding_and_empty_rows(causal):
    """Padding everywhere but position 0 of one sequence: rows with no key give 0, no NaN."""
    q, k, v = cuda_inputs(2, 2, 300, 64, 64, torch.bfloat16)
    mask = cuda_padding(2, 300, "scattered")
    mask[1, 1:] = True
    kw = dict(causal=causal, key_padding_mask=mask)
    compare(
        lambda a, b, c: near_field(a, b, c, 8, backend="cuda", **kw),
        lambda a, b, c: near_field(a, b, c, 8, backend="reference", **kw),
        q, k, v, torch.bfloat16, f"near scattered causal={causal}",
    )  # fmt: skip
    out = near_field(q, k, v, 8, backend="cuda", **kw)
    assert (out[1, :, 9:] == 0).all()  # beyond the band of the only key: empty rows


@gpu
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padding", ["none", "right"])
@pytest.mark.parametrize("width", [5, 16, 20, 64])
def test_near_field_dropout_matches_masked_reference(causal, padding, width):
    """Dropout: the kernel's keep pattern (regenerated from the seed) applied to the dense
    reference gives the same output and gradients; about 1 - p of the entries are kept.
    Widths 5 and 16 run the 16-wide tiles, 20 the 32-wide ones, 64 the wide ones."""
    from fmmformer_pl.attention.ops.near_field.op import near_field_kernel

    from .keep_matrix import dropout_keep_matrix

    batch, heads, seq, dim, p, seed = 2, 2, 300, 64, 0.25, 1234
    q, k, v = cuda_inputs(batch, heads, seq, dim, dim, torch.float32)
    mask = cuda_padding(batch, seq, padding)
    keep = torch.stack(
        [dropout_keep_matrix(seq, width, p, seed + n, q.device) for n in range(batch * heads)]
    ).view(batch, heads, seq, seq)
    visible = visible_keys(seq, width, causal, mask, q.device)
    kept = keep[visible.expand_as(keep)].float().mean().item()
    assert abs(kept - (1 - p)) < 0.03, kept

    compare(
        lambda a, b, c: near_field_kernel(a, b, c, width, causal, mask, p, seed),
        lambda a, b, c: dense_band_dropout(a, b, c, visible, keep, p), q, k, v, torch.float32,
        f"near dropout causal={causal} padding={padding}",
    )  # fmt: skip


@gpu
@pytest.mark.parametrize("width", [5, 64])
def test_near_field_dropout_seed_read_from_device_memory(width):
    """The compiled op's seed is a device tensor the kernels load: same draws as the int."""
    from fmmformer_pl.attention.ops.near_field.op import NearArgs, near_backward, near_forward

    q, k, v = cuda_inputs(2, 2, 300, 64, 64, torch.bfloat16)
    mask = cuda_padding(2, 300, "right")
    dout = torch.randn_like(q)
    results = []
    for seed in (1234, torch.tensor([1234], device="cuda")):
        args = NearArgs(width, 0.3, seed)
        out, saved = near_forward(q, k, v, mask, args, False, DEFAULT_PLAN.near)
        results.append([out, *near_backward(saved, dout)])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@gpu
def test_near_field_dropout_through_public_api_is_random_but_seeded():
    q, k, v = cuda_inputs(1, 2, 200, 64, 64, torch.bfloat16)
    torch.manual_seed(0)
    a = near_field(q, k, v, 16, dropout_p=0.5, backend="cuda")
    torch.manual_seed(0)
    b = near_field(q, k, v, 16, dropout_p=0.5, backend="cuda")
    c = near_field(q, k, v, 16, dropout_p=0.5, backend="cuda")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
