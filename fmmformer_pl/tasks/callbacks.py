"""Callbacks the CLI adds to every run: what is logged beside the losses, and what is printed.

- :class:`TrainingMonitor`: ``train/lr``, ``train/tokens_per_sec``, ``train/peak_memory_gib``.
- :class:`BlendWeightMonitor`: the learned near/far blend weights of every attention layer.
- :class:`MajorityBaseline`: at the end of ``fit``, validation accuracy beside the accuracy of
  always predicting the most frequent training label.
- :class:`PlainProgressBar`: one plain line every few steps, for logs that are not a terminal.
- :class:`PeriodicCheckpoint`: a resumable checkpoint every few minutes of training, one file.
- :class:`BestMetricLogger`: TensorBoard's ``hp_metric`` as the best validation metric so far.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from datetime import timedelta
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from data_modules.common.batch import LABEL
from fmmformer_pl.tasks.base import TaskBase


def _window(trainer: Trainer, window: Optional[int]) -> int:
    return max(1, window if window is not None else trainer.log_every_n_steps)


class TrainingMonitor(Callback):
    """Logs, every training step (the logger keeps every ``log_every_n_steps``-th):

    train/lr                 learning rate of the first parameter group
    train/tokens_per_sec     token positions per second, summed over processes: the tokens of
                             the last ``window`` batches (default ``log_every_n_steps``) over the
                             time from the start of the first to the end of the last
    train/peak_memory_gib    torch.cuda.max_memory_allocated, on CUDA only
    """

    def __init__(self, window: Optional[int] = None) -> None:
        self.window = window
        self._batches: deque[tuple[float, float, int]] = deque()  # (start, end, tokens)
        self._start = 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Validation between two batches is not training time: windows restart after it.
        self._batches.clear()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._batches.clear()

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.optimizers:
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            pl_module.log("train/lr", lr, on_step=True, on_epoch=False, batch_size=1)

        tokens = TaskBase.batch_tokens(batch) if isinstance(batch, dict) else 0
        self._batches.append((self._start, time.perf_counter(), tokens * trainer.world_size))
        while len(self._batches) > _window(trainer, self.window):
            self._batches.popleft()
        elapsed = self._batches[-1][1] - self._batches[0][0]
        if elapsed > 0:
            rate = sum(count for _, _, count in self._batches) / elapsed
            pl_module.log("train/tokens_per_sec", rate, on_step=True, on_epoch=False, batch_size=1)

        if pl_module.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
            pl_module.log(
                "train/peak_memory_gib",
                peak,
                on_step=True,
                on_epoch=False,
                batch_size=1,
                reduce_fx="max",
            )


class BlendWeightMonitor(Callback):
    """Logs each blend weight (parameters and buffers whose name contains ``pattern``).

    A weight with at most ``max_elements`` entries (a scalar, one per head) is logged entry by
    entry as ``blend/<name>/<i>``; a larger one (one per channel) as its mean, and as a
    histogram when the logger is TensorBoard. Logged every ``log_every_n_steps`` steps and
    after each validation.
    """

    def __init__(self, pattern: str = "blend", max_elements: int = 16) -> None:
        self.pattern = pattern
        self.max_elements = max_elements

    def blend_weights(self, pl_module: LightningModule) -> dict[str, torch.Tensor]:
        tensors = dict(pl_module.named_parameters())
        tensors.update(dict(pl_module.named_buffers()))
        return {
            name.removeprefix("model."): tensor.detach()
            for name, tensor in tensors.items()
            if self.pattern in name
        }

    def _log(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for name, weight in self.blend_weights(pl_module).items():
            flat = weight.float().flatten()
            if flat.numel() <= self.max_elements:
                for index, value in enumerate(flat.tolist()):
                    key = f"blend/{name}" if flat.numel() == 1 else f"blend/{name}/{index}"
                    self._log_value(trainer, key, value)
            else:
                self._log_value(trainer, f"blend/{name}/mean", float(flat.mean()))
                if trainer.is_global_zero:
                    for logger in trainer.loggers:
                        if isinstance(logger, TensorBoardLogger):
                            logger.experiment.add_histogram(
                                f"blend/{name}", flat.cpu(), trainer.global_step
                            )

    @staticmethod
    def _log_value(trainer: Trainer, key: str, value: float) -> None:
        # Straight to the loggers: these are parameters, identical on every process, so there is
        # nothing to reduce, and this also works from hooks where self.log is not allowed.
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({key: value}, step=trainer.global_step)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step % trainer.log_every_n_steps == 0:
            self._log(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, pl_module)


class MajorityBaseline(Callback):
    """Prints, at the end of ``fit``, the last validation accuracy beside the majority baseline.

    majority class c* = argmax_c (training labels equal to c), counted over the training batches
        of this run (the whole train split once an epoch has passed; kept in checkpoints);
    baseline accuracy = (validation labels equal to c*) / (validation labels).

    Tasks without class labels (language modelling) are left alone.
    """

    def __init__(self, metric: str = "val/acc") -> None:
        self.metric = metric
        self.train_counts: Optional[torch.Tensor] = None
        self.val_counts: Optional[torch.Tensor] = None
        #: (validation accuracy, baseline accuracy, majority class), set by on_fit_end
        self.result: Optional[tuple[float, float, int]] = None

    @staticmethod
    def _count(counts: Optional[torch.Tensor], pl_module: LightningModule, batch: Any):
        num_classes = getattr(pl_module, "num_classes", None)
        if num_classes is None or not isinstance(batch, dict) or LABEL not in batch:
            return counts
        if counts is None:
            counts = torch.zeros(num_classes, dtype=torch.long)
        labels = batch[LABEL].detach().long().cpu()
        return counts + torch.bincount(labels, minlength=num_classes)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.train_counts = self._count(self.train_counts, pl_module, batch)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.val_counts = None  # each validation counts the split afresh

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.val_counts = self._count(self.val_counts, pl_module, batch)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.train_counts is None or self.val_counts is None or trainer.sanity_checking:
            return
        if self.metric not in trainer.callback_metrics:
            return
        # The strategy's device, not pl_module.device: by on_fit_end the module may be back on
        # the CPU, and NCCL cannot reduce CPU tensors (every multi-GPU fit then exited 1).
        device = trainer.strategy.root_device
        train = trainer.strategy.reduce(self.train_counts.to(device), reduce_op="sum")
        val = trainer.strategy.reduce(self.val_counts.to(device), reduce_op="sum")
        majority = int(torch.argmax(train))
        baseline = float(val[majority]) / max(1, int(val.sum()))
        accuracy = float(trainer.callback_metrics[self.metric])
        self.result = (accuracy, baseline, majority)
        if trainer.is_global_zero:
            ratio = f"{accuracy / baseline:.2f}x" if baseline > 0 else "n/a"
            print(
                f"\nValidation accuracy {accuracy:.4f} | majority-class baseline {baseline:.4f} "
                f"(always class {majority}, the most frequent training label) | {ratio} baseline",
                flush=True,
            )

    def state_dict(self) -> dict[str, Any]:
        return {"train_counts": self.train_counts}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_counts = state_dict.get("train_counts")


class PlainProgressBar(ProgressBar):
    """Plain lines instead of a redrawn bar: ``epoch 0 step 50/200 | train/loss 1.23 | ...``.

    For runs whose output goes to a file (cluster jobs), where a redrawn bar is noise.
    """

    def __init__(self, refresh_rate: Optional[int] = None) -> None:
        super().__init__()
        self.refresh_rate = refresh_rate
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, trainer: Trainer, text: str) -> None:
        if self._enabled and trainer.is_global_zero:
            print(text, file=sys.stdout, flush=True)

    def _metrics(self, trainer: Trainer, pl_module: LightningModule, prefix: str = "") -> str:
        items = self.get_metrics(trainer, pl_module)
        parts = []
        for key, value in items.items():
            if key == "v_num" or not key.startswith(prefix):
                continue
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        return " | ".join(parts)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        every = self.refresh_rate or trainer.log_every_n_steps
        step = trainer.global_step
        if step % every == 0 or step == trainer.max_steps:
            total = (
                trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
            )
            line = self._metrics(trainer, pl_module, "train/")
            self._print(trainer, f"epoch {trainer.current_epoch} step {step}/{total} | {line}")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {
            key: float(value)
            for key, value in trainer.callback_metrics.items()
            if key.startswith("val/") and value.numel() == 1
        }
        line = " | ".join(f"{key} {value:.4g}" for key, value in sorted(metrics.items()))
        self._print(trainer, f"validation at step {trainer.global_step} | {line}")


class PeriodicCheckpoint(ModelCheckpoint):
    """A resumable checkpoint every ``minutes`` of training, or every ``steps`` optimiser steps,
    saved mid-epoch at a step's end and kept as ONE file, ``periodic-step=<n>.ckpt`` (each new
    one replaces the previous), beside the run's other checkpoints (``<log dir>/checkpoints``
    unless ``dirpath`` says otherwise). A killed job loses at most that much training.

    The CLI adds one to every fit (config key ``periodic_checkpoint``):

        periodic_checkpoint:
          minutes: 10      # by training time (the default)
          steps: null      # or every n steps (takes precedence over minutes)

    ``minutes: null`` with ``steps: null`` turns it off, as does
    ``trainer.enable_checkpointing: false``. Under DDP rank 0's clock decides for all ranks.
    """

    def __init__(
        self,
        minutes: Optional[float] = 10.0,
        steps: Optional[int] = None,
        dirpath: Optional[str] = None,
    ) -> None:
        if minutes is not None and not (minutes > 0 and math.isfinite(minutes)):
            raise ValueError(f"periodic_checkpoint.minutes must be > 0 or null, got {minutes}")
        if steps is not None and steps < 1:
            raise ValueError(f"periodic_checkpoint.steps must be >= 1 or null, got {steps}")
        self.minutes, self.steps = minutes, steps
        trigger: dict[str, Any] = {}
        if steps is not None:
            trigger["every_n_train_steps"] = steps
        elif minutes is not None:
            trigger["train_time_interval"] = timedelta(minutes=minutes)
        super().__init__(
            dirpath=dirpath, filename="periodic-{step}", monitor=None, save_top_k=1,
            save_last=False, save_on_train_epoch_end=False, **trigger,
        )  # fmt: skip

    @property
    def enabled(self) -> bool:
        return self.minutes is not None or self.steps is not None

    def on_train_batch_end(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if not self.enabled or self._should_skip_saving_checkpoint(trainer):
            return
        if not epoch_ends(trainer):
            super().on_train_batch_end(trainer, *args, **kwargs)
            return
        # A checkpoint written after an epoch's last batch but before its end hooks resumes
        # into the next epoch differently from the run that went on (Lightning 2.6): save
        # that one at the epoch's end instead, where ModelCheckpoint itself saves.
        now = time.monotonic()
        due = self.steps is not None and trainer.global_step % self.steps == 0
        if self.steps is None and self._last_time_checked is not None:
            due = now - self._last_time_checked >= self._train_time_interval.total_seconds()
            due = trainer.strategy.broadcast(due)  # rank 0's clock decides
        self._save_at_epoch_end = bool(due)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if getattr(self, "_save_at_epoch_end", False):
            self._save_at_epoch_end = False
            self._last_time_checked = time.monotonic()
            self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pass  # periodic only: the config's own ModelCheckpoint saves at validations


def epoch_ends(trainer: Trainer) -> bool:
    """Whether the training batch that just ended is the last of its epoch."""
    loop = trainer.fit_loop.epoch_loop
    try:
        return bool(loop.batch_progress.is_last_batch or loop._num_ready_batches_reached())
    except Exception:  # noqa: BLE001 - private loop state; without it, treat as mid-epoch
        return False


class BestMetricLogger(Callback):
    """Logs TensorBoard's ``hp_metric`` as the best value so far of ``val/acc`` (higher is
    better) or ``val/ppl`` (lower is better), after each validation of a fit; the first one
    also declares it in the HPARAMS tab beside the run's hyper-parameters. (Lightning's
    default writes a constant -1; the CLI turns that off with ``default_hp_metric: false``.)
    """

    METRICS = {"val/acc": max, "val/ppl": min}

    def __init__(self) -> None:
        self.best: Optional[float] = None
        self._declared = False

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        for name, better in self.METRICS.items():
            value = trainer.callback_metrics.get(name)
            if value is None or value.numel() != 1:
                continue
            value = float(value)
            self.best = value if self.best is None else better(self.best, value)
            for logger in trainer.loggers:
                if not isinstance(logger, TensorBoardLogger):
                    continue
                if not self._declared:
                    from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
                    from torch.utils.tensorboard.summary import hparams

                    flat = _flatten_dict(_convert_params(dict(logger.hparams)))
                    params = {k: v if _scalar(v) else str(v) for k, v in flat.items()}
                    for summary in hparams(params, {"hp_metric": self.best}):
                        logger.experiment._get_file_writer().add_summary(summary)
                    self._declared = True
                logger.log_metrics({"hp_metric": self.best}, step=trainer.global_step)
            return

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")


def _scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))
