"""SIGTERM and SIGINT stop a run with a resumable checkpoint, one line and exit 128 + signal.

A real ``cli.py fit`` subprocess is signalled once its progress lines pass step 3; the command
it prints resumes the run (in the same TensorBoard folder) to the weights of a run that was
never interrupted. In-process runs (a callback sends the signal to this process at a chosen
step) cover a signal on a step that a validation follows, and one during ``test``.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from cli import build_cli, main
from tests.app_data import write_listops
from tests.test_cli import LISTOPS, ROOT, SMALL_LRA

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

STEPS = 40  # 4 steps per epoch (8 rows, batch 2): 10 epochs


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models: threads only contend (4x slower on a loaded 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_listops(root)
    return root


def fit_args(data_root: Path, *extra: str) -> list[str]:
    # No dropout: two runs with one seed compute the same numbers.
    return ["fit", "--config", str(LISTOPS), "--data.init_args.data_dir", str(data_root),
            *SMALL_LRA, "--data.init_args.max_length", "32", "--data.init_args.batch_size", "2",
            "--model.init_args.encoder.dropout", "0",
            "--model.init_args.encoder.attention.dropout", "0",
            "--model.init_args.optim.warmup_steps", "2", "--trainer.max_steps", str(STEPS),
            "--trainer.val_check_interval", "1.0", "--trainer.limit_val_batches", "1",
            "--trainer.log_every_n_steps", "1", "--seed_everything", "7", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory):
    """The run nobody interrupted: its final weights."""
    folder = tmp_path_factory.mktemp("straight")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        cli = build_cli(fit_args(data_root))
    finally:
        os.chdir(cwd)
    assert cli.trainer.global_step == STEPS
    return {k: v.clone() for k, v in cli.model.state_dict().items()}


def assert_same_weights(state: dict, reference: dict) -> None:
    assert state.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.allclose(state[name], value, atol=1e-6), name


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_fit_writes_a_checkpoint_exits_128_plus_n_and_resumes_exactly(
    signum, data_root, straight, tmp_path, monkeypatch
):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *fit_args(data_root)],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    for line in child.stdout:
        if " step 3/" in line:
            child.send_signal(signum)
            break
    out, err = child.communicate(timeout=120)
    assert child.returncode == 128 + signum, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert last.startswith(f"fit stopped by {name} after step "), last
    step = int(last.split("after step ")[1].split(";")[0])
    assert 3 <= step < STEPS
    version = tmp_path / "logs" / "lra" / "listops" / "fmm2_band5" / "version_0"
    checkpoint = version / "checkpoints" / "interrupted.ckpt"
    assert f"resumable checkpoint {checkpoint.relative_to(tmp_path)};" in last
    assert torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"] == step

    # The printed command resumes it: same folder (TensorBoard curves continue), same weights.
    command = shlex.split(last.split("resume: ", 1)[1])
    assert command[:3] == ["python", "cli.py", "fit"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    resumed = build_cli(command[2:])
    assert resumed.trainer.global_step == STEPS
    assert Path(resumed.trainer.log_dir).resolve() == version
    assert sorted(p.name for p in version.parent.iterdir()) == ["latest", "version_0"]
    assert_same_weights(resumed.model.state_dict(), straight)


class SignalAt(Callback):
    """Sends ``signum`` to this process at the end of training step ``step`` (or of the first
    test batch), as a scheduler would."""

    def __init__(self, signum: int = 15, step: int = 0) -> None:
        self.signum, self.step = signum, step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)

    def on_test_batch_end(self, trainer, *args, **kwargs) -> None:
        os.kill(os.getpid(), self.signum)


def test_a_signal_on_a_step_a_validation_follows_stops_after_that_validation(
    data_root, straight, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    # Step 8 ends epoch 1: its validation runs, then the stop (a resume must not skip it).
    args = fit_args(data_root, "--trainer.callbacks+=tests.test_cli_signals.SignalAt",
                    "--trainer.callbacks.step", "8")  # fmt: skip
    assert main(args) == 128 + signal.SIGTERM
    out, err = capsys.readouterr()
    assert "fit stopped by SIGTERM after step 8; resumable checkpoint" in err
    assert "validation at step 8 |" in out
    checkpoint = next((tmp_path / "logs").rglob("interrupted.ckpt"))
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert state["global_step"] == 8
    resumed = build_cli(fit_args(data_root, "--ckpt_path", str(checkpoint)))
    assert resumed.trainer.global_step == STEPS
    assert_same_weights(resumed.model.state_dict(), straight)


def test_a_signal_during_test_stops_after_the_batch_and_writes_nothing(
    data_root, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    args = fit_args(data_root, "--trainer.callbacks+=tests.test_cli_signals.SignalAt",
                    "--trainer.callbacks.signum", "2", "--ckpt_path", "none")  # fmt: skip
    args[0] = "test"
    assert main(args) == 128 + signal.SIGINT
    err = capsys.readouterr().err
    assert "test stopped by SIGINT; nothing was written" in err
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("*.ckpt"))
