"""Multi-node launch paths, simulated on one CPU machine.

- Two torchrun agents (``scripts/torchrun_multinode.sh``, c10d rendezvous on 127.0.0.1, gloo)
  play two nodes of one process each and train a tiny generated-ListOps FMMformer through
  ``cli.py fit`` with ``configs/strategies/multinode.yaml``. Each rank records what it saw
  (``RankRecorder``) and which checkpoint writes it made (``RecordingCheckpointIO``); the test
  checks that both ranks trained on different data to identical weights, that the validation
  metrics are the sample-weighted means over the ranks, and that rank 0 alone wrote one
  checkpoint.
- ``scripts/slurm.sbatch`` runs under a fake ``srun``: the arguments it builds from SLURM's
  variables, and which checkpoint it resumes from.
- Lightning's SLURM requeue path, which the sbatch script relies on: SIGUSR1 writes
  ``hpc_ckpt_1.ckpt`` into ``default_root_dir`` and calls ``scontrol requeue``; a restarted fit
  with ``ckpt_path=None`` resumes from it, and ``ckpt_path="last"`` does not look at it.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN_SCRIPT = ROOT / "scripts" / "torchrun_multinode.sh"
SBATCH_SCRIPT = ROOT / "scripts" / "slurm.sbatch"
MULTINODE_CONFIG = ROOT / "configs" / "strategies" / "multinode.yaml"


# --------------------------------------------------------------------------------------------
# Recorders loaded by class path inside the training processes
# --------------------------------------------------------------------------------------------


def _param_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha1()
    for name, param in sorted(module.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _destroy_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class RankRecorder(Callback):
    """Writes ``rank<global_rank>.json`` into ``out_dir`` at the end of fit: the ranks and node
    this process had, the training batches it saw, its weights before and after, and, for the
    last validation, each metric's LOCAL value (before the cross-rank reduction) and the value
    Lightning reported (after it)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.record: dict[str, Any] = {"train_batches": [], "local": {}, "reported": {}}
        # Lightning leaves the process group up after fit; a gloo group still alive when the
        # interpreter exits sometimes aborts it ("terminate called without an active
        # exception", SIGABRT) after a successful run. cli.py should destroy the group on the
        # way out (reported); until it does, this keeps the test about what it tests.
        atexit.register(_destroy_process_group)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.record["initial_weights"] = _param_digest(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        ids = batch["input_ids"].cpu().contiguous().numpy().tobytes()
        self.record["train_batches"].append(hashlib.sha1(ids).hexdigest())

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        # Lightning reduces across ranks only after this hook: what it holds now is local.
        # val/loss (a tensor logged with sync_dist=True): a running sum of value * batch_size.
        result = trainer._results["validation_step.val/loss"]
        self.record["local"]["val/loss"] = {
            "sum": float(result.value),
            "count": float(result.cumulated_batch_size),
        }
        # val/acc (a torchmetrics object; it syncs its own states): correct / total.
        accuracy = pl_module.val_acc
        correct = float(accuracy.tp.sum())
        self.record["local"]["val/acc"] = {
            "sum": correct,
            "count": correct + float(accuracy.fn.sum()),
        }

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            for key in ("val/loss", "val/acc"):
                self.record["reported"][key] = float(trainer.callback_metrics[key])

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.record.update(
            global_rank=trainer.global_rank,
            local_rank=trainer.local_rank,
            node_rank=trainer.node_rank,
            world_size=trainer.world_size,
            num_nodes=trainer.num_nodes,
            strategy=type(trainer.strategy).__name__,
            backend=torch.distributed.get_backend(),
            global_step=trainer.global_step,
            final_weights=_param_digest(pl_module),
        )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.record, indent=1))


class RecordingCheckpointIO(TorchCheckpointIO):
    """Saves as usual and appends ``<path>`` to ``writes_rank<RANK>.txt`` in ``log_dir``."""

    def __init__(self, log_dir: str) -> None:
        super().__init__()
        self.log_dir = Path(log_dir)

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        super().save_checkpoint(checkpoint, path, storage_options)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        rank = os.environ.get("RANK", "?")
        with open(self.log_dir / f"writes_rank{rank}.txt", "a") as f:
            f.write(f"{path}\n")


# --------------------------------------------------------------------------------------------
# Two simulated nodes
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tiny_config(tmp_path: Path) -> Path:
    """A 1-layer FMMformer on 48 generated ListOps trees: 4 steps of 2 x 4 samples, one
    validation of 2 x 2 batches of 4 (16 trees), one checkpoint."""
    config = tmp_path / "tiny_listops.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            seed_everything: 1234
            model:
              class_path: fmmformer_pl.tasks.ClassificationTask
              init_args:
                encoder:
                  dim: 16
                  depth: 1
                  num_heads: 2
                  ffn_dim: 32
                  dropout: 0.0
                  attention: {{kind: fmm, bandwidth: 3, backend: reference}}
                optim: {{lr: 0.05, schedule: constant}}
            data:
              class_path: data_modules.lra.ListOpsDataModule
              init_args:
                data_dir: {tmp_path / "listops"}
                batch_size: 4
                max_length: 64
                generate: true
                generate_train: 32
                generate_val: 16
                generate_test: 8
                generate_min_length: 10
                generate_max_length: 60
                seed: 7
            trainer:
              max_steps: 4
              log_every_n_steps: 1
              num_sanity_val_steps: 0
              enable_model_summary: false
              default_root_dir: {tmp_path / "run"}
              logger:
                class_path: lightning.pytorch.loggers.CSVLogger
                init_args: {{save_dir: {tmp_path / "run"}}}
              plugins:
                - class_path: tests.test_multinode.RecordingCheckpointIO
                  init_args: {{log_dir: {tmp_path / "writes"}}}
              callbacks:
                - class_path: tests.test_multinode.RankRecorder
                  init_args: {{out_dir: {tmp_path / "ranks"}}}
                - class_path: lightning.pytorch.callbacks.ModelCheckpoint
                  init_args: {{dirpath: {tmp_path / "ckpt"}, save_top_k: 1}}
            """
        )
    )
    return config


def test_two_simulated_nodes_train_reduce_metrics_and_write_one_checkpoint(tmp_path):
    config = _tiny_config(tmp_path)
    port = _free_port()
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "NNODES": "2",
        "NPROC_PER_NODE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RDZV_ID": f"test-{port}",
        "ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        # c10d binds the store on the agent that wins the port; the loopback device is the one
        # network both "nodes" share.
        "GLOO_SOCKET_IFNAME": "lo",
    }
    command = [
        "bash", str(TORCHRUN_SCRIPT), "fit",
        "--config", str(config), "--config", str(MULTINODE_CONFIG),
    ]  # fmt: skip
    start = time.monotonic()
    # Output to files, not pipes: an agent blocked on a full pipe that nobody reads stalls the
    # other rank in its next collective.
    logs = [tmp_path / f"agent{i}.log" for i in range(2)]
    agents = []
    for log in logs:
        with open(log, "w") as out:
            agents.append(
                subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
            )
    try:
        for agent in agents:
            agent.wait(timeout=200)
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    elapsed = time.monotonic() - start
    for agent, log in zip(agents, logs, strict=True):
        assert agent.returncode == 0, log.read_text()[-12000:]

    records = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    # Two nodes of one process each, under DDP on gloo.
    for rank, record in enumerate(records):
        assert record["global_rank"] == rank
        assert record["local_rank"] == 0
        assert record["world_size"] == 2
        assert record["num_nodes"] == 2
        assert record["strategy"] == "DDPStrategy"
        assert record["backend"] == "gloo"
    assert sorted(r["node_rank"] for r in records) == [0, 1]

    # Both trained: 4 optimiser steps each, on disjoint shards of the data.
    for record in records:
        assert record["global_step"] == 4
        assert len(record["train_batches"]) == 4
    assert not set(records[0]["train_batches"]) & set(records[1]["train_batches"])
    # Gradients were all-reduced: different data, same weights, and not the initial ones.
    assert records[0]["initial_weights"] == records[1]["initial_weights"]
    assert records[0]["final_weights"] == records[1]["final_weights"]
    assert records[0]["final_weights"] != records[0]["initial_weights"]

    # Metrics are reduced across ranks: what each rank reports is the sample-weighted mean of
    # the two local values, and the local values differ (so "reported == local" would fail).
    for key in ("val/loss", "val/acc"):
        local = [r["local"][key] for r in records]
        means = [part["sum"] / part["count"] for part in local]
        expected = sum(part["sum"] for part in local) / sum(part["count"] for part in local)
        for record in records:
            assert record["reported"][key] == pytest.approx(expected, rel=1e-5, abs=1e-6), key
        if key == "val/loss":
            assert abs(means[0] - means[1]) > 1e-4, "ranks saw the same validation data"
    # 16 validation trees, 8 per rank.
    assert [r["local"]["val/acc"]["count"] for r in records] == [8.0, 8.0]

    # Exactly one checkpoint, written by rank 0 only.
    checkpoints = sorted((tmp_path / "ckpt").iterdir())
    assert [c.name for c in checkpoints] == ["epoch=0-step=4.ckpt"]
    writes = sorted(p.name for p in (tmp_path / "writes").iterdir())
    assert writes == ["writes_rank0.txt"]
    assert (tmp_path / "writes" / "writes_rank0.txt").read_text().splitlines() == [
        str(checkpoints[0])
    ]
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=False)
    assert state["global_step"] == 4
    print(f"two simulated nodes: {elapsed:.1f} s")


# --------------------------------------------------------------------------------------------
# SLURM: the sbatch script under a fake srun
# --------------------------------------------------------------------------------------------


def _fake_bin(tmp_path: Path) -> Path:
    """``srun`` and ``scontrol`` that record their arguments, one per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("srun", "scontrol"):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > "{tmp_path}/{name}.args"\n')
        tool.chmod(0o755)
    return bin_dir


def _run_sbatch(tmp_path: Path, extra_env: dict[str, str], *args: str):
    env = {
        "PATH": f"{_fake_bin(tmp_path)}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "SLURM_JOB_ID": "777",
        "SLURM_JOB_NAME": "fmm",
        "SLURM_NNODES": "3",
        "SLURM_NTASKS_PER_NODE": "4",
        "SLURM_GPUS_ON_NODE": "4",
        "SLURM_SUBMIT_DIR": str(tmp_path),
        "RUN_DIR": str(tmp_path / "run"),
        **extra_env,
    }
    result = subprocess.run(
        ["bash", str(SBATCH_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30
    )
    srun_args = tmp_path / "srun.args"
    return result, srun_args.read_text().splitlines() if srun_args.exists() else None


def test_sbatch_passes_the_allocation_to_the_trainer(tmp_path):
    result, argv = _run_sbatch(tmp_path, {}, "fit", "--config", "c.yaml")
    assert result.returncode == 0, result.stderr
    assert argv[argv.index("cli.py") + 1 :] == [
        "fit", "--config", "c.yaml",
        "--trainer.num_nodes", "3", "--trainer.devices", "4",
        "--trainer.default_root_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    assert "--kill-on-bad-exit=1" in argv
    assert (tmp_path / "logs" / "slurm").is_dir()


def test_sbatch_resumes_from_the_newest_checkpoint(tmp_path):
    run = tmp_path / "run"
    hpc = run / "hpc_ckpt_1.ckpt"
    last = run / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    hpc.write_bytes(b"x")
    # A DeepSpeed checkpoint is a directory: it must be picked as a whole.
    last.mkdir()
    (last / "latest").write_text("checkpoint")
    now = time.time()
    os.utime(hpc, (now - 100, now - 100))
    os.utime(last, (now, now))
    _, argv = _run_sbatch(tmp_path, {}, "fit")
    assert argv[-4:] == ["--ckpt_path", str(last), "--weights_only", "false"]

    # After a SIGUSR1 requeue the HPC checkpoint is the newest.
    os.utime(hpc, (now + 100, now + 100))
    (tmp_path / "srun.args").unlink()
    _, argv = _run_sbatch(tmp_path, {}, "fit")
    assert argv[-4:] == ["--ckpt_path", str(hpc), "--weights_only", "false"]

    # Nothing to resume from, or not fitting: no --ckpt_path.
    (tmp_path / "srun.args").unlink()
    _, argv = _run_sbatch(tmp_path, {}, "test", "--ckpt_path", "x.ckpt")
    assert argv.count("--ckpt_path") == 1


def test_sbatch_refuses_tasks_per_node_unlike_gpus_and_runs_only_under_slurm(tmp_path):
    result, argv = _run_sbatch(tmp_path, {"SLURM_GPUS_ON_NODE": "8"}, "fit")
    assert result.returncode == 2 and argv is None
    assert "must equal the GPUs per node" in result.stderr

    result = subprocess.run(
        ["bash", str(SBATCH_SCRIPT), "fit"],
        env={"PATH": os.environ["PATH"]},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2 and "submit this with sbatch" in result.stderr


# --------------------------------------------------------------------------------------------
# SLURM: Lightning's SIGUSR1 requeue and auto-resume (in process, one CPU task)
# --------------------------------------------------------------------------------------------


class _Batches(torch.utils.data.Dataset):
    def __init__(self, count: int = 64, length: int = 16) -> None:
        generator = torch.Generator().manual_seed(0)
        self.input_ids = torch.randint(2, 17, (count, length), generator=generator)
        self.label = torch.randint(0, 10, (count,), generator=generator)

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids[i],
            "padding_mask": torch.zeros_like(self.input_ids[i], dtype=torch.bool),
            "label": self.label[i],
        }


def _tiny_task():
    from fmmformer_pl.attention.config import AttentionConfig
    from fmmformer_pl.models.config import EncoderConfig
    from fmmformer_pl.tasks import ClassificationTask

    encoder = EncoderConfig(
        dim=8, depth=1, num_heads=2, ffn_dim=16, dropout=0.0,
        attention=AttentionConfig(kind="fmm", bandwidth=3, backend="reference"),
    )  # fmt: skip
    return ClassificationTask(vocab_size=17, num_classes=10, max_length=16, encoder=encoder)


class _PreemptAt(Callback):
    """Sends this process SIGUSR1 after ``step`` steps, as SLURM does before the time limit,
    then stops (SLURM would kill the job)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)
            trainer.should_stop = True


class _FirstStep(Callback):
    def __init__(self) -> None:
        self.first_step: int | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.first_step = trainer.global_step


def test_sigusr1_saves_an_hpc_checkpoint_requeues_and_fit_resumes_from_it(tmp_path, monkeypatch):
    from lightning.fabric.plugins.environments import SLURMEnvironment

    bin_dir = _fake_bin(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    slurm = {
        "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1",
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "fmmtest", "SLURM_NODELIST": "127.0.0.1",
        "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
    }  # fmt: skip
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    loader = torch.utils.data.DataLoader(_Batches(), batch_size=8)
    previous_handler = signal.getsignal(signal.SIGUSR1)

    def trainer(*callbacks: Callback, max_steps: int = 12) -> Trainer:
        return Trainer(
            accelerator="cpu", devices=1, max_steps=max_steps, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=tmp_path / "run", callbacks=list(callbacks),
        )  # fmt: skip

    try:
        first = trainer(_PreemptAt(5))
        assert isinstance(first._accelerator_connector.cluster_environment, SLURMEnvironment)
        first.fit(_tiny_task(), loader)
    finally:
        signal.signal(signal.SIGUSR1, previous_handler)
    hpc = tmp_path / "run" / "hpc_ckpt_1.ckpt"
    assert hpc.is_file()
    assert torch.load(hpc, map_location="cpu", weights_only=False)["global_step"] == 5
    assert (tmp_path / "scontrol.args").read_text().splitlines() == ["requeue", "4242"]

    # The requeued job: ckpt_path=None resumes from the HPC checkpoint by itself ...
    # (weights_only=False: the hyper-parameters hold our config dataclasses, which torch.load's
    # default weights_only=True refuses unless they are registered as safe globals.)
    probe = _FirstStep()
    resumed = trainer(probe)
    resumed.fit(_tiny_task(), loader, weights_only=False)
    assert probe.first_step == 5
    assert resumed.global_step == 12

    # ... but "last" looks only at ModelCheckpoint's last.ckpt and starts over: the reason
    # scripts/slurm.sbatch never passes `--ckpt_path last`.
    probe = _FirstStep()
    with pytest.warns(UserWarning, match="no last checkpoint available"):
        trainer(probe).fit(_tiny_task(), loader, ckpt_path="last", weights_only=False)
    assert probe.first_step == 0
