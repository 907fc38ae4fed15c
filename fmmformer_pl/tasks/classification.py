"""Sequence classification (ListOps, Text, Image, Pathfinder) and retrieval (document pairs).

loss = cross_entropy(logits, label); accuracy = share of argmax(logits) == label.
"""

from __future__ import annotations

import copy
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from data_modules.common.batch import (
    INPUT_IDS,
    INPUT_IDS_1,
    INPUT_IDS_2,
    LABEL,
    PADDING_MASK,
    PADDING_MASK_1,
    PADDING_MASK_2,
    ClassificationBatch,
    RetrievalBatch,
)
from fmmformer_pl.models import DualEncoderRetrieval, SequenceClassifier
from fmmformer_pl.models.config import EncoderConfig
from fmmformer_pl.tasks.base import TaskBase
from fmmformer_pl.tasks.optim import OptimConfig

# Never mutated: each task deep-copies it (a named default keeps the full config in
# --print_config, where `None` would print `encoder: null`).
DEFAULT_ENCODER = EncoderConfig()


class ClassificationTask(TaskBase):
    """Trains :class:`SequenceClassifier` on :class:`ClassificationBatch` batches.

    Args:
        vocab_size, num_classes, max_length: linked from the data module by the CLI.
        encoder: the encoder's hyper-parameters (attention kind, blend, sizes).
        optim: optimiser and learning-rate schedule.
        compile: ``torch.compile`` the model (True, or its keyword arguments; see TaskBase).
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        max_length: int,
        encoder: EncoderConfig = DEFAULT_ENCODER,
        optim: Optional[OptimConfig] = None,
        compile: Union[bool, dict[str, Any]] = False,
    ) -> None:
        super().__init__(optim, compile)
        self.check_sizes(vocab_size=vocab_size, num_classes=num_classes, max_length=max_length)
        self.encoder_config = copy.deepcopy(encoder)
        self.save_hyperparameters()
        self.model = self.build_model(vocab_size, num_classes, max_length, self.encoder_config)
        self.num_classes = num_classes
        # One accuracy object per stage: their states must not mix.
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def build_model(
        self, vocab_size: int, num_classes: int, max_length: int, encoder: EncoderConfig
    ) -> torch.nn.Module:
        return SequenceClassifier(vocab_size, num_classes, max_length, encoder)

    def forward(self, batch: ClassificationBatch) -> torch.Tensor:
        """(batch, num_classes) logits."""
        return self.model(batch[INPUT_IDS], batch[PADDING_MASK])

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self(batch)  # (batch, num_classes)
        loss = F.cross_entropy(logits, batch[LABEL])
        accuracy = getattr(self, f"{stage}_acc")
        accuracy(logits, batch[LABEL])
        # Training logs each step ("train/loss"); evaluation one value per pass over the split
        # ("val/loss"), weighted by batch size and reduced across processes.
        training = stage == "train"
        options = dict(on_step=training, on_epoch=not training, prog_bar=True,
                       batch_size=batch[LABEL].shape[0])  # fmt: skip
        self.log(f"{stage}/loss", loss, sync_dist=not training, **options)
        self.log(f"{stage}/acc", accuracy, **options)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """(batch,) predicted class ids."""
        return self(batch).argmax(dim=-1)


class RetrievalTask(ClassificationTask):
    """Trains :class:`DualEncoderRetrieval` on pairs: each document is encoded separately, the
    pair classified from the two pooled vectors, on :class:`RetrievalBatch` batches."""

    def build_model(
        self, vocab_size: int, num_classes: int, max_length: int, encoder: EncoderConfig
    ) -> torch.nn.Module:
        return DualEncoderRetrieval(vocab_size, num_classes, max_length, encoder)

    def forward(self, batch: RetrievalBatch) -> torch.Tensor:  # type: ignore[override]
        return self.model(
            batch[INPUT_IDS_1],
            batch[PADDING_MASK_1],
            batch[INPUT_IDS_2],
            batch[PADDING_MASK_2],
        )
