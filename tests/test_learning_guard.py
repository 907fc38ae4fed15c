"""A guard on learning: the ListOps paper config, at the paper's learning rate, must learn.

With GPT-2's N(0, 0.02) init and a mean over real tokens only, the paper configs sat at the
majority baseline of LRA-size ListOps for all 5,000 steps on a GPU. Training that long does
not fit a CPU test; fitting one fixed batch does, and shows the same defect: with the
released init and pooling the loss falls about twice as fast, and the old settings stay above
the bar. The model, its blend and its optimiser come from the config file itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser

from data_modules.lra.listops import VOCAB, generate_examples, tokenize
from fmmformer_pl.models import EncoderConfig, SequenceClassifier
from fmmformer_pl.tasks.optim import OptimConfig, build_optimizer, parameter_groups

ROOT = Path(__file__).resolve().parents[1]
LENGTH, BATCH, STEPS = 256, 8, 40
# Loss drop over the 40 steps, measured: released settings 0.45-0.48 (softmax and fmm2),
# N(0, 0.02) init with the real-token mean 0.20-0.22.
MIN_DROP = 0.33


def _paper(variant: str, **encoder_changes) -> tuple[EncoderConfig, OptimConfig]:
    spec = yaml.safe_load((ROOT / f"configs/lra/listops/{variant}.yaml").read_text())
    init = spec["model"]["init_args"]
    parser = ArgumentParser()
    parser.add_argument("--encoder", type=EncoderConfig)
    parser.add_argument("--optim", type=OptimConfig)
    parsed = parser.parse_object(
        {"encoder": {**init["encoder"], **encoder_changes}, "optim": init["optim"]}
    )
    built = parser.instantiate_classes(parsed)
    return built.encoder, built.optim


@pytest.fixture(scope="module")
def batch():
    trees = generate_examples(BATCH, min_length=LENGTH // 4, max_length=LENGTH, seed=1)
    ids = torch.zeros(BATCH, LENGTH, dtype=torch.long)
    for row, (source, _) in enumerate(trees):
        tokens = tokenize(source)
        ids[row, : len(tokens)] = torch.tensor(tokens)
    return ids, ids == 0, torch.tensor([target for _, target in trees])


def _loss_drop(encoder: EncoderConfig, optim: OptimConfig, batch) -> float:
    ids, padding, labels = batch
    torch.manual_seed(0)
    model = SequenceClassifier(len(VOCAB), 10, LENGTH, encoder)
    optimizer = build_optimizer(parameter_groups(model, optim.weight_decay), optim)  # lr 1e-4
    losses = []
    for _ in range(STEPS):
        loss = torch.nn.functional.cross_entropy(model(ids, padding), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses[0] - losses[-1]


def test_the_paper_fmm_config_learns_at_the_paper_learning_rate(batch):
    encoder, optim = _paper("fmm2_band5")
    assert optim.lr == 1e-4
    assert _loss_drop(encoder, optim, batch) > MIN_DROP


def test_the_old_init_and_pooling_fall_short_of_the_bar(batch):
    """The guard's own check: the settings that did not learn on the GPU fail it."""
    encoder, optim = _paper("fmm2_band5", init="normal", pooling="mean")
    assert _loss_drop(encoder, optim, batch) < MIN_DROP
