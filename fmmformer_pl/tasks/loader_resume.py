"""Resuming mid-epoch: the train loader's checkpointed position, loaded where Lightning 2.6
leaves it unloaded.

``configure_optimizers`` reads ``trainer.estimated_stepping_batches`` (the schedule's length),
which builds the train loader *before* the checkpoint is restored; the fit loop then keeps that
loader and never loads its saved state, so a resumed run would re-read the epoch from its start
(Lightning issue #20550, open). :class:`LoaderStateResume` does, at ``on_train_start`` (after
the restore, before the first batch), what the fit loop does on its normal path: load the
pending states, then create the iterator anew. Every task registers it
(``TaskBase.configure_callbacks``), so the CLI and a plain ``Trainer`` both get it.

It reads private attributes of Lightning's fit loop (``_combined_loader``,
``_combined_loader_states_to_load``, ``_data_fetcher``): this file is the one place that does,
and ``tests/test_resume.py`` fails if a Lightning release changes them.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

__all__ = ["LoaderStateResume", "restore_pending_loader_states"]


def restore_pending_loader_states(trainer: Any) -> None:
    """Loads the train loaders' pending checkpointed positions into the fit loop's loader and
    restarts its iterator. A no-op when nothing is pending (a fresh run, or a Lightning that
    loaded them itself)."""
    fit_loop = trainer.fit_loop
    pending = getattr(fit_loop, "_combined_loader_states_to_load", None)
    if not pending or getattr(fit_loop, "_combined_loader", None) is None:
        return
    fit_loop._combined_loader._load_state_dicts(pending)
    fit_loop._combined_loader_states_to_load = []
    iter(fit_loop._data_fetcher)  # the iterator made before the restore holds the old position


class LoaderStateResume(Callback):
    """Continues a resumed fit with the batch the interrupted run would have read next (see the
    module docstring). Stateless: it adds nothing to checkpoints."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        restore_pending_loader_states(trainer)
