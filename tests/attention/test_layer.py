"""FMMAttention: every kind against dense references, padding, the blend, decoding steps."""

import math

import pytest
import torch
import torch.nn.functional as F

from fmmformer_pl.attention.config import AttentionConfig, BlendWeight
from fmmformer_pl.attention.layer import FMMAttention
from fmmformer_pl.attention.naive import naive_far_field, naive_near_field, visible_keys

DIM, HEADS = 12, 3  # head_dim 4
KINDS = ["softmax", "band", "linear", "fmm"]


def _layer(kind, causal, **kw):
    torch.manual_seed(0)
    config = AttentionConfig(kind=kind, bandwidth=3, feature_maps=["elu", "elu_flip"], **kw)
    return FMMAttention(DIM, HEADS, config, causal=causal).double()


def _padding(batch, seq):
    """Sample 0 unpadded, sample 1 padded at the end, sample 2 all padding (if batch > 2)."""
    mask = torch.zeros(batch, seq, dtype=torch.bool)
    mask[1, seq // 2 + 1 :] = True
    if batch > 2:
        mask[2] = True
    return mask


def _reference(layer, x, mask):
    """The layer's output through the naive O(seq^2) fields and an explicit blend."""
    cfg, (b, n, _) = layer.config, x.shape
    split = lambda t: t.view(b, n, HEADS, DIM // HEADS).transpose(1, 2)  # noqa: E731
    q, k, v = split(layer.q_proj(x)), split(layer.k_proj(x)), split(layer.v_proj(x))
    if cfg.kind == "softmax":
        visible = visible_keys(n, None, layer.causal, mask)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(DIM // HEADS)).masked_fill(~visible, -1e30)
        y = torch.softmax(scores, -1) @ v * visible.any(-1, keepdim=True)
    else:
        near = naive_near_field(q, k, v, cfg.bandwidth, layer.causal, mask)
        far = [
            naive_far_field(q, k, v, name, layer.causal, cfg.far_normalize, mask)
            for name in cfg.feature_maps
        ]
        y = near if cfg.kind == "band" else layer.blend(near if cfg.kind == "fmm" else None, far)
    return layer.out_proj(y.transpose(1, 2).reshape(b, n, DIM))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seq", [1, 7, 70])
def test_forward_backward_with_padding_matches_dense_reference(kind, causal, seq):
    layer = _layer(kind, causal)
    for t in layer.blend.parameters() if layer.blend is not None else []:
        t.data.uniform_(0.5, 1.5)  # non-trivial blend weights
    x = torch.randn(3, seq, DIM, dtype=torch.double, requires_grad=True)
    mask = _padding(3, seq)
    out = layer(x, mask)
    ref = _reference(layer, x, mask)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    (g_out,) = torch.autograd.grad(out, x, grad)
    (g_ref,) = torch.autograd.grad(ref, x, grad)
    torch.testing.assert_close(g_out, g_ref)
    assert torch.isfinite(g_out).all()


@pytest.mark.parametrize("kind", KINDS)
def test_fully_padded_rows_give_zeros_not_nan(kind):
    layer = _layer(kind, causal=True)
    x = torch.randn(2, 6, DIM, dtype=torch.double, requires_grad=True)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0] = True  # every key padding
    mask[1, :2] = True  # leading padding: causal queries 0 and 1 see no key
    out = layer(x, mask)
    bias = layer.out_proj.bias
    torch.testing.assert_close(out[0], bias.expand(6, DIM))  # attention output 0 -> only bias
    torch.testing.assert_close(out[1, :2], bias.expand(2, DIM))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_fmm_with_near_fixed_one_and_far_fixed_zero_equals_band():
    torch.manual_seed(1)
    fmm_config = AttentionConfig(
        kind="fmm",
        bandwidth=4,
        feature_maps=["elu", "tanh"],
        near_weight=BlendWeight(1.0, "scalar", learnable=False),
        far_weights=[BlendWeight(0.0, "channel", learnable=False)],
    )
    fmm = FMMAttention(DIM, HEADS, fmm_config, causal=False)
    band = FMMAttention(DIM, HEADS, AttentionConfig(kind="band", bandwidth=4), causal=False)
    band.load_state_dict(fmm.state_dict(), strict=False)
    assert [n for n, _ in fmm.named_parameters() if n.startswith("blend")] == []
    x, mask = torch.randn(3, 17, DIM), _padding(3, 17)
    torch.testing.assert_close(fmm(x, mask), band(x, mask))


def test_attention_dropout_acts_only_in_training():
    layer = _layer("fmm", causal=False, dropout=0.5)
    x = torch.randn(2, 9, DIM, dtype=torch.double)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    layer.train()
    assert not torch.allclose(layer(x), layer(x))


def test_bad_configurations_raise():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        FMMAttention(10, 3, AttentionConfig(), causal=False)
    with pytest.raises(ValueError, match="kind"):
        FMMAttention(DIM, HEADS, AttentionConfig(kind="full"), causal=False)
    with pytest.raises(ValueError, match="bandwidth"):
        FMMAttention(DIM, HEADS, AttentionConfig(kind="band", bandwidth=0), causal=False)
    with pytest.raises(ValueError, match="dropout"):
        FMMAttention(DIM, HEADS, AttentionConfig(dropout=1.0), causal=False)
    with pytest.raises(ValueError, match="feature map"):
        FMMAttention(DIM, HEADS, AttentionConfig(feature_maps=["gauss"]), causal=False)
    layer = FMMAttention(DIM, HEADS, AttentionConfig(), causal=False)
    with pytest.raises(ValueError, match="shape"):
        layer(torch.randn(2, 5, DIM + 1))
    with pytest.raises(ValueError, match="causal"):
        layer.init_state(2)


# ---------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("far_normalize", [True, False])
def test_steps_equal_forward_over_the_context_so_far(kind, far_normalize):
    layer = _layer(kind, causal=True, far_normalize=far_normalize).eval()
    x = torch.randn(2, 11, DIM, dtype=torch.double)  # 11 > bandwidth 3
    state = layer.init_state(2)
    for t in range(11):
        y_t, state = layer.step(x[:, t : t + 1], state)
        torch.testing.assert_close(y_t, layer(x[:, : t + 1])[:, -1:])
    # prefill = forward, and the steps after it continue the same computation
    y, state = layer.prefill(x[:, :5])
    torch.testing.assert_close(y, layer(x[:, :5]))
    y_t, state = layer.step(x[:, 5:6], state)
    torch.testing.assert_close(y_t, layer(x[:, :6])[:, -1:])


@pytest.mark.parametrize("kind", ["linear", "fmm"])
def test_unnormalized_far_field_decodes_a_declared_length(kind):
    """far_normalize=False scales by 1/sqrt(seq): with far_length=L, prefill and steps give
    the forward of an L-token input at every position, however few tokens were fed."""
    layer = _layer(kind, causal=True, far_normalize=False).eval()
    x = torch.randn(2, 10, DIM, dtype=torch.double)
    full = layer(x)
    y, state = layer.prefill(x[:, :4], far_length=10)
    torch.testing.assert_close(y, full[:, :4])
    for t in range(4, 10):
        y_t, state = layer.step(x[:, t : t + 1], state)
        torch.testing.assert_close(y_t, full[:, t : t + 1])
    with pytest.raises(ValueError, match="far_length"):
        layer.init_state(2, far_length=0)


@pytest.mark.parametrize("kind", ["band", "linear", "fmm"])
def test_fmm_kinds_keep_a_constant_state(kind):
    layer = _layer(kind, causal=True).eval()
    state = layer.init_state(1)
    shapes = [t.shape for t in state.tensors()]
    for t in range(20):
        _, state = layer.step(torch.randn(1, 1, DIM, dtype=torch.double), state)
        assert [t.shape for t in state.tensors()] == shapes
    _, prefilled = layer.prefill(torch.randn(1, 2, DIM, dtype=torch.double))  # shorter than W
    assert [t.shape for t in prefilled.tensors()] == shapes


def test_far_state_accumulates_in_float32_for_bf16_models():
    layer = FMMAttention(DIM, HEADS, AttentionConfig(kind="fmm"), causal=True).to(torch.bfloat16)
    state = layer.init_state(2)
    assert state.keys.dtype == torch.bfloat16
    assert state.kv.dtype == state.k_sum.dtype == torch.float32
    y, state = layer.step(torch.randn(2, 1, DIM, dtype=torch.bfloat16), state)
    assert y.dtype == torch.bfloat16 and state.kv.dtype == torch.float32


def test_step_rejects_more_than_one_token():
    layer = _layer("fmm", causal=True)
    with pytest.raises(ValueError, match=r"\(batch, 1, dim\)"):
        layer.step(torch.randn(2, 2, DIM, dtype=torch.double), layer.init_state(2))


def test_softmax_kind_uses_sdpa_semantics_without_padding():
    layer = _layer("softmax", causal=True)
    x = torch.randn(2, 9, DIM, dtype=torch.double)
    split = lambda t: t.view(2, 9, HEADS, 4).transpose(1, 2)  # noqa: E731
    q, k, v = split(layer.q_proj(x)), split(layer.k_proj(x)), split(layer.v_proj(x))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 9, DIM)
    torch.testing.assert_close(layer(x), layer.out_proj(y))
