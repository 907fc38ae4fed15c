"""Stopping a run cleanly on SIGTERM (what SLURM and Kubernetes send before they kill a job)
and SIGINT (Ctrl-C).

Lightning's own handling ends a fit on SIGTERM with exit status 0 and no checkpoint, and on
Ctrl-C mid-step with status 1. :class:`StopOnSignal` instead:

- in ``fit``: lets the current optimiser step finish (with the validation and the epoch's end
  when they follow it, so the config's checkpoints are written as usual), writes a resumable checkpoint ``interrupted.ckpt`` beside the run's other
  checkpoints, and raises :class:`~fmmformer_pl.tasks.errors.Interrupted`;
- in ``validate`` / ``test`` / ``predict``: stops after the current batch, writes nothing;
- before the first step (data preparation, the sanity check): stops at once.

``cli.py`` turns the exception into one line (where the checkpoint is, the command that
resumes) and exit status 128 + the signal number. A second SIGINT stops at once, without a
checkpoint; a repeated SIGTERM is ignored (a process group may receive it twice, e.g. from
``kill -TERM -<group>`` and from its DDP launcher). SIGUSR1 (SLURM's requeue signal, handled
by Lightning) is left alone.

Under DDP every rank must stop after the same step: each rank's "a signal came" is reduced
across ranks (any) at every step end, a collective of one value like the one Lightning itself
runs each step. The launcher process forwards SIGTERM to the ranks it started.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping, ModelCheckpoint

from fmmformer_pl.tasks.callbacks import epoch_ends
from fmmformer_pl.tasks.errors import Interrupted

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CHECKPOINT_NAME = "interrupted.ckpt"


def run_checkpoint_dir(trainer: Trainer) -> Path:
    """Where this run's checkpoints go: the first ModelCheckpoint's folder, else
    ``<log dir>/checkpoints`` (ModelCheckpoint's own default)."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath)
    return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"


class StopOnSignal(Callback):
    """See the module docstring. ``checkpoint``: False stops without writing (the CLI passes
    False for ``trainer.enable_checkpointing: false``)."""

    def __init__(self, checkpoint: bool = True) -> None:
        self.checkpoint = checkpoint
        self.received: Optional[int] = None
        self._deferred = False  # True while a step or batch loop runs: stop at its next end
        self._stop_pending = False
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()
        self._trainer: Optional[Trainer] = None

    # -- the handler ------------------------------------------------------------------------
    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker inherited the handler: the main process decides
        if self.received is not None:
            if signum == signal.SIGINT:
                raise Interrupted(signum, at_once=True, step=self._step(), stage=self._stage())
            return
        if not self._deferred:
            raise Interrupted(signum, stage=self._stage())
        self.received = signum
        name = signal.Signals(signum).name
        when = "the current validation" if self._in_validation() else "the current step"
        os.write(2, f"\n{name} received: stopping after {when} (Ctrl-C again: at once)\n".encode())
        launcher = getattr(self._trainer.strategy, "launcher", None) if self._trainer else None
        if signum == signal.SIGTERM and launcher is not None and hasattr(launcher, "kill"):
            launcher.kill(signum)  # the ranks this process started (Lightning does the same)

    def _install(self, deferred: bool) -> None:
        self._deferred = deferred
        for signum in STOP_SIGNALS:
            current = signal.getsignal(signum)
            if current != self._handle and signum not in self._previous:
                self._previous[signum] = current
            signal.signal(signum, self._handle)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}
        self._deferred = False

    def _step(self) -> Optional[int]:
        trainer = self._trainer
        return trainer.global_step if trainer is not None and trainer.training else None

    def _stage(self) -> str:
        trainer = self._trainer
        fn = getattr(getattr(trainer, "state", None), "fn", None)
        return str(getattr(fn, "value", fn) or "run")

    def _in_validation(self) -> bool:
        return self._trainer is not None and bool(self._trainer.validating)

    # -- Lightning hooks --------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer
        self._pid = os.getpid()
        self.received, self._stop_pending = None, False
        # Run after the checkpoint callbacks (Lightning moves those to the end of the list): a
        # stop at a validation's end then comes after ModelCheckpoint saved for it.
        if self in trainer.callbacks:
            trainer.callbacks.remove(self)
            trainer.callbacks.append(self)
        if threading_main():
            self._install(deferred=False)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if threading_main():
            self._restore()

    # Lightning registers its own SIGTERM handler after ``setup``; these hooks run after it and
    # put ours back in its place. The sanity check stops at once (nothing trained yet).
    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if threading_main():
            self._install(deferred=False)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if threading_main():
            self._install(deferred=True)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and threading_main():
            self._install(deferred=True)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if threading_main():
            self._install(deferred=True)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if threading_main():
            self._install(deferred=True)

    def _agreed(self, trainer: Trainer) -> bool:
        """True on every rank when a signal reached any rank."""
        local = self.received is not None
        if trainer.world_size > 1:
            return bool(trainer.strategy.reduce_boolean_decision(local, all=False))
        return local

    def _signum(self) -> int:
        return self.received if self.received is not None else int(signal.SIGTERM)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._agreed(trainer):
            return
        if _validation_follows(trainer) or epoch_ends(trainer):
            # Finish the step: its validation and the epoch's end hooks (where ModelCheckpoint
            # saves when validation runs once per epoch) come first.
            self._stop_pending = True
            return
        self._stop_fit(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        # (every rank holds the same _stop_pending: it is set after an agreed decision)
        if self._stop_pending or self._agreed(trainer):
            if epoch_ends(trainer):
                self._stop_pending = True  # stop in on_train_epoch_end
            else:
                self._stop_fit(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._stop_pending or self._agreed(trainer):
            # Lightning runs this hook of the other callbacks first, then the module's, then
            # the checkpoint and early-stopping callbacks': run those two now, as they would.
            pl_module.on_train_epoch_end()
            for callback in trainer.callbacks:
                if isinstance(callback, (Checkpoint, EarlyStopping)):
                    callback.on_train_epoch_end(trainer, pl_module)
            self._stop_fit(trainer)

    def _stop_fit(self, trainer: Trainer) -> None:
        path = None
        if self.checkpoint:
            path = str(run_checkpoint_dir(trainer) / CHECKPOINT_NAME)
            trainer.save_checkpoint(path, weights_only=False)  # the full state: a resume
        raise Interrupted(self._signum(), path, trainer.global_step, stage="fit")

    def _stop_evaluation(self, trainer: Trainer) -> None:
        if trainer.state.fn != "fit" and self._agreed(trainer):
            raise Interrupted(self._signum(), stage=self._stage())

    def on_validation_batch_end(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        self._stop_evaluation(trainer)  # a validation inside fit finishes (see on_validation_end)

    def on_test_batch_end(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        self._stop_evaluation(trainer)

    def on_predict_batch_end(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        self._stop_evaluation(trainer)


def threading_main() -> bool:
    """Signal handlers can only be set from the main thread (not e.g. in a notebook's worker)."""
    return threading.current_thread() is threading.main_thread()


def _validation_follows(trainer: Trainer) -> bool:
    """Whether the fit loop runs a validation right after the batch that just ended (read in
    ``on_train_batch_end``; the loop decides with the same counters just after it)."""
    loop = trainer.fit_loop.epoch_loop
    try:
        return bool(loop._should_check_val_fx(trainer.fit_loop._data_fetcher))
    except Exception:  # noqa: BLE001 - a private API: without it, stop before the validation
        return False
