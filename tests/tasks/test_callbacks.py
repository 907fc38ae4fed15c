"""The monitoring callbacks against hand-computed values, with stand-in trainers and modules."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fmmformer_pl.attention.blend import paper_scheme
from fmmformer_pl.models.config import EncoderConfig
from fmmformer_pl.tasks import BlendWeightMonitor, ClassificationTask, MajorityBaseline
from fmmformer_pl.tasks import callbacks as callbacks_module
from fmmformer_pl.tasks.callbacks import TrainingMonitor


class Recorder:
    """Stands in for a LightningModule's ``log`` and a logger's ``log_metrics``."""

    def __init__(self) -> None:
        self.logged: dict[str, list[float]] = {}
        self.device = torch.device("cpu")

    def log(self, name, value, **kwargs) -> None:
        self.logged.setdefault(name, []).append(float(value))

    def log_metrics(self, metrics, step) -> None:
        for name, value in metrics.items():
            self.log(name, value)


def fake_trainer(**overrides) -> SimpleNamespace:
    defaults = dict(log_every_n_steps=2, world_size=2, sanity_checking=False, is_global_zero=True,
                    global_step=4, loggers=[], optimizers=[])  # fmt: skip
    return SimpleNamespace(**{**defaults, **overrides})


def test_tokens_per_second_over_the_window_summed_over_processes(monkeypatch):
    clock = iter([10.0, 10.5, 11.0, 12.0, 12.0, 12.25])  # (start, end) of three batches
    monkeypatch.setattr(callbacks_module.time, "perf_counter", lambda: next(clock))
    monitor, module, trainer = TrainingMonitor(), Recorder(), fake_trainer()
    batch = {"input_ids": torch.zeros(4, 8, dtype=torch.long), "label": torch.zeros(4)}
    for index in range(3):
        monitor.on_train_batch_start(trainer, module, batch, index)
        monitor.on_train_batch_end(trainer, module, None, batch, index)
    tokens = 4 * 8 * 2  # rows x positions x processes
    assert module.logged["train/tokens_per_sec"] == pytest.approx([
        tokens / 0.5,  # the first batch alone
        2 * tokens / 2.0,  # batches 1-2: from 10.0 to 12.0
        2 * tokens / 1.25,  # window of 2 (log_every_n_steps): batches 2-3, 11.0 to 12.25
    ])  # fmt: skip
    assert "train/peak_memory_gib" not in module.logged  # CPU


def test_blend_weights_are_logged_per_head_and_as_the_mean_per_channel():
    torch.manual_seed(0)
    # The Text scheme: a fixed scalar near weight, a learnable per-channel far weight.
    encoder = EncoderConfig(dim=32, depth=2, num_heads=2, ffn_dim=32,
                            attention=paper_scheme("lra_text_fmm_1kernel"))  # fmt: skip
    task = ClassificationTask(10, 2, 8, encoder)
    with torch.no_grad():
        for name, param in task.named_parameters():
            if "blend" in name:
                param.copy_(torch.randn_like(param))
    monitor, logger = BlendWeightMonitor(max_elements=16), Recorder()
    monitor._log(fake_trainer(loggers=[logger]), task)

    weights = monitor.blend_weights(task)
    assert len(weights) == 4  # two layers x (near, far)
    for name, weight in weights.items():
        if weight.numel() == 1:
            assert logger.logged[f"blend/{name}"] == [pytest.approx(float(weight))]
        else:  # 32 channels > max_elements
            assert weight.numel() == 32
            assert logger.logged[f"blend/{name}/mean"] == [pytest.approx(float(weight.mean()))]


def test_majority_baseline_counts_train_labels_and_scores_the_validation_split(capsys):
    baseline = MajorityBaseline()
    module = SimpleNamespace(num_classes=3, device=torch.device("cpu"))
    for labels in ([2, 2, 0], [2, 1]):
        baseline.on_train_batch_end(None, module, None, {"label": torch.tensor(labels)}, 0)
    baseline.on_validation_epoch_start(None, module)
    baseline.on_validation_batch_end(None, module, None, {"label": torch.tensor([2, 0, 0, 1])}, 0)

    # The counts survive a checkpoint.
    restored = MajorityBaseline()
    restored.load_state_dict(baseline.state_dict())
    restored.val_counts = baseline.val_counts

    # The counts are reduced on the strategy's device, not the module's: by on_fit_end the
    # module may be back on the CPU while NCCL needs CUDA tensors ("meta" stands in for that).
    def reduce(tensor, reduce_op):
        assert tensor.device == strategy.root_device and reduce_op == "sum"
        return tensor

    strategy = SimpleNamespace(reduce=reduce, root_device=torch.device("cpu"))
    trainer = fake_trainer(callback_metrics={"val/acc": torch.tensor(0.75)}, strategy=strategy)
    restored.on_fit_end(trainer, SimpleNamespace(num_classes=3, device=torch.device("meta")))
    assert restored.result == (0.75, 0.25, 2)  # class 2 is 1 of the 4 validation labels
    assert "majority-class baseline 0.2500 (always class 2" in capsys.readouterr().out


def test_majority_baseline_leaves_unlabelled_tasks_alone():
    baseline = MajorityBaseline()
    module = SimpleNamespace(device=torch.device("cpu"))  # a language model: no num_classes
    baseline.on_train_batch_end(None, module, None, {"input_ids": torch.zeros(2, 3)}, 0)
    baseline.on_fit_end(fake_trainer(callback_metrics={}), module)
    assert baseline.result is None and baseline.train_counts is None
