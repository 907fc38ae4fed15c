"""Every LRA blend of the paper, as data, against the released ``SparseLowrankAttention``.

The released code picks a blend by ``--sparse_ratio`` (integer part = ``type_blend``); its
``forward`` mixes the near field D and the far fields L1, L2 (``_forward_lowrank``). Below each
scheme's formula is written out as that code computes it, with its weights' released shapes
and initial values, and compared with our ``Blend`` on random fields and random weights.
"""

import pytest
import torch

from fmmformer_pl.attention.blend import Blend, paper_scheme

B, H, N, D = 2, 3, 5, 4  # (batch, heads, seq, head_dim)


def _released(code: float, rank: int, w: dict, d, l1, l2):
    """``type_blend = int(code)``: the released forward, with ``w`` its named weights."""
    if rank == 1:
        far = l1
    elif code in (13.5, 19.5):
        far = w["lowrank_ratio"] * l1 + w["lowrank_ratio2"] * l2
    elif code in (15.5, 17.5):
        far = l1 + w["lowrank_ratio"] * l2
    else:
        far = 0.5 * l1 + 0.5 * l2
    kind = int(code)
    if kind in (11, 13):
        return w["sparse_ratio"] * d + w["sparse_ratio2"] * far
    if kind in (4, 17):
        return d + w["sparse_ratio"] * far
    if kind in (18, 19):
        return w["sparse_ratio"] * d + far
    if kind in (2, 15):
        return w["sparse_ratio"] * d + (1.0 - w["sparse_ratio"]) * far
    raise AssertionError(code)


# scheme -> (released code, rank, {released weight: (its shape, init, our parameter)})
HEAD, CHANNEL, SCALAR = (1, H, 1, 1), (1, H, 1, D), (1,)
SCHEMES = {
    "lra_listops_fmm_1kernel": (11.5, 1, {"sparse_ratio": (HEAD, 1.0, "near"),
                                          "sparse_ratio2": (HEAD, 0.0, "far.0")}),
    "lra_listops_fmm_2kernel": (13.5, 2, {"sparse_ratio": (HEAD, 1.0, "near"),
                                          "sparse_ratio2": (HEAD, 0.0, "far_group"),
                                          "lowrank_ratio": (SCALAR, 1.0, "far.0"),
                                          "lowrank_ratio2": (SCALAR, 0.0, "far.1")}),
    "lra_text_fmm_1kernel": (4.5, 1, {"sparse_ratio": (CHANNEL, 0.0, "far.0")}),
    "lra_text_fmm_2kernel": (4.5, 2, {"sparse_ratio": (CHANNEL, 0.0, "far_group")}),
    "lra_retrieval_fmm_1kernel": (18.5, 1, {"sparse_ratio": (HEAD, 0.0, "near")}),
    "lra_retrieval_fmm_2kernel": (19.5, 2, {"sparse_ratio": (HEAD, 0.0, "near"),
                                            "lowrank_ratio": (SCALAR, 1.0, "far.0"),
                                            "lowrank_ratio2": (SCALAR, 0.0, "far.1")}),
    "lra_image_fmm_1kernel": (4.5, 1, {"sparse_ratio": (CHANNEL, 0.0, "far.0")}),
    "lra_image_fmm_2kernel": (17.5, 2, {"sparse_ratio": (CHANNEL, 0.0, "far_group"),
                                        "lowrank_ratio": (SCALAR, 0.0, "far.1")}),
    "lra_pathfinder_fmm_1kernel": (2.5, 1, {"sparse_ratio": (SCALAR, 0.5, "near")}),
    "lra_pathfinder_fmm_2kernel": (15.5, 2, {"sparse_ratio": (SCALAR, 0.5, "near"),
                                             "lowrank_ratio": (SCALAR, 0.0, "far.1")}),
}  # fmt: skip


def _ours(blend: Blend, path: str) -> torch.Tensor:
    module = blend.get_submodule(path)
    return module.weight


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_blend_is_the_released_formula(name):
    code, rank, weights = SCHEMES[name]
    blend = Blend(paper_scheme(name), H, D)
    # Exactly the released trainable weights, no more: every other weight is fixed.
    ours = {n.removesuffix(".weight") for n, _ in blend.named_parameters()}
    assert ours == {path for _, _, path in weights.values()}
    # Released initial values.
    for _shape, init, path in weights.values():
        assert torch.all(_ours(blend, path) == init), (name, path)
    # Random weights: ours and the released formula agree on random fields.
    torch.manual_seed(0)
    with torch.no_grad():
        for p in blend.parameters():
            p.copy_(torch.randn_like(p))
    released = {k: _ours(blend, path).reshape(shape) for k, (shape, _, path) in weights.items()}
    d, l1, l2 = (torch.randn(B, H, N, D) for _ in range(3))
    far = [l1, l2][:rank]
    expected = _released(code, rank, released, d, l1, l2)
    torch.testing.assert_close(blend(d, far), expected)
    # What the fused GPU kernels multiply by gives the same.
    c = blend.coefficients()  # (fields, heads, head_dim)
    fused = sum(c[i].view(1, H, 1, D) * f for i, f in enumerate([d, *far]))
    torch.testing.assert_close(fused, expected)


def test_tied_weight_gradient_reaches_the_near_weight_from_both_uses():
    blend = Blend(paper_scheme("lra_pathfinder_fmm_1kernel"), H, D)
    d, l1 = torch.randn(B, H, N, D), torch.randn(B, H, N, D)
    blend(d, [l1]).sum().backward()
    # y = w d + (1 - w) l1  =>  dy/dw = sum(d - l1)
    torch.testing.assert_close(blend.near.weight.grad, (d - l1).sum().view(1))
    assert [n for n, _ in blend.named_parameters()] == ["near.weight"]
    assert "far.0.weight" not in blend.state_dict()  # no state of its own


def test_a_tie_needs_a_near_field_and_only_far_weights_tie():
    from fmmformer_pl.attention.config import AttentionConfig, BlendWeight

    tied = BlendWeight(tied="one_minus_near")
    with pytest.raises(ValueError, match="needs kind 'fmm'"):
        Blend(AttentionConfig(kind="linear", far_weights=[tied]), H, D)
    with pytest.raises(ValueError, match="near weight cannot be tied"):
        Blend(AttentionConfig(kind="fmm", near_weight=tied), H, D)
