"""far_field against the dense reference (forward and gradients), edge cases and errors."""

from __future__ import annotations

import math

import pytest
import torch

from fmmformer_pl.attention import FEATURE_MAPS, far_field, far_fields
from fmmformer_pl.attention.naive import naive_far_field

from .conftest import assert_matches, outputs_and_grads, random_padding, random_qkv


@pytest.mark.parametrize("seq", [1, 63, 257])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "scaled"])
@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "pad"])
def test_matches_dense_reference(seq, causal, normalize, padded):
    # 257 = 4 causal chunks of 64 + 1: a ragged last chunk. head_dim_v (6) != head_dim (8).
    q, k, v = random_qkv(seq=seq)
    mask = random_padding(2, seq) if padded else None
    kwargs = dict(causal=causal, normalize=normalize, key_padding_mask=mask)
    assert_matches(
        lambda q, k, v: far_field(q, k, v, "elu", **kwargs),
        lambda q, k, v: naive_far_field(q, k, v, "elu", **kwargs),
        q,
        k,
        v,
    )


@pytest.mark.parametrize("feature_map", sorted(FEATURE_MAPS))
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "scaled"])
def test_every_feature_map(feature_map, causal, normalize):
    q, k, v = random_qkv(seq=130)
    mask = random_padding(2, 130)
    kwargs = dict(causal=causal, normalize=normalize, key_padding_mask=mask)
    assert_matches(
        lambda q, k, v: far_field(q, k, v, feature_map, **kwargs),
        lambda q, k, v: naive_far_field(q, k, v, feature_map, **kwargs),
        q,
        k,
        v,
    )


def test_callable_feature_map():
    def squared(x):
        return x * x

    q, k, v = random_qkv(seq=70)
    assert_matches(
        lambda q, k, v: far_field(q, k, v, squared, causal=True),
        lambda q, k, v: naive_far_field(q, k, v, squared, causal=True),
        q,
        k,
        v,
    )


@pytest.mark.parametrize("causal", [False, True])
def test_unnormalized_scale_is_one_over_sqrt_padded_length(causal):
    # q = k = 0 (head_dim 1) makes phi(q_i).phi(k_j) = (elu(0) + 1)^2 = 1, so the
    # normalize=False output is the plain sum of the visible values divided by sqrt(seq),
    # seq counting padding too.
    seq = 12
    q = torch.zeros(1, 1, seq, 1, dtype=torch.float64)
    v = torch.arange(seq, dtype=torch.float64).reshape(1, 1, seq, 1) + 1
    mask = torch.zeros(1, seq, dtype=torch.bool)
    mask[0, 8:] = True  # the last 4 positions are padding
    out = far_field(q, q, v, "elu", causal=causal, normalize=False, key_padding_mask=mask)
    visible = v * ~mask[:, None, :, None]
    sums = visible.cumsum(-2) if causal else visible.sum(-2, keepdim=True).expand_as(v)
    torch.testing.assert_close(out, sums / math.sqrt(seq))
    # normalize=True on the same inputs is the mean of the visible values.
    counts = (~mask).cumsum(-1) if causal else (~mask).sum(-1, keepdim=True)
    out = far_field(q, q, v, "elu", causal=causal, normalize=True, key_padding_mask=mask)
    torch.testing.assert_close(out, sums / counts[:, None, :, None])


@pytest.mark.parametrize("causal", [False, True])
def test_zero_denominator_gives_zeros(causal):
    # relu(q) = 0 for negative queries: phi(q_i).phi(k_j) = 0 for every j.
    q, k, v = random_qkv(seq=70)
    with torch.no_grad():
        q[:, :, ::2] = -q[:, :, ::2].abs() - 0.1
    mask = torch.zeros(2, 70, dtype=torch.bool)
    mask[0] = True  # no visible key at all
    out, grads = outputs_and_grads(
        lambda q, k, v: far_field(q, k, v, "relu", causal=causal, key_padding_mask=mask), q, k, v
    )
    assert torch.all(out[0] == 0)
    assert torch.all(out[:, :, ::2] == 0)
    assert (out[1, :, 1::2].abs().sum(-1) > 0).float().mean() > 0.9
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_bfloat16_close_to_float32(causal, normalize):
    # Accumulation is float32 for bf16 inputs; against float32 on the same bf16-rounded inputs
    # only the final rounding differs (~2^-8 relative), so 2e-2 is a safe stated tolerance.
    q, k, v = (t.detach().to(torch.bfloat16) for t in random_qkv(seq=200, dtype=torch.float32))
    kwargs = dict(causal=causal, normalize=normalize)
    out = far_field(q, k, v, **kwargs)
    assert out.dtype == torch.bfloat16
    ref = far_field(q.float(), k.float(), v.float(), **kwargs)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)

    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    far_field(qs, ks, vs, **kwargs).float().square().sum().backward()
    q32, k32, v32 = (t.float().requires_grad_() for t in (q, k, v))
    far_field(q32, k32, v32, **kwargs).square().sum().backward()
    for low, high in ((qs, q32), (ks, k32), (vs, v32)):
        assert low.grad.dtype == torch.bfloat16
        scale = high.grad.abs().max()
        torch.testing.assert_close(low.grad.float() / scale, high.grad / scale, atol=2e-2, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_float16_sums_do_not_overflow(causal):
    # 4096 keys with phi(k) ~ 0.5..3 and v ~ 100: the numerator sums reach ~1e6, beyond
    # float16's 65504, while the normalized output stays ~100. Only a float32 accumulator works.
    q, k, v = (t.detach() for t in random_qkv(batch=1, heads=1, seq=4096, dtype=torch.float32))
    v = v + 100
    state_in_half = (FEATURE_MAPS["elu"](k.half()).transpose(-1, -2) @ v.half()).float()
    assert not torch.isfinite(state_in_half).all()  # the case really overflows float16
    out = far_field(q.half(), k.half(), v.half(), causal=causal)
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()
    ref = far_field(q.half().float(), k.half().float(), v.half().float(), causal=causal)
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=2e-3)


def test_padding_keys_do_not_leak():
    # Changing k, v at padded positions must not change any output.
    q, k, v = (t.detach() for t in random_qkv(seq=90))
    mask = random_padding(2, 90)
    out = far_field(q, k, v, causal=True, key_padding_mask=mask)
    k2 = torch.where(mask[:, None, :, None], 1e3, k)
    v2 = torch.where(mask[:, None, :, None], -1e3, v)
    torch.testing.assert_close(far_field(q, k2, v2, causal=True, key_padding_mask=mask), out)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"feature_map": "cosine"}, ValueError, "feature map"),
        ({"feature_map": 3}, TypeError, "feature_map"),
        ({"backend": "fast"}, ValueError, "backend"),
        ({"backend": "cuda"}, RuntimeError, "CUDA"),
        ({"key_padding_mask": torch.zeros(3, 10, dtype=torch.bool)}, ValueError, "batch, seq"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    q, k, v = random_qkv(seq=10)
    with pytest.raises(error, match=match):
        far_field(q, k, v, **kwargs)


def test_integer_inputs_rejected():
    x = torch.ones(1, 1, 4, 2, dtype=torch.long)
    with pytest.raises(TypeError, match="floating-point"):
        far_field(x, x, x)


@pytest.mark.parametrize("causal", [False, True])
def test_far_fields_is_one_far_field_per_map(causal):
    q, k, v = (torch.randn(2, 3, 37, 8, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(2, 37) < 0.2
    maps = ["elu", "elu_flip", lambda x: torch.relu(x) + 0.5]
    outs = far_fields(q, k, v, maps, causal=causal, key_padding_mask=mask)
    assert len(outs) == 3
    for out, phi in zip(outs, maps, strict=True):
        ref = far_field(q, k, v, phi, causal=causal, key_padding_mask=mask)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_far_fields_bad_arguments():
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="at least one feature map"):
        far_fields(q, q, q, [])
    with pytest.raises(ValueError, match="nope"):
        far_fields(q, q, q, ["elu", "nope"])


def test_float32_heads_wider_than_64_under_tf32_take_the_reference():
    """The Triton far-field state kernel does not compile for sm_90a with TF32 products of
    float32 tiles wider than 64 (``ops/common/host.supported``): those inputs go to the
    reference."""
    from fmmformer_pl.attention.ops.common.host import supported

    wide, narrow = torch.zeros(1, 2, 8, 128), torch.zeros(1, 2, 8, 64)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert not supported(wide, wide, wide)
        assert supported(narrow, narrow, narrow)
        assert supported(*(t.bfloat16() for t in (wide, wide, wide)))
        torch.set_float32_matmul_precision("highest")
        assert supported(wide, wide, wide)
    finally:
        torch.set_float32_matmul_precision(before)
