"""The learning-rate schedules against hand-computed values, and the optimiser's groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fmmformer_pl.tasks.optim import (
    OptimConfig,
    build_optimizer,
    build_scheduler,
    lr_factor,
    parameter_groups,
)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_warmup_rises_linearly_from_zero(schedule):
    assert [lr_factor(t, 4, 20, schedule) for t in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_linear_decay_reaches_the_floor_at_total_steps_and_stays():
    # W = 10, T = 30: halfway through the decay (t = 20) the factor is 1 - (1 - m) / 2.
    assert lr_factor(20, 10, 30, "linear", min_lr_ratio=0.2) == pytest.approx(0.6)
    assert lr_factor(30, 10, 30, "linear", min_lr_ratio=0.2) == pytest.approx(0.2)
    assert lr_factor(99, 10, 30, "linear", min_lr_ratio=0.2) == pytest.approx(0.2)


def test_cosine_decay_values():
    # p = 1/4 of the way: (1 + cos(pi/4)) / 2
    assert lr_factor(15, 10, 30, "cosine") == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert lr_factor(20, 10, 30, "cosine", min_lr_ratio=0.1) == pytest.approx(0.55)
    assert lr_factor(30, 10, 30, "cosine", min_lr_ratio=0.1) == pytest.approx(0.1)


def test_constant_after_warmup_and_no_warmup():
    assert lr_factor(0, 0, 10, "constant") == 1.0
    assert lr_factor(500, 0, 10, "constant") == 1.0


def test_unknown_schedule_raises():
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor(5, 0, 10, "exponential")


def _lrs(cfg: OptimConfig, total: int, steps: int) -> list[float]:
    model = nn.Linear(3, 3)
    optimizer = build_optimizer(parameter_groups(model, cfg.weight_decay), cfg)
    scheduler = build_scheduler(optimizer, cfg, total)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_scheduler_follows_lr_factor_step_by_step():
    cfg = OptimConfig(lr=0.5, warmup_steps=3, schedule="cosine", min_lr_ratio=0.1)
    expected = [0.5 * lr_factor(t, 3, 12, "cosine", 0.1) for t in range(14)]
    assert _lrs(cfg, total=12, steps=14) == pytest.approx(expected)


def test_one_cycle_peaks_at_the_end_of_warmup_and_cycles_beta1():
    cfg = OptimConfig(lr=1e-2, warmup_steps=5, schedule="one_cycle", betas=(0.95, 0.999))
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(parameter_groups(model, 0.0), cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=20)
    lrs, beta1 = [], []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        beta1.append(optimizer.param_groups[0]["betas"][0])
        optimizer.step()
        scheduler.step()
    peak = max(range(20), key=lrs.__getitem__)
    assert lrs[peak] == pytest.approx(1e-2)
    assert 4 <= peak <= 5  # pct_start = W / T
    assert lrs[0] == pytest.approx(1e-2 / 25)  # OneCycleLR's div_factor
    assert min(beta1) == pytest.approx(0.85) and max(beta1) == pytest.approx(0.95)


def test_weight_decay_only_on_matrices():
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    model.register_parameter("blend", nn.Parameter(torch.ones(2)))  # a per-head blend weight
    frozen = nn.Parameter(torch.ones(4, 4), requires_grad=False)
    model.register_parameter("frozen", frozen)
    decay, no_decay = parameter_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {p.shape for p in decay["params"]} == {torch.Size([5, 4]), torch.Size([4, 4])}
    assert len(decay["params"]) == 2  # embedding + linear weight, not the frozen matrix
    assert len(no_decay["params"]) == 4  # linear bias, norm weight and bias, blend


def test_adam_and_adamw_take_the_configured_hyper_parameters():
    params = [nn.Parameter(torch.zeros(2, 2))]
    adam = build_optimizer(params, OptimConfig(name="adam", lr=2.5e-4, eps=1e-8))
    assert isinstance(adam, torch.optim.Adam) and not isinstance(adam, torch.optim.AdamW)
    adamw = build_optimizer(params, OptimConfig(betas=(0.8, 0.9), eps=1e-6))
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.param_groups[0]["betas"] == (0.8, 0.9) and adamw.param_groups[0]["eps"] == 1e-6


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=0.0), "lr must be > 0"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(min_lr_ratio=1.5), "min_lr_ratio"),
        (dict(total_steps=0), "total_steps"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OptimConfig(**kwargs)


def test_scheduler_needs_positive_steps():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="positive number of steps"):
        build_scheduler(optimizer, OptimConfig(), total_steps=0)


def test_one_cycle_linear_is_the_released_lra_scheduler():
    """run_tasks.py of the released LRA code: OneCycleLR(max_lr=lr, pct_start=warmup/steps,
    anneal_strategy="linear", total_steps=steps) with torch's defaults, on AdamW."""
    steps, warmup, lr = 50, 10, 1e-4
    cfg = OptimConfig(lr=lr, warmup_steps=warmup, schedule="one_cycle", anneal="linear")
    ours = build_optimizer(parameter_groups(nn.Linear(2, 2), 0.0), cfg)
    our_schedule = build_scheduler(ours, cfg, total_steps=steps)
    released = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-6)
    released_schedule = torch.optim.lr_scheduler.OneCycleLR(
        released, max_lr=lr, pct_start=warmup / steps, anneal_strategy="linear", total_steps=steps
    )
    used = []
    for _ in range(steps):
        a, b = ours.param_groups[0], released.param_groups[0]
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12, abs=0)
        assert a["betas"] == pytest.approx(b["betas"])
        used.append(a["lr"])
        for optimizer, schedule in ((ours, our_schedule), (released, released_schedule)):
            optimizer.step()
            schedule.step()
    assert used[0] == pytest.approx(lr / 25) and max(used) == pytest.approx(lr)
    assert used[-1] == pytest.approx(lr / 25 / 1e4)  # the last step's


def test_unknown_anneal_is_refused():
    with pytest.raises(ValueError, match="anneal"):
        OptimConfig(schedule="one_cycle", anneal="cosine")
