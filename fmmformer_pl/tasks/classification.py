"""Sequence classification (ListOps, Text, Image, Pathfinder) and retrieval (document pairs).

loss = cross_entropy(logits, label); accuracy = share of argmax(logits) == label.
"""

from __future__ import annotations

import copy
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from fmmformer_pl.models import DualEncoderRetrieval, SequenceClassifier
from fmmformer_pl.models.config import EncoderConfig
from fmmformer_pl.tasks.base import TaskBase
from fmmformer_pl.tasks.optim import OptimConfig

# Never mutated: each task deep-copies it (a named default keeps the full config in
# --print_config, where `None` would print `encoder: null`).
DEFAULT_ENCODER = EncoderConfig()


class ClassificationTask(TaskBase):
    """Trains :class:`SequenceClassifier` on ``{"input_ids", "padding_mask", "label"}`` batches.

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

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(batch, num_classes) logits."""
        return self.model(batch["input_ids"], batch["padding_mask"])

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self(batch)  # (batch, num_classes)
        loss = F.cross_entropy(logits, batch["label"])
        accuracy = getattr(self, f"{stage}_acc")
        accuracy(logits, batch["label"])
        # Training logs each step ("train/loss"); evaluation one value per pass over the split
        # ("val/loss"), weighted by batch size and reduced across processes.
        training = stage == "train"
        options = dict(on_step=training, on_epoch=not training, prog_bar=True,
                       batch_size=batch["label"].shape[0])  # fmt: skip
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
    pair classified from the two pooled vectors. Batches hold ``input_ids_1``,
    ``padding_mask_1``, ``input_ids_2``, ``padding_mask_2`` and ``label``."""

    def build_model(
        self, vocab_size: int, num_classes: int, max_length: int, encoder: EncoderConfig
    ) -> torch.nn.Module:
        return DualEncoderRetrieval(vocab_size, num_classes, max_length, encoder)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(
            batch["input_ids_1"],
            batch["padding_mask_1"],
            batch["input_ids_2"],
            batch["padding_mask_2"],
        )
