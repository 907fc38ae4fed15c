"""The ListOps paper model (``configs/lra/listops/fmm2_band5.yaml``: band 5, the released blend
w1 D + w2 (a L1 + b L2), the unnormalised far field over the padded length, the padded-length
mean) on the kernels against the same model on the reference path: the logits and the
gradient of every parameter, blend weights included, on padded batches.

This is the training step the paper configs run on a GPU (LRA lengths take the short path),
so a kernel that computed the paper model's gradients wrongly would show here, not only in the
per-op tests. ``helpers.py`` says where each test runs.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from fmmformer_pl.attention import dispatch
from fmmformer_pl.attention.ops.plan import DEFAULT_PLAN
from tests.models.test_released_lra_model import _paper_model

from .helpers import GENERAL, SHORT, gpu, interpreter, rel


def _pair(max_length: int, plan, device: str = "cpu"):
    """The paper model on ``plan``'s kernels and a copy on the reference path, the blend
    weights moved off their initial 1 / 0 so that every field reaches the output."""
    torch.manual_seed(0)
    fast = _paper_model(max_length).to(device).eval()
    with torch.no_grad():
        for p in fast.parameters():
            if p.numel() <= 2:  # the blend weights: per head (2) or scalar
                p.add_(torch.randn_like(p) * 0.3)
    ref = copy.deepcopy(fast)
    for block in fast.encoder.blocks:
        block.attn.kernel_plan = plan
    for block in ref.encoder.blocks:
        block.attn.config = dataclasses.replace(block.attn.config, backend="reference")
    return fast, ref


def _batch(n: int, device: str = "cpu"):
    """(3, n) token ids and a padding mask (True = padding): full, right-padded, short."""
    ids = torch.randint(0, 20, (3, n), device=device)
    padding = torch.zeros(3, n, dtype=torch.bool, device=device)
    padding[1, n - n // 3 :] = True
    padding[2, 7:] = True
    return ids, padding


def _step(model, ids, padding, labels):
    logits = model(ids, padding)
    torch.nn.functional.cross_entropy(logits.float(), labels).backward()
    return logits


@interpreter
@pytest.mark.parametrize("plan", [SHORT, GENERAL], ids=["short", "general"])
@pytest.mark.parametrize("n", [45, 130])
def test_paper_listops_model_trains_the_same_on_the_kernels(plan, n, monkeypatch):
    fast, ref = _pair(max_length=160, plan=plan)
    ids, padding = _batch(n)
    labels = torch.tensor([1, 4, 9])
    fused, ran = dispatch.fused, []
    monkeypatch.setattr(dispatch, "fused", lambda *a, **k: ran.append(fused(*a, **k)) or ran[-1])
    out_fast = _step(fast, ids, padding, labels)
    monkeypatch.undo()
    assert len(ran) == len(fast.encoder.blocks) and all(y is not None for y in ran)
    out_ref = _step(ref, ids, padding, labels)
    assert rel(out_fast, out_ref) < 1e-5
    for (name, p_fast), p_ref in zip(fast.named_parameters(), ref.parameters(), strict=True):
        assert p_fast.grad is not None, name
        assert rel(p_fast.grad, p_ref.grad) < 1e-4, name


@gpu
def test_paper_listops_model_trains_the_same_on_the_gpu_kernels():
    """At LRA's padded length (2,048), bf16 autocast as the configs train, against the
    float32 reference path; each gradient measured against the largest as well (some vanish
    in exact arithmetic)."""
    fast, ref = _pair(max_length=2048, plan=DEFAULT_PLAN, device="cuda")
    ids, padding = _batch(2048, device="cuda")
    labels = torch.tensor([1, 4, 9], device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out_fast = _step(fast, ids, padding, labels)
    out_ref = _step(ref, ids, padding, labels)
    assert rel(out_fast, out_ref) < 3e-2
    scale = max(p.grad.norm() for p in ref.parameters())
    for (name, p_fast), p_ref in zip(fast.named_parameters(), ref.parameters(), strict=True):
        err = (p_fast.grad - p_ref.grad).norm() / torch.maximum(p_ref.grad.norm(), 1e-2 * scale)
        assert err < 5e-2, (name, err.item())
