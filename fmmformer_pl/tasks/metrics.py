"""A perplexity metric fed with per-token negative log-likelihoods.

torchmetrics' own ``Perplexity`` takes (batch, seq, vocab) logits; the language model's
adaptive softmax never forms them (267,735 words x 256 positions x 96 rows would be 26 GB in
fp32), so this metric takes the NLL the model already computed:

    ppl = exp( sum_i m_i * nll_i / sum_i m_i )      m = 1 where the token counts
"""

from __future__ import annotations

from typing import Optional

import torch
from torchmetrics import Metric


class TokenPerplexity(Metric):
    """exp of the mean NLL over the counted tokens; sums are all-reduced across processes."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("nll_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, nll: torch.Tensor, mask: Optional[torch.Tensor] = None) -> None:
        """nll: (batch, seq) per-token NLL in nats; mask: (batch, seq) bool, True = counted."""
        if mask is None:
            mask = torch.ones_like(nll, dtype=torch.bool)
        if mask.shape != nll.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != nll shape {tuple(nll.shape)}")
        self.nll_sum += nll.detach().double()[mask].sum()
        self.count += mask.sum()

    def compute(self) -> torch.Tensor:
        if self.count == 0:
            return torch.tensor(float("nan"))
        return torch.exp(self.nll_sum / self.count).float()
