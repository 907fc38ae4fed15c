"""SIGTERM and SIGINT stop a run with a resumable checkpoint, one line and exit 128 + signal;
the periodic checkpoint; what TensorBoard receives.

A real ``cli.py fit`` subprocess is signalled once its progress lines pass step 3; the command
it prints resumes the run (in the same TensorBoard folder) to the weights of a run that was
never interrupted. In-process runs (a callback sends the signal to this process at a chosen
step) cover a signal on a step that a validation follows, and one during ``test``. The
uninterrupted run also keeps a periodic checkpoint (one file), from which a run resumes to
the same weights, and its TensorBoard folder holds hp_metric, the config and attention maps.
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
            "--trainer.val_check_interval", "1.0", "--trainer.check_val_every_n_epoch", "1",
            "--trainer.limit_val_batches", "1",
            "--trainer.log_every_n_steps", "1", "--seed_everything", "7", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def straight_run(data_root, tmp_path_factory):
    """The run nobody interrupted (a periodic checkpoint every 6 steps): its final weights and
    its log folder."""
    folder = tmp_path_factory.mktemp("straight")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        cli = build_cli(fit_args(data_root, "--periodic_checkpoint.steps", "6"))
    finally:
        os.chdir(cwd)
    assert cli.trainer.global_step == STEPS
    weights = {k: v.clone() for k, v in cli.model.state_dict().items()}
    return weights, folder / cli.trainer.log_dir


@pytest.fixture(scope="module")
def straight(straight_run):
    return straight_run[0]


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
    assert "Traceback" not in err and "💡" not in err  # no advertising either
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


def test_the_periodic_checkpoint_is_one_file_and_resumes_exactly(
    data_root, straight_run, tmp_path, monkeypatch
):
    weights, log_dir = straight_run
    periodic = sorted(p.name for p in (log_dir / "checkpoints").glob("periodic-*"))
    assert periodic == ["periodic-step=36.ckpt"]  # every 6 steps, only the newest kept
    monkeypatch.chdir(tmp_path)
    checkpoint = log_dir / "checkpoints" / "periodic-step=36.ckpt"
    resumed = build_cli(fit_args(data_root, "--ckpt_path", str(checkpoint)))
    assert resumed.trainer.global_step == STEPS
    assert_same_weights(resumed.model.state_dict(), weights)


def test_tensorboard_gets_the_best_metric_the_config_and_attention_maps(straight_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, log_dir = straight_run
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    scalars = {t: [(e.step, e.value) for e in events.Scalars(t)] for t in events.Tags()["scalars"]}
    accuracy = [value for _, value in scalars["val/acc"]]
    best = [value for _, value in scalars["hp_metric"]]  # one per validation: the best so far
    assert best == pytest.approx([max(accuracy[: i + 1]) for i in range(len(accuracy))])
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "class_path: fmmformer_pl.tasks.ClassificationTask" in config
    images = events.Tags()["images"]
    for name in ("near_field", "far_field", "blend"):
        assert f"attention/layer0_head0/{name}" in images
    blend = events.Images("attention/layer0_head0/blend")
    assert len(blend) == len(accuracy) and (blend[0].width, blend[0].height) == (32, 32)


def test_slurm_requeue_on_sigusr1_still_works_beside_the_stop_handler(tmp_path, monkeypatch):
    # Lightning keeps SIGUSR1 (SLURM's warning before the time limit): the HPC checkpoint is
    # written and the job requeued while StopOnSignal holds SIGTERM and SIGINT.
    from lightning.pytorch import Trainer

    from fmmformer_pl.tasks.signals import StopOnSignal
    from tests.test_multinode import _Batches, _fake_bin, _PreemptAt, _tiny_task

    monkeypatch.setenv("PATH", f"{_fake_bin(tmp_path)}:{os.environ['PATH']}")
    slurm = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1",
             "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "fmmtest", "SLURM_NODELIST": "127.0.0.1",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}  # fmt: skip
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    previous = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)}
    stop = StopOnSignal()
    try:
        trainer = Trainer(accelerator="cpu", devices=1, max_steps=8, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, default_root_dir=tmp_path / "run",
                          callbacks=[_PreemptAt(3), stop])  # fmt: skip
        trainer.fit(_tiny_task(), torch.utils.data.DataLoader(_Batches(), batch_size=8))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    hpc = tmp_path / "run" / "hpc_ckpt_1.ckpt"
    assert torch.load(hpc, map_location="cpu", weights_only=False)["global_step"] == 3
    assert (tmp_path / "scontrol.args").read_text().splitlines() == ["requeue", "4242"]
    assert stop.received is None  # SIGUSR1 is not a stop signal
