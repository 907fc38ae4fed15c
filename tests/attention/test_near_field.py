"""near_field against the dense reference (forward and gradients), edge cases and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fmmformer_pl.attention import near_field
from fmmformer_pl.attention.naive import naive_near_field, visible_keys

from .conftest import assert_matches, outputs_and_grads, random_padding, random_qkv


@pytest.mark.parametrize("seq", [1, 63, 257])
@pytest.mark.parametrize("bandwidth", [1, 5, 64, 300])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "pad"])
def test_matches_dense_reference(seq, bandwidth, causal, padded):
    # head_dim_v (6) != head_dim (8); bandwidth 300 >= every seq here.
    q, k, v = random_qkv(seq=seq)
    mask = random_padding(2, seq) if padded else None
    assert_matches(
        lambda q, k, v: near_field(q, k, v, bandwidth, causal=causal, key_padding_mask=mask),
        lambda q, k, v: naive_near_field(q, k, v, bandwidth, causal=causal, key_padding_mask=mask),
        q,
        k,
        v,
    )


@pytest.mark.parametrize("causal", [False, True])
def test_rows_without_visible_keys_are_zero(causal):
    q, k, v = random_qkv(seq=70)
    mask = torch.zeros(2, 70, dtype=torch.bool)
    mask[0] = True  # a fully padded sequence
    mask[1, 10:40] = True  # a hole wider than the band
    out, grads = outputs_and_grads(
        lambda q, k, v: near_field(q, k, v, 5, causal=causal, key_padding_mask=mask), q, k, v
    )
    has_key = visible_keys(70, 5, causal, mask).any(-1)  # (2, 1, 70)
    assert (~has_key).sum() > 30  # the case is really exercised
    assert torch.all(out.masked_select(~has_key[..., None]) == 0)
    assert torch.all(out.abs().sum(-1)[has_key.expand(2, 3, 70)] > 0)
    assert all(torch.isfinite(g).all() for g in grads)


def test_bandwidth_one_bidirectional_returns_own_value():
    # The band |i - j| < 1 holds only j = i, whose softmax weight is 1.
    q, k, v = random_qkv(seq=37)
    torch.testing.assert_close(near_field(q, k, v, 1), v, atol=0, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_wide_band_is_full_softmax_attention(causal):
    q, k, v = random_qkv(seq=50, head_dim_v=8)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(near_field(q, k, v, 50, causal=causal), expected)
    torch.testing.assert_close(near_field(q, k, v, 10**6, causal=causal), expected)


def test_dropout_zero_is_identity_and_keeps_rng():
    q, k, v = random_qkv(seq=40)
    state = torch.get_rng_state()
    out = near_field(q, k, v, 7, dropout_p=0.0)
    assert torch.equal(torch.get_rng_state(), state)  # no dropout mask was drawn
    assert torch.equal(out, near_field(q, k, v, 7))


@pytest.mark.parametrize("causal", [False, True])
def test_dropout_drops_band_probabilities(causal):
    # With v = identity the output row i *is* the probability row i, so dropout must show as
    # entries that are either 0 or the band probability scaled by 1 / (1 - p).
    seq, p = 96, 0.3
    q, k, _ = random_qkv(batch=1, heads=2, seq=seq)
    eye = torch.eye(seq, dtype=q.dtype).expand(1, 2, seq, seq)
    probs = near_field(q, k, eye, 9, causal=causal)
    torch.manual_seed(123)
    dropped = near_field(q, k, eye, 9, causal=causal, dropout_p=p)
    kept = dropped != 0
    torch.testing.assert_close(dropped[kept], probs[kept] / (1 - p))
    in_band = probs > 0
    assert not kept[~in_band].any()
    drop_rate = 1 - kept[in_band].double().mean().item()
    assert abs(drop_rate - p) < 0.05, drop_rate
    torch.manual_seed(123)
    assert torch.equal(near_field(q, k, eye, 9, causal=causal, dropout_p=p), dropped)


def test_dropout_is_unbiased_on_average():
    q, k, v = random_qkv(batch=1, heads=1, seq=20)
    expected = near_field(q, k, v, 4).detach()
    mean = torch.stack([near_field(q, k, v, 4, dropout_p=0.2).detach() for _ in range(2000)]).mean(
        0
    )
    torch.testing.assert_close(mean, expected, atol=0.05, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_bfloat16_close_to_float32(causal):
    # bf16 inputs are computed in float32; compared with float32 on the same (bf16-rounded)
    # inputs, only the final rounding to bf16 differs: relative error ~2^-8, so 2e-2 is safe.
    q, k, v = (t.detach().to(torch.bfloat16) for t in random_qkv(seq=130, dtype=torch.float32))
    mask = random_padding(2, 130)
    out = near_field(q, k, v, 16, causal=causal, key_padding_mask=mask)
    assert out.dtype == torch.bfloat16
    ref = near_field(q.float(), k.float(), v.float(), 16, causal=causal, key_padding_mask=mask)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)

    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    near_field(qs, ks, vs, 16, causal=causal).float().square().sum().backward()
    q32, k32, v32 = (t.float().requires_grad_() for t in (q, k, v))
    near_field(q32, k32, v32, 16, causal=causal).square().sum().backward()
    for low, high in ((qs, q32), (ks, k32), (vs, v32)):
        assert low.grad.dtype == torch.bfloat16
        torch.testing.assert_close(low.grad.float(), high.grad, atol=5e-2, rtol=5e-2)


def test_float16_output_dtype_and_values():
    q, k, v = (t.detach() for t in random_qkv(seq=65, dtype=torch.float32))
    out = near_field(q.half(), k.half(), v.half(), 8)
    assert out.dtype == torch.float16
    ref = near_field(q.half().float(), k.half().float(), v.half().float(), 8)
    torch.testing.assert_close(out.float(), ref, atol=2e-3, rtol=2e-3)


def test_empty_sequence():
    q = torch.zeros(2, 3, 0, 8)
    assert near_field(q, q, torch.zeros(2, 3, 0, 5), 4).shape == (2, 3, 0, 5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"bandwidth": 0}, ValueError, "bandwidth"),
        ({"bandwidth": 2.5}, TypeError, "bandwidth"),
        ({"bandwidth": True}, TypeError, "bandwidth"),
        ({"dropout_p": 1.0}, ValueError, "dropout_p"),
        ({"backend": "triton"}, ValueError, "backend"),
        ({"backend": "cuda"}, RuntimeError, "CUDA"),
        ({"key_padding_mask": torch.zeros(2, 10)}, TypeError, "bool"),
        ({"key_padding_mask": torch.zeros(2, 9, dtype=torch.bool)}, ValueError, "batch, seq"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    q, k, v = random_qkv(seq=10)
    args = {"bandwidth": 3, **kwargs}
    with pytest.raises(error, match=match):
        near_field(q, k, v, **args)


@pytest.mark.parametrize(
    ("q_shape", "k_shape", "v_shape", "match"),
    [
        ((2, 3, 10), (2, 3, 10), (2, 3, 10), "batch, heads, seq, head_dim"),
        ((2, 3, 10, 8), (2, 3, 11, 8), (2, 3, 10, 8), "same shape"),
        ((2, 3, 10, 8), (2, 3, 10, 8), (2, 3, 11, 8), "v must match"),
    ],
)
def test_bad_shapes(q_shape, k_shape, v_shape, match):
    with pytest.raises(ValueError, match=match):
        near_field(torch.randn(q_shape), torch.randn(k_shape), torch.randn(v_shape), 3)
