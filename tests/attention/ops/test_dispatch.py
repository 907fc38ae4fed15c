"""``attention/dispatch.py``: the one place that picks the kernels or the references. Its
entries hand every argument to the kernels (run here under the interpreter), route a layer
call once, and refuse what they must; without triton they fall back (``backend="auto"``) or
explain (``"cuda"``)."""

from __future__ import annotations

import sys

import pytest
import torch

from fmmformer_pl.attention import dispatch, far_field, near_field

from .helpers import INTERPRET, inputs, interpreter


@interpreter
def test_dispatch_entries_pass_their_arguments_through():
    """What the public functions and the layer call on a GPU reach the kernels with every
    argument (an interpreting plan stands in for CUDA tensors)."""
    q, k, v, mask = inputs(1, 2, 70, 16, 16, seed=4)
    assert dispatch.near_field(q, k, v, 5, False, None, 0.0, "auto") is None  # CPU: declined
    for causal in (False, True):
        kw = dict(causal=causal, key_padding_mask=mask)
        torch.testing.assert_close(
            dispatch.near_field(q, k, v, 5, causal, mask, 0.0, "auto", INTERPRET),
            near_field(q, k, v, 5, backend="reference", **kw),
        )
        got = dispatch.far_fields(q, k, v, ["tanh"], causal, False, mask, "auto", INTERPRET)
        torch.testing.assert_close(
            got[0], far_field(q, k, v, "tanh", normalize=False, backend="reference", **kw)
        )
        got = dispatch.far_fields(q, k, v, ["elu", "relu"], causal, True, mask, "cuda", INTERPRET)
        for out, name in zip(got, ["elu", "relu"], strict=True):
            torch.testing.assert_close(out, far_field(q, k, v, name, backend="reference", **kw))
        coeffs = torch.rand(3, 2, 16)
        fields = [got[0], got[1], got[0] * 2]
        expect = sum(c[None, :, None, :] * f for c, f in zip(coeffs, fields, strict=True))
        torch.testing.assert_close(dispatch.blend(fields, lambda c=coeffs: c, "auto", INTERPRET),
                                   expect)  # fmt: skip
        fmm = dispatch.fused(q, k, v, coeffs[:2], None, ["elu", "relu"], causal, True, mask, 0.0,
                             "auto", INTERPRET)  # fmt: skip
        torch.testing.assert_close(
            fmm, coeffs[0][None, :, None] * got[0] + coeffs[1][None, :, None] * got[1]
        )


def test_route_decides_once_and_checks_the_backend():
    q = torch.zeros(1, 1, 4, 8)
    assert dispatch.route("auto", q, True) == "reference"  # CPU tensors
    assert dispatch.route("reference", q, True, INTERPRET) == "reference"
    assert dispatch.route("auto", q, True, INTERPRET) == "fused"
    assert dispatch.route("auto", q, False, INTERPRET) == "fields"
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        dispatch.route("cuda", q, True)
    with pytest.raises(ValueError, match="backend must be"):
        dispatch.route("gpu", q, True)


class _FakeCudaTensor:
    is_cuda = True
    device = "cuda:0"


def test_dispatch_without_the_kernels(monkeypatch):
    """No importable kernels (no triton): "auto" falls back silently, "cuda" explains why it
    cannot run; "reference" never looks for them."""
    monkeypatch.setitem(sys.modules, "fmmformer_pl.attention.ops.near_field.op", None)
    q = _FakeCudaTensor()
    assert dispatch.near_field(q, q, q, 5, False, None, 0.0, "auto") is None
    with pytest.raises(RuntimeError, match="unavailable"):
        dispatch.near_field(q, q, q, 5, False, None, 0.0, "cuda")
    assert dispatch.near_field(q, q, q, 5, False, None, 0.0, "reference") is None
