"""The released LM's schedule: linear warm-up, then a cosine over all steps (warm-up included)."""

import math

import pytest

from fmmformer_pl.tasks.optim import lr_factor


@pytest.mark.parametrize("step", [0, 1, 99, 100, 101, 500, 999, 1000, 1500])
def test_cosine_total_is_transformer_xl_cosine_annealing(step):
    warmup, total = 100, 1000
    if step < warmup:
        expected = step / warmup
    else:  # CosineAnnealingLR(T_max=total, eta_min=0) at the global step
        expected = 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    assert lr_factor(step, warmup, total, "cosine_total") == pytest.approx(expected)


def test_the_cosine_does_not_start_at_the_end_of_warm_up():
    assert lr_factor(100, 100, 1000, "cosine") == 1.0
    assert lr_factor(100, 100, 1000, "cosine_total") < 0.98
