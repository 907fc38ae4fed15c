"""Optimiser and learning-rate schedule, read from YAML as one dataclass.

Schedules (t = optimiser step, W = warmup_steps, T = total_steps, m = min_lr_ratio):

    warmup      lr(t) = lr * t / W                                  for t < W
    linear      lr(t) = lr * (1 - (1 - m) * p)                      p = (t - W) / (T - W)
    cosine      lr(t) = lr * (m + (1 - m) * (1 + cos(pi * p)) / 2)
    cosine_total  as cosine with p = t / T: the cosine runs over all T steps, warm-up included
                (Transformer-XL's CosineAnnealingLR(T_max=max_step) after a linear warm-up,
                as the released LM code trains)
    constant    lr(t) = lr
    one_cycle   torch's OneCycleLR with its defaults, as the released LRA code runs it:
                pct_start = W / T, up from lr / 25 to lr at t = W, then down to lr / 25e4 at
                t = T, along a cosine (``anneal: cos``) or a line (``anneal: linear``, the
                released runs); beta1 cycled inversely, 0.95 -> 0.85 at t = W -> 0.95 (this
                overrides betas[0]).

For t >= T the decaying schedules stay at lr * m.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn

Schedule = Literal["constant", "linear", "cosine", "cosine_total", "one_cycle"]


@dataclass
class OptimConfig:
    """AdamW / Adam hyper-parameters and the learning-rate schedule (see module docstring).

    anneal: the shape of ``one_cycle``'s two phases (ignored by the other schedules).
    total_steps: None takes the trainer's ``estimated_stepping_batches`` (``max_steps``, or
        ``max_epochs`` x batches per epoch), so the schedule ends when training ends.
    weight_decay: applied to matrices only (linear and embedding weights); biases, norms and
        blend weights are never decayed.
    """

    name: Literal["adamw", "adam"] = "adamw"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: Schedule = "linear"
    anneal: Literal["cos", "linear"] = "cos"
    total_steps: Optional[int] = None
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if self.anneal not in ("cos", "linear"):
            raise ValueError(f"optim.anneal must be 'cos' or 'linear', got {self.anneal!r}")
        if self.total_steps is not None and self.total_steps <= 0:
            raise ValueError(f"optim.total_steps must be > 0 or null, got {self.total_steps}")


def lr_factor(
    step: int, warmup_steps: int, total_steps: int, schedule: Schedule, min_lr_ratio: float = 0.0
) -> float:
    """The multiplier f(t) with lr(t) = lr * f(t) for the linear/cosine/constant schedules."""
    if step < warmup_steps:
        # As Hugging Face's get_linear_schedule_with_warmup: the first update has lr 0.
        return step / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine_total":
        progress = min(1.0, step / max(1, total_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "linear":
        return 1.0 - (1.0 - min_lr_ratio) * progress
    if schedule == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(
        f"unknown schedule {schedule!r}; expected constant, linear, cosine or cosine_total"
    )


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices (decayed) and everything 1-D or scalar (not decayed)."""
    decay, no_decay = [], []
    for _, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(params: Iterable[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[cfg.name]
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step scheduler; ``total_steps`` is the resolved T (see :class:`OptimConfig`)."""
    if total_steps <= 0:
        raise ValueError(f"the schedule needs a positive number of steps, got {total_steps}")
    if cfg.schedule == "one_cycle":
        # A one-step warm-up counts as none: OneCycleLR cannot end a phase at step 0.
        warmup = cfg.warmup_steps if cfg.warmup_steps > 1 else 0
        pct_start = min(max(warmup / total_steps, 1e-6), 0.999)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=cfg.lr,
            total_steps=total_steps,
            pct_start=pct_start,
            anneal_strategy=cfg.anneal,
            cycle_momentum=True,
            base_momentum=0.85,
            max_momentum=0.95,
        )

    def factor(step: int) -> float:
        return lr_factor(step, cfg.warmup_steps, total_steps, cfg.schedule, cfg.min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
