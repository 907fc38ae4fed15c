"""What every task shares: the optimiser and schedule from :class:`OptimConfig`, how many
tokens a batch holds (read by the throughput callback), and the callback that resumes the train
loader mid-epoch (:mod:`fmmformer_pl.tasks.loader_resume`)."""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from lightning.pytorch import Callback, LightningModule

from data_modules.common.batch import TOKEN_KEYS
from fmmformer_pl.tasks.loader_resume import LoaderStateResume
from fmmformer_pl.tasks.optim import (
    OptimConfig,
    build_optimizer,
    build_scheduler,
    parameter_groups,
)


class TaskBase(LightningModule):
    """A LightningModule with ``self.optim`` (an :class:`OptimConfig`) and ``self.model``.

    ``compile``: compile ``self.model``'s forward with ``torch.compile`` at the start of each
    fit / validate / test / predict (True, or a dict of its keyword arguments, e.g.
    ``{"mode": "max-autotune"}``). On CUDA the FMM attention then traces as custom ops, so the
    model compiles as one graph around it. In place (``nn.Module.compile``): checkpoints stay
    interchangeable with uncompiled runs. Only ``forward`` is compiled (the language model's
    adaptive-softmax loss in ``nll`` stays eager).
    """

    def __init__(
        self, optim: Optional[OptimConfig] = None, compile: Union[bool, dict[str, Any]] = False
    ) -> None:
        super().__init__()
        self.optim = optim if optim is not None else OptimConfig()
        if not isinstance(compile, (bool, dict)):
            raise TypeError(
                f"compile must be a bool or a dict of torch.compile options, got {compile!r}"
            )
        self.compile_options = (
            None if compile is False else {} if compile is True else dict(compile)
        )

    def setup(self, stage: str) -> None:
        # (not configure_model: overriding that would run under DeepSpeed's zero.Init and
        # make weight-averaging callbacks warn, also for compile=False)
        if self.compile_options is not None and self.model._compiled_call_impl is None:
            self.model.compile(**self.compile_options)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(parameter_groups(self, self.optim.weight_decay), self.optim)
        total = self.optim.total_steps
        if total is None:
            total = int(self.trainer.estimated_stepping_batches)
        scheduler = build_scheduler(optimizer, self.optim, total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def configure_callbacks(self) -> list[Callback]:
        # Lightning adds these to any Trainer this task is fitted with (the CLI's and a plain one).
        return [LoaderStateResume()]

    @staticmethod
    def check_sizes(**sizes: int) -> None:
        """Raises a clear error for a size the data module did not provide (the CLI links them;
        a data module without one of them links ``None``)."""
        for name, value in sizes.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"{name} must be a positive integer, got {value!r}: the CLI links it from the "
                    f"data module's `{name}` property, or pass model.init_args.{name} yourself"
                )

    @staticmethod
    def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
        """Token positions the model processes for ``batch`` (padding included: it is computed)."""
        return sum(batch[key].numel() for key in TOKEN_KEYS if key in batch)
