"""The blend spec: weight shapes, parameters vs buffers, the formula, the paper's schemes."""

import re
from pathlib import Path

import pytest
import torch
from jsonargparse import ArgumentParser
from torch import nn

from fmmformer_pl.attention.blend import (
    PAPER_SCHEMES,
    Blend,
    FieldWeight,
    band_scheme,
    paper_scheme,
)
from fmmformer_pl.attention.config import AttentionConfig, BlendWeight
from fmmformer_pl.attention.layer import FMMAttention

HEADS, HEAD_DIM = 3, 4


@pytest.mark.parametrize(
    "granularity, shape", [("scalar", (1,)), ("head", (HEADS,)), ("channel", (HEADS * HEAD_DIM,))]
)
@pytest.mark.parametrize("learnable", [True, False])
def test_weight_shape_init_and_learnability(granularity, shape, learnable):
    w = FieldWeight(BlendWeight(0.75, granularity, learnable), HEADS, HEAD_DIM)
    assert tuple(w.weight.shape) == shape
    assert torch.all(w.weight == 0.75)
    assert [n for n, _ in w.named_parameters()] == (["weight"] if learnable else [])
    assert [n for n, _ in w.named_buffers()] == ([] if learnable else ["weight"])
    assert "weight" in w.state_dict()  # fixed weights are saved with the model too


def test_channel_weight_follows_head_concatenation_order():
    w = FieldWeight(BlendWeight(0.0, "channel"), HEADS, HEAD_DIM)
    with torch.no_grad():
        w.weight.copy_(torch.arange(HEADS * HEAD_DIM, dtype=torch.float32))
    field = torch.ones(2, HEADS, 5, HEAD_DIM)  # (batch, heads, seq, head_dim)
    merged = w(field).transpose(1, 2).reshape(2, 5, HEADS * HEAD_DIM)  # as FMMAttention merges
    assert torch.equal(merged[1, 3], torch.arange(HEADS * HEAD_DIM, dtype=torch.float32))


def test_head_weight_scales_each_head():
    w = FieldWeight(BlendWeight(0.0, "head"), HEADS, HEAD_DIM)
    with torch.no_grad():
        w.weight.copy_(torch.tensor([1.0, -2.0, 3.0]))
    field = torch.randn(2, HEADS, 5, HEAD_DIM)
    expected = field * torch.tensor([1.0, -2.0, 3.0]).view(1, HEADS, 1, 1)
    torch.testing.assert_close(w(field), expected)


def test_blend_formula_with_group_weight():
    config = AttentionConfig(
        kind="fmm",
        feature_maps=["elu", "tanh"],
        near_weight=BlendWeight(0.0, "channel"),
        far_weights=[BlendWeight(0.0, "scalar"), BlendWeight(0.0, "head")],
        far_group_weight=BlendWeight(0.0, "head", learnable=False),
    )
    blend = Blend(config, HEADS, HEAD_DIM)
    for t in list(blend.parameters()) + list(blend.buffers()):
        t.data.normal_()
    near, far1, far2 = (torch.randn(2, HEADS, 7, HEAD_DIM) for _ in range(3))
    wn = blend.near.weight.view(1, HEADS, 1, HEAD_DIM)
    w1 = blend.far[0].weight
    w2 = blend.far[1].weight.view(1, HEADS, 1, 1)
    wg = blend.far_group.weight.view(1, HEADS, 1, 1)
    expected = wn * near + wg * (w1 * far1 + w2 * far2)
    torch.testing.assert_close(blend(near, [far1, far2]), expected)
    assert [n for n, _ in blend.named_buffers()] == ["far_group.weight"]


@pytest.mark.parametrize("kind", ["fmm", "linear"])
@pytest.mark.parametrize("far_scale", [1.0, 0.5])
def test_coefficients_reproduce_the_blend(kind, far_scale):
    """coefficients() (what the GPU kernels multiply by) gives the blend's output, with the
    far fields scaled by far_scale, and the same weight gradients."""
    config = AttentionConfig(
        kind=kind,
        feature_maps=["elu", "tanh"],
        near_weight=BlendWeight(0.3, "channel"),
        far_weights=[BlendWeight(0.5, "scalar"), BlendWeight(-1.0, "head")],
        far_group_weight=BlendWeight(2.0, "head"),
    )
    blend = Blend(config, HEADS, HEAD_DIM).double()
    for p in blend.parameters():
        p.data.normal_()
    fields = [torch.randn(2, HEADS, 7, HEAD_DIM, dtype=torch.float64) for _ in range(3)]
    near, far = (fields[0], fields[1:]) if kind == "fmm" else (None, fields[1:])
    expected = blend(near, [f * far_scale for f in far])
    coeffs = blend.coefficients(far_scale)  # (fields, heads, head_dim)
    used = fields if kind == "fmm" else fields[1:]
    assert coeffs.shape == (len(used), HEADS, HEAD_DIM) and coeffs.dtype == torch.float32
    got = sum(c[None, :, None, :].double() * f for c, f in zip(coeffs, used, strict=True))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    g_expected = torch.autograd.grad(expected.sum(), list(blend.parameters()))
    g_got = torch.autograd.grad(got.sum(), list(blend.parameters()))
    for a, b in zip(g_got, g_expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("granularity", ["scalar", "head", "channel"])
@pytest.mark.parametrize("kind", ["fmm", "linear"])
@pytest.mark.parametrize("far_scale", [1.0, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_coefficients_of_one_granularity_match_each_weights_own(
    granularity, kind, far_scale, dtype
):
    """The paper's schemes (every weight one granularity, no group weight) build the
    coefficients with one stack and a broadcast view: the same values and weight gradients
    as each weight's own ``coefficient()``, float32 also for bf16 weights (a model cast to
    bf16)."""
    spec = BlendWeight(0.5, granularity)
    config = AttentionConfig(
        kind=kind, feature_maps=["elu", "tanh"], near_weight=spec, far_weights=[spec]
    )
    blend = Blend(config, HEADS, HEAD_DIM).to(dtype)
    for p in blend.parameters():
        p.data.normal_()
    weights = ([blend.near] if blend.near is not None else []) + list(blend.far)
    scales = [1.0] * (kind == "fmm") + [far_scale] * len(blend.far)
    expected = torch.stack([w.coefficient() * s for w, s in zip(weights, scales, strict=True)])
    got = blend.coefficients(far_scale)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected)
    g = torch.randn(expected.shape)
    params = list(blend.parameters())
    for a, b in zip(
        torch.autograd.grad(got, params, g), torch.autograd.grad(expected, params, g), strict=True
    ):
        torch.testing.assert_close(a, b)


def test_single_far_weight_spec_gives_separate_parameters_per_kernel():
    config = AttentionConfig(kind="fmm", feature_maps=["elu", "elu_flip", "tanh"])
    blend = Blend(config, HEADS, HEAD_DIM)
    assert len(blend.far) == 3
    assert len({id(w.weight) for w in blend.far}) == 3


def test_linear_kind_has_no_near_weight():
    blend = Blend(AttentionConfig(kind="linear"), HEADS, HEAD_DIM)
    assert blend.near is None
    far = torch.randn(1, HEADS, 2, HEAD_DIM)
    torch.testing.assert_close(blend(None, [far]), far)  # default weight: per head, init 1


def test_bad_specs_raise():
    with pytest.raises(ValueError, match="one entry per feature map"):
        Blend(
            AttentionConfig(feature_maps=["elu", "tanh", "relu"], far_weights=[BlendWeight()] * 2),
            HEADS,
            HEAD_DIM,
        )
    with pytest.raises(ValueError, match="granularity"):
        FieldWeight(BlendWeight(1.0, "row"), HEADS, HEAD_DIM)
    with pytest.raises(ValueError, match="no blend"):
        Blend(AttentionConfig(kind="band"), HEADS, HEAD_DIM)
    with pytest.raises(ValueError, match="at least one"):
        Blend(AttentionConfig(kind="linear", feature_maps=[]), HEADS, HEAD_DIM)
    with pytest.raises(ValueError, match="unknown paper scheme"):
        paper_scheme("listops_13.5")


def _weights(module: nn.Module) -> dict:
    """name -> (shape, init value(s), learnable) of the blend weights of an FMMAttention."""
    out = {}
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if name.startswith("blend."):
            out[name[len("blend.") :]] = (
                tuple(t.shape),
                sorted(set(t.flatten().tolist())),
                isinstance(t, nn.Parameter),
            )
    return out


def test_paper_schemes_reproduce_the_released_code():
    dim, heads = 64, 2  # the LRA model: 2 heads of 32 channels
    w = lambda name: _weights(FMMAttention(dim, heads, paper_scheme(name), causal=False))  # noqa: E731
    # ListOps (type_blend 11 / 13): w1 D + w2 L, per head, w1 = 1 and w2 = 0 at init.
    assert w("lra_listops_fmm_1kernel") == {
        "near.weight": ((2,), [1.0], True),
        "far.0.weight": ((2,), [0.0], True),
    }
    assert w("lra_listops_fmm_2kernel") == {
        "near.weight": ((2,), [1.0], True),
        "far.0.weight": ((1,), [1.0], True),
        "far.1.weight": ((1,), [0.0], True),
        "far_group.weight": ((2,), [0.0], True),
    }
    # Text (type_blend 4): D + w (.) L, w per channel, init 0; 2 kernels averaged first.
    assert w("lra_text_fmm_1kernel") == {
        "near.weight": ((1,), [1.0], False),
        "far.0.weight": ((64,), [0.0], True),
    }
    assert w("lra_text_fmm_2kernel") == {
        "near.weight": ((1,), [1.0], False),
        "far.0.weight": ((1,), [0.5], False),
        "far.1.weight": ((1,), [0.5], False),
        "far_group.weight": ((64,), [0.0], True),
    }
    # WikiText-103 (LM type_blend 2): w (.) D + L, w per channel init 0, L scaled 1/sqrt(16).
    assert w("wt103_fmm_2kernel_band20") == {
        "near.weight": ((64,), [0.0], True),
        "far.0.weight": ((1,), [0.125], False),
        "far.1.weight": ((1,), [0.125], False),
    }
    assert w("lra_band5") == {} and w("wt103_band20") == {}
    assert (paper_scheme("lra_band5").bandwidth, paper_scheme("lra_band5").dropout) == (5, 0.1)
    assert paper_scheme("lra_linear").far_normalize is False  # Nystromformer LinearAttention
    for name in ("lra_listops_fmm_2kernel", "lra_text_fmm_1kernel"):
        config = paper_scheme(name)
        assert (config.bandwidth, config.dropout, config.far_normalize) == (5, 0.1, False)
    assert paper_scheme("wt103_fmm_1kernel_band20").bandwidth == 20
    assert paper_scheme("wt103_fmm_1kernel_band20").far_normalize is True
    assert paper_scheme("lra_listops_fmm_2kernel").feature_maps == ["elu", "elu_flip"]


@pytest.mark.parametrize("name", sorted(PAPER_SCHEMES))
def test_every_paper_scheme_builds_and_runs_causal_and_bidirectional(name):
    for causal in (False, True):
        layer = FMMAttention(16, 2, paper_scheme(name), causal=causal)
        assert layer(torch.randn(2, 9, 16)).shape == (2, 9, 16)


@pytest.mark.parametrize("name", ["lra_listops_fmm_1kernel", "lra_text_fmm_2kernel"])
def test_lra_schemes_start_as_band_attention(name):
    """w2 = 0 (ListOps) and w = 0 (Text) at init: the layer is the near field alone."""
    torch.manual_seed(0)
    fmm = FMMAttention(16, 2, paper_scheme(name), causal=False).eval()
    band = FMMAttention(16, 2, band_scheme(5), causal=False).eval()
    band.load_state_dict(fmm.state_dict(), strict=False)
    x = torch.randn(2, 11, 16)
    torch.testing.assert_close(fmm(x), band(x))


def _doc_yaml_blocks():
    """(scheme name, yaml text) of every ```yaml block of docs/models.md naming a scheme."""
    doc = (Path(__file__).parents[2] / "docs" / "models.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", doc, flags=re.S)
    named = [(re.match(r"# paper_scheme: (\w+)", b), b) for b in blocks]
    return [(m.group(1), b) for m, b in named if m]


def test_docs_yaml_examples_parse_to_the_paper_schemes():
    """The YAML in docs/models.md, read as LightningCLI reads it, is the code's scheme."""
    blocks = _doc_yaml_blocks()
    assert len(blocks) >= 5
    parser = ArgumentParser()
    parser.add_argument("--attention", type=AttentionConfig)
    for name, text in blocks:
        parsed = parser.parse_string(text)
        init = getattr(parser, "instantiate", None) or parser.instantiate_classes
        assert init(parsed).attention == paper_scheme(name), name
