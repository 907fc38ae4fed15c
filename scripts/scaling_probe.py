"""A callback that records what the scaling runs report, for ``scripts/gpu_scaling_run.sh``.

Added to a run with (``scripts/`` on ``PYTHONPATH``)::

    --trainer.callbacks+=scaling_probe.ScalingProbe --trainer.callbacks.out_dir=DIR

It writes, from global rank 0, at the end of training:

``DIR/loss.csv``  ``step,loss,lr`` where ``loss`` is the GLOBAL batch's training loss,
    loss_t = (1 / world) * sum_r loss_t^r    (each loss_t^r the mean over rank r's samples,
    all ranks holding equal batches), so runs on 1 and 2 GPUs with one global batch compare
    step for step. (A logger's ``train/loss`` on step is rank 0's half batch only.)
``DIR/summary.json``  world size, steps, timed steps, samples/s and tokens/s (all ranks) over
    the timed steps, and per rank: peak allocated and reserved CUDA memory (GiB).

Timing: the interval between the ends of two consecutive training batches (data loading,
forward, backward, optimiser step), each end marked after ``torch.cuda.synchronize()`` so it
holds finished GPU work. Not timed: the first ``warmup_steps`` steps of the run (CUDA context,
cuBLAS autotuning, DeepSpeed's first partitioning) and intervals broken by validation, a
checkpoint or an epoch end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer


class ScalingProbe(Callback):
    def __init__(self, out_dir: str, warmup_steps: int = 10) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.out_dir = Path(out_dir)
        self.warmup_steps = warmup_steps
        self.losses: list[tuple[int, float, float]] = []
        self._timed_seconds = 0.0
        self._timed_steps = 0
        self._timed_samples = 0
        self._timed_tokens = 0
        self._last: float | None = None
        self._steps_this_run = 0

    @staticmethod
    def _sync(pl_module: LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def _interrupt(self, *args: Any, **kwargs: Any) -> None:
        # Validation, checkpointing and epoch ends are not training throughput.
        self._last = None

    on_validation_start = _interrupt
    on_train_epoch_end = _interrupt
    on_save_checkpoint = _interrupt

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        # Every rank joins the reduction; its result is the global-batch loss.
        global_loss = trainer.strategy.reduce(loss.detach().float(), reduce_op="mean")
        self._sync(pl_module)
        now = time.perf_counter()
        self._steps_this_run += 1
        if self._last is not None and self._steps_this_run > self.warmup_steps:
            # One interval = data loading + forward + backward + optimiser step of this batch.
            self._timed_seconds += now - self._last
            self._timed_steps += 1
            if isinstance(batch, dict):
                self._timed_samples += int(batch["label"].shape[0]) * trainer.world_size
                self._timed_tokens += int(batch["input_ids"].numel()) * trainer.world_size
        self._last = now
        # The optimiser's learning rate at this step's end: a resumed run must show the same.
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        self.losses.append((trainer.global_step, float(global_loss), lr))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # on_train_end, not on_fit_end: by then the strategy's teardown has moved the module to
        # the CPU, and NCCL cannot gather CPU tensors.
        device = trainer.strategy.root_device
        per_rank = torch.zeros(2, dtype=torch.float64, device=device)
        if device.type == "cuda":
            per_rank[0] = torch.cuda.max_memory_allocated(device) / 2**30
            per_rank[1] = torch.cuda.max_memory_reserved(device) / 2**30
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            gathered = [torch.zeros_like(per_rank) for _ in range(trainer.world_size)]
            dist.all_gather(gathered, per_rank)
        else:
            gathered = [per_rank]
        if not trainer.is_global_zero:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "loss.csv", "w") as f:
            f.write("step,loss,lr\n")
            for step, value, lr in self.losses:
                f.write(f"{step},{value:.6f},{lr:.6g}\n")
        seconds = self._timed_seconds
        summary = {
            "world_size": trainer.world_size,
            "num_nodes": trainer.num_nodes,
            "strategy": type(trainer.strategy).__name__,
            "precision": str(trainer.precision),
            "global_step": trainer.global_step,
            "steps_this_run": self._steps_this_run,
            "first_step": self.losses[0][0] if self.losses else None,
            "timed_steps": self._timed_steps,
            "timed_seconds": seconds,
            "samples_per_sec": self._timed_samples / seconds if seconds > 0 else None,
            "tokens_per_sec": self._timed_tokens / seconds if seconds > 0 else None,
            # ZeRO-3 leaves each rank an empty placeholder; ds_numel is the full size.
            "parameters": sum(getattr(p, "ds_numel", p.numel()) for p in pl_module.parameters()),
            "peak_allocated_gib": [float(t[0]) for t in gathered],
            "peak_reserved_gib": [float(t[1]) for t in gathered],
        }
        (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
