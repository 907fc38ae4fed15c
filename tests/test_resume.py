"""Resuming from a MID-EPOCH checkpoint continues exactly where the run stopped.

Several batches per epoch, the run stopped inside an epoch (the second one, so the epoch's
shuffle seed matters too) and resumed: the resumed run must end with the weights and validation
metrics of the run that was never interrupted. Before the train loaders were stateful, a resumed
run drew a fresh permutation (LRA) or restarted the stream at window 0 (WikiText).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cli import build_cli
from tests.app_data import make_data_root
from tests.test_cli import LISTOPS, SMALL_LM, SMALL_LRA, WIKITEXT

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_data_root(tmp_path_factory.mktemp("data"))


def listops_args(data_root: Path, workers: int) -> list[str]:
    # 8 train rows in batches of 2: 4 steps per epoch; no dropout, so two runs compute alike.
    return ["--config", str(LISTOPS), "--data.init_args.data_dir", str(data_root), *SMALL_LRA,
            "--data.init_args.max_length", "32", "--data.init_args.batch_size", "2",
            "--data.init_args.num_workers", str(workers),
            "--model.init_args.encoder.dropout", "0",
            "--model.init_args.encoder.attention.dropout", "0"]  # fmt: skip


def wikitext_args(data_root: Path, workers: int) -> list[str]:
    return ["--config", str(WIKITEXT), "--data.init_args.data_dir", str(data_root), *SMALL_LM,
            "--data.init_args.num_workers", str(workers),
            "--model.init_args.decoder.dropout", "0",
            "--model.init_args.decoder.attention.dropout", "0"]  # fmt: skip


def fit(args: list[str], folder: Path, monkeypatch, *extra: str):
    folder.mkdir()
    monkeypatch.chdir(folder)  # logs/ and checkpoints land here
    return build_cli(["fit", *args, "--seed_everything", "7", "--trainer.log_every_n_steps", "1",
                      "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "1.0",
                      "--trainer.check_val_every_n_epoch", "1", *extra])  # fmt: skip


def assert_same_run(straight, resumed) -> None:
    assert resumed.trainer.global_step == straight.trainer.global_step
    assert resumed.trainer.current_epoch == straight.trainer.current_epoch
    straight_state, resumed_state = straight.model.state_dict(), resumed.model.state_dict()
    for name, value in straight_state.items():
        assert torch.allclose(value, resumed_state[name], atol=1e-6), name
    for key, value in straight.trainer.callback_metrics.items():
        if "tokens_per_sec" not in key:  # a timing, not a result
            assert float(resumed.trainer.callback_metrics[key]) == pytest.approx(
                float(value), abs=1e-6
            ), key


@pytest.mark.parametrize("task", ["listops", "wikitext"])
@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "worker"])
def test_resume_from_mid_epoch_equals_the_uninterrupted_run(
    task, workers, data_root, tmp_path, monkeypatch
):
    args = (listops_args if task == "listops" else wikitext_args)(data_root, workers)
    # No optim.total_steps and a finite max_epochs (as the quick start): the schedule's length
    # then comes from trainer.estimated_stepping_batches, which builds the train loader before
    # the checkpoint is restored (Lightning #20550): the path on which the loader state was lost.
    args += ["--model.init_args.optim.warmup_steps", "2", "--trainer.max_epochs", "10"]
    probe = fit(args, tmp_path / "probe", monkeypatch, "--trainer.max_steps", "1")
    per_epoch = probe.trainer.num_training_batches
    assert per_epoch >= 3, "the fixture must give several batches per epoch"
    # Stopped inside the second epoch; both end with the validation at the end of that epoch.
    stop, end = per_epoch + 1, 2 * per_epoch

    # The uninterrupted run also saves a checkpoint right after step `stop`, inside the epoch
    # (the configs' own callbacks save at validation, i.e. at epoch ends).
    saved = tmp_path / "mid_epoch"
    straight = fit(args, tmp_path / "straight", monkeypatch, "--trainer.max_steps", str(end),
                   "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                   "--trainer.callbacks.dirpath", str(saved),
                   "--trainer.callbacks.every_n_train_steps", str(stop),
                   "--trainer.callbacks.save_top_k", "-1")  # fmt: skip
    checkpoint = str(saved / f"epoch=1-step={stop}.ckpt")
    resumed = fit(args, tmp_path / "resumed", monkeypatch, "--trainer.max_steps", str(end),
                  "--ckpt_path", checkpoint)  # fmt: skip
    assert_same_run(straight, resumed)


@pytest.mark.parametrize("task", ["listops", "wikitext"])
def test_resume_from_an_epoch_end_checkpoint_equals_the_uninterrupted_run(
    task, data_root, tmp_path, monkeypatch
):
    # The configs' own checkpoints are written at validation, i.e. at epoch ends. Lightning's
    # set_epoch runs one ahead after such a resume; the sampler must shuffle by current_epoch.
    args = (listops_args if task == "listops" else wikitext_args)(data_root, 0)
    args += ["--model.init_args.optim.total_steps", "20", "--model.init_args.optim.warmup_steps",
             "2"]  # fmt: skip
    probe = fit(args, tmp_path / "probe", monkeypatch, "--trainer.max_steps", "1")
    per_epoch = probe.trainer.num_training_batches
    end = 3 * per_epoch  # three epochs; the checkpoint is the one at the end of the first
    saved = tmp_path / "epoch_end"
    straight = fit(args, tmp_path / "straight", monkeypatch, "--trainer.max_steps", str(end),
                   "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                   "--trainer.callbacks.dirpath", str(saved),
                   "--trainer.callbacks.save_top_k", "-1")  # fmt: skip
    checkpoint = str(saved / f"epoch=0-step={per_epoch}.ckpt")
    resumed = fit(args, tmp_path / "resumed", monkeypatch, "--trainer.max_steps", str(end),
                  "--ckpt_path", checkpoint)  # fmt: skip
    assert_same_run(straight, resumed)


def test_ddp_resume_from_mid_epoch_equals_the_uninterrupted_run(data_root, tmp_path):
    # Two CPU processes (gloo): each rank reads its own shard of the epoch's permutation, and
    # the resumed ranks must continue their shards where they stopped.
    import os
    import subprocess
    import sys

    from tests.test_cli import ROOT, small_listops

    # 8 rows, batch 1 per rank, 2 ranks: 4 steps per epoch; stop inside epoch 1, end with it.
    stop, end = 5, 8
    common = [sys.executable, str(ROOT / "cli.py"), "fit",
              *small_listops(data_root, "--data.init_args.batch_size", "1",
                             "--trainer.devices", "2", "--trainer.strategy", "ddp",
                             "--trainer.max_epochs", "10", "--trainer.max_steps", str(end),
                             "--model.init_args.optim.warmup_steps", "2", "--seed_everything", "7")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    finals = {}
    for name in ("straight", "resumed"):  # in order: the resumed run needs the straight run's file
        folder = tmp_path / name
        every_step = ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                      "--trainer.callbacks.dirpath", str(folder / "steps"),
                      "--trainer.callbacks.every_n_train_steps", "1",
                      "--trainer.callbacks.save_top_k", "-1"]  # fmt: skip
        if name == "resumed":
            every_step += [
                "--ckpt_path",
                str(tmp_path / "straight" / "steps" / f"epoch=1-step={stop}.ckpt"),
            ]
        folder.mkdir()
        result = subprocess.run([*common, *every_step], cwd=folder, capture_output=True,
                                text=True, timeout=300, env=env)  # fmt: skip
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        final = folder / "steps" / f"epoch=1-step={end}.ckpt"
        finals[name] = torch.load(final, map_location="cpu", weights_only=False)
    assert finals["resumed"]["global_step"] == finals["straight"]["global_step"] == end
    for key, value in finals["straight"]["state_dict"].items():
        assert torch.allclose(finals["resumed"]["state_dict"][key], value, atol=1e-6), key
