"""Causal language modelling (WikiText-103): loss = mean NLL per counted token, perplexity =
exp(loss).

Sliding-window evaluation: the data module may add ``loss_mask`` (True where a token counts),
so each window scores only the tokens it sees with a full context; without it every token counts.
"""

from __future__ import annotations

import copy
from typing import Any, Optional, Union

import torch

from data_modules.common.batch import INPUT_IDS, LOSS_MASK, TARGET_IDS, LMBatch
from fmmformer_pl.models import FMMDecoderLM
from fmmformer_pl.models.config import DecoderConfig
from fmmformer_pl.tasks.base import TaskBase
from fmmformer_pl.tasks.metrics import TokenPerplexity
from fmmformer_pl.tasks.optim import OptimConfig

DEFAULT_DECODER = DecoderConfig()  # never mutated, see classification.DEFAULT_ENCODER


class LanguageModelTask(TaskBase):
    """Trains :class:`FMMDecoderLM` on :class:`LMBatch` batches.

    Args:
        vocab_size, max_length: linked from the data module by the CLI (``max_length`` is the
            context, the data module's ``tgt_len``).
        decoder: the decoder's hyper-parameters.
        optim: optimiser and learning-rate schedule (the paper: Adam, cosine).
        compile: ``torch.compile`` the model (True, or its keyword arguments; see TaskBase).
    """

    def __init__(
        self,
        vocab_size: int,
        max_length: int,
        decoder: DecoderConfig = DEFAULT_DECODER,
        optim: Optional[OptimConfig] = None,
        compile: Union[bool, dict[str, Any]] = False,
    ) -> None:
        super().__init__(optim, compile)
        self.check_sizes(vocab_size=vocab_size, max_length=max_length)
        self.decoder_config = copy.deepcopy(decoder)
        self.save_hyperparameters()
        self.model = FMMDecoderLM(vocab_size, max_length, self.decoder_config)
        self.val_ppl = TokenPerplexity()
        self.test_ppl = TokenPerplexity()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, seq, dim) final hidden states."""
        return self.model(input_ids)

    def _nll(self, batch: LMBatch) -> tuple[torch.Tensor, torch.Tensor]:
        nll = self.model.nll(batch[INPUT_IDS], batch[TARGET_IDS])  # (batch, seq)
        mask = batch.get(LOSS_MASK)  # (batch, seq) bool or None
        if mask is None:
            mask = torch.ones_like(nll, dtype=torch.bool)
        return nll, mask

    def training_step(self, batch: LMBatch, batch_idx: int) -> torch.Tensor:
        nll, mask = self._nll(batch)
        loss = nll[mask].mean()
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=False,
            prog_bar=True,
            batch_size=int(mask.sum()),
        )
        self.log(
            "train/ppl",
            torch.exp(loss.detach()),
            on_step=True,
            on_epoch=False,
            batch_size=int(mask.sum()),
        )
        return loss

    def _eval_step(self, batch: LMBatch, stage: str) -> None:
        mask = batch.get(LOSS_MASK)
        if mask is not None:
            # Only the counted positions reach the output layer (a full-context evaluation
            # counts one position per window).
            nll = self.model.nll_at(batch[INPUT_IDS], batch[TARGET_IDS], mask)  # (n,)
            mask = torch.ones_like(nll, dtype=torch.bool)
        else:
            nll, mask = self._nll(batch)
        perplexity = getattr(self, f"{stage}_ppl")
        perplexity.update(nll, mask)
        count = int(mask.sum())
        if count == 0:  # a padding batch of a full-context evaluation
            return
        # Weighted by the token count, the epoch value is the per-token loss of the whole split
        # (= log ppl), not a mean of batch means.
        self.log(
            f"{stage}/loss",
            nll[mask].mean(),
            on_step=False,
            on_epoch=True,
            batch_size=count,
            sync_dist=True,
        )
        # Logging the metric object makes Lightning call compute() once per epoch, over every
        # token of the split and every process: the exact corpus perplexity.
        self.log(f"{stage}/ppl", perplexity, on_step=False, on_epoch=True, prog_bar=True)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")
