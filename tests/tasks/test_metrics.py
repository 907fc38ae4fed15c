"""TokenPerplexity against torchmetrics' own Perplexity (which needs the full logits)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.text import Perplexity

from fmmformer_pl.tasks.metrics import TokenPerplexity


def test_matches_torchmetrics_perplexity_over_several_batches_with_ignored_tokens():
    gen = torch.Generator().manual_seed(0)
    reference = Perplexity(ignore_index=-100)
    ours = TokenPerplexity()
    for _ in range(3):
        logits = torch.randn(2, 7, 11, generator=gen)  # (batch, seq, vocab)
        target = torch.randint(0, 11, (2, 7), generator=gen)
        counted = torch.rand(2, 7, generator=gen) > 0.3  # like a sliding window's loss_mask
        nll = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # (batch, seq)
        ours.update(nll, counted)
        reference.update(logits, target.masked_fill(~counted, -100))
    assert ours.compute().item() == pytest.approx(reference.compute().item(), rel=1e-5)


def test_without_mask_is_exp_of_mean():
    metric = TokenPerplexity()
    metric.update(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert metric.compute().item() == pytest.approx(torch.tensor(2.5).exp().item())


def test_empty_is_nan_and_bad_mask_is_refused():
    metric = TokenPerplexity()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert torch.isnan(metric.compute())
    with pytest.raises(ValueError, match="mask shape"):
        metric.update(torch.zeros(2, 3), torch.ones(3, 2, dtype=torch.bool))
