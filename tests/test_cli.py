"""cli.py end to end on tiny official-format data: fit for each task type, what TensorBoard
receives, resume from a checkpoint, DDP on two CPU processes, and the one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cli import build_cli, main
from tests.app_data import make_data_root

ROOT = Path(__file__).resolve().parents[1]
LISTOPS = ROOT / "configs" / "lra" / "listops" / "fmm2_band5.yaml"
RETRIEVAL = ROOT / "configs" / "lra" / "retrieval" / "fmm1_band5.yaml"
WIKITEXT = ROOT / "configs" / "wikitext103" / "fmm2_band20.yaml"

# The paper configs, shrunk to run in seconds on 2 CPU cores (the architecture stays).
SMALL_LRA = [
    "--trainer.accelerator",
    "cpu",
    "--model.init_args.encoder.dim",
    "16",
    "--model.init_args.encoder.ffn_dim",
    "32",
    "--data.init_args.num_workers",
    "0",
]
SMALL_LM = ["--trainer.accelerator", "cpu", "--model.init_args.decoder.depth", "2",
            "--model.init_args.decoder.dim", "16", "--model.init_args.decoder.ffn_dim", "32",
            "--model.init_args.decoder.adaptive_softmax_cutoffs", "[]",
            "--data.init_args.batch_size", "2", "--data.init_args.tgt_len", "16"]  # fmt: skip

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_data_root(tmp_path_factory.mktemp("data"))


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # logs/ land here
    monkeypatch.setattr(sys, "argv", ["cli.py"])  # not pytest's arguments
    return tmp_path


def small_listops(data_root: Path, *extra: str) -> list[str]:
    """The ListOps paper config on the fixture: 32 tokens, full-batch epochs (8 rows), no
    dropout (so two runs with one seed compute the same numbers), validation every epoch."""
    return ["--config", str(LISTOPS), "--data.init_args.data_dir", str(data_root), *SMALL_LRA,
            "--data.init_args.max_length", "32", "--data.init_args.batch_size", "8",
            "--model.init_args.encoder.dropout", "0", "--model.init_args.encoder.attention.dropout",
            "0", "--trainer.val_check_interval", "1.0", "--trainer.check_val_every_n_epoch", "1",
            "--trainer.log_every_n_steps", "1",
            *extra]  # fmt: skip


@pytest.mark.parametrize(
    "config, extra",
    [
        (LISTOPS, ["--data.init_args.max_length", "64", "--data.init_args.batch_size", "4"]),
        (RETRIEVAL, ["--data.init_args.max_length", "64", "--data.init_args.truncate_length", "64",
                     "--data.init_args.batch_size", "2"]),
        (WIKITEXT, ["--data.init_args.sliding_window", "true"]),  # evaluation with loss_mask
    ],
    ids=["classification", "retrieval", "language-model"],
)  # fmt: skip
def test_fast_dev_run_fits_each_task_type(config, extra, data_root, in_tmp):
    small = SMALL_LM if config == WIKITEXT else SMALL_LRA
    args = ["fit", "--config", str(config), "--data.init_args.data_dir", str(data_root), *small,
            *extra, "--trainer.fast_dev_run", "true"]  # fmt: skip
    cli = build_cli(args)
    assert cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    metric = "val/ppl" if config == WIKITEXT else "val/acc"
    assert metric in cli.trainer.callback_metrics


def test_the_compile_option_reaches_the_model_from_the_command_line(data_root, in_tmp):
    args = ["fit", "--config", str(LISTOPS), "--data.init_args.data_dir", str(data_root),
            *SMALL_LRA, "--data.init_args.max_length", "64", "--data.init_args.batch_size", "4",
            "--model.init_args.compile", '{"backend": "eager"}',
            "--trainer.fast_dev_run", "true"]  # fmt: skip
    cli = build_cli(args)
    assert cli.model.compile_options == {"backend": "eager"}
    assert cli.model.model._compiled_call_impl is not None
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


def scalar_tags(log_dir: Path) -> dict[str, list[float]]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_fit_logs_the_named_scalars_saves_seed_and_checkpoint_then_test_and_predict(
    data_root, in_tmp, capsys
):
    cli = build_cli(["fit", *small_listops(data_root, "--trainer.max_steps", "3",
                                           "--seed_everything", "true")])  # fmt: skip
    log_dir = Path(cli.trainer.logger.log_dir).resolve()
    assert log_dir == in_tmp / "logs" / "lra" / "listops" / "fmm2_band5" / "version_0"

    scalars = scalar_tags(log_dir)
    for tag in ("train/loss", "train/acc", "train/lr", "train/tokens_per_sec", "val/loss",
                "val/acc"):  # fmt: skip
        assert tag in scalars, f"{tag} not in {sorted(scalars)}"
    # 8 rows x 32 tokens per step: positive, and the warm-up learning rate rises.
    assert all(rate > 0 for rate in scalars["train/tokens_per_sec"])
    assert len(set(scalars["train/lr"])) > 1  # the schedule moves the rate
    # Blend weights of both layers: per-head near weights (2 heads) and the far weights.
    blend = sorted(tag for tag in scalars if tag.startswith("blend/"))
    for layer in (0, 1):
        assert any(f"{layer}." in tag and "near" in tag for tag in blend), blend
        assert any(f"{layer}." in tag and "far" in tag for tag in blend), blend

    # seed_everything: true was resolved to a concrete seed, written into the saved config.
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert isinstance(saved["seed_everything"], int)
    assert saved["seed_everything"] == int(os.environ["PL_GLOBAL_SEED"])
    # The sizes come from the data module at instantiation, so the saved config omits them.
    assert "vocab_size" not in saved["model"]["init_args"]
    assert cli.model.hparams["vocab_size"] == cli.datamodule.vocab_size

    # The majority-class baseline: label 4 is most frequent in train (5 of 8); in val it is 2/4.
    out = capsys.readouterr().out
    assert "majority-class baseline 0.5000 (always class 4" in out
    # Not a terminal here: plain progress lines instead of a redrawn bar.
    assert "epoch 2 step 3/3 | train/loss" in out and "validation at step 3 | val/acc" in out
    accuracy = float(cli.trainer.callback_metrics["val/acc"])
    assert f"Validation accuracy {accuracy:.4f}" in out

    checkpoint = log_dir / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    tested = build_cli(["test", *small_listops(data_root), "--ckpt_path", str(checkpoint)])
    assert "test/acc" in tested.trainer.callback_metrics
    predicted = build_cli(["predict", *small_listops(data_root), "--ckpt_path", str(checkpoint)])
    assert predicted.trainer.predict_loop.predictions[0].shape == (1,)  # one test row


def test_resume_continues_exactly_where_the_run_stopped(data_root, tmp_path, monkeypatch):
    # The schedule's length is fixed so that the interrupted run plans the same schedule.
    common = small_listops(data_root, "--seed_everything", "7",
                           "--model.init_args.optim.total_steps", "4",
                           "--model.init_args.optim.warmup_steps", "1")  # fmt: skip

    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    straight = build_cli(["fit", *common, "--trainer.max_steps", "4"])

    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    first_half = build_cli(["fit", *common, "--trainer.max_steps", "2"])
    assert first_half.trainer.global_step == 2
    checkpoint = next(
        Path(c.last_model_path)
        for c in first_half.trainer.checkpoint_callbacks
        if c.last_model_path
    )
    resumed = build_cli(["fit", *common, "--trainer.max_steps", "4", "--ckpt_path",
                         str(checkpoint)])  # fmt: skip

    assert resumed.trainer.global_step == straight.trainer.global_step == 4
    assert resumed.trainer.current_epoch == straight.trainer.current_epoch
    for key in ("val/loss", "val/acc"):
        assert float(resumed.trainer.callback_metrics[key]) == pytest.approx(
            float(straight.trainer.callback_metrics[key]), abs=1e-5
        )
    straight_state, resumed_state = straight.model.state_dict(), resumed.model.state_dict()
    for name, value in straight_state.items():
        assert torch.allclose(value, resumed_state[name], atol=1e-5), name
    # Optimiser moments and the learning-rate schedule came back too.
    lr = resumed.trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(straight.trainer.optimizers[0].param_groups[0]["lr"])


def test_ddp_on_two_cpu_processes_trains(data_root, tmp_path):
    args = [sys.executable, str(ROOT / "cli.py"), "fit",
            *small_listops(data_root, "--data.init_args.batch_size", "2", "--trainer.max_steps",
                           "2", "--trainer.devices", "2", "--trainer.strategy", "ddp")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=env)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "distributed_backend=gloo" in result.stderr + result.stdout
    assert "All distributed processes registered. Starting with 2 processes" in (
        result.stderr + result.stdout
    )
    # Rank 0 alone prints the summary, with counts reduced over both processes.
    assert (result.stdout + result.stderr).count("majority-class baseline") == 1
    checkpoints = list((tmp_path / "logs").rglob("last.ckpt"))
    assert len(checkpoints) == 1
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=False)
    assert state["global_step"] == 2


# ------------------------------------------------------------------------------------ errors


def _one_message(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert stderr.startswith("error: ")
    assert len(stderr.strip().splitlines()) <= 8, stderr


def test_a_typo_in_a_config_key_names_the_key(data_root, in_tmp, capsys):
    spec = yaml.safe_load(LISTOPS.read_text())
    spec["model"]["init_args"]["encoder"]["dimm"] = spec["model"]["init_args"]["encoder"].pop("dim")
    bad = in_tmp / "typo.yaml"
    bad.write_text(yaml.safe_dump(spec))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(bad), "--data.init_args.data_dir", str(data_root)])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    _one_message(stderr)
    assert "dimm" in stderr


def test_a_top_level_typo_names_the_key(in_tmp, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(LISTOPS), "--trainer.max_stepz", "3"])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    _one_message(stderr)
    assert "max_stepz" in stderr


def test_missing_data_names_the_layout_and_the_download(in_tmp, capsys):
    code = main(["fit", "--config", str(LISTOPS), *SMALL_LRA,
                 "--data.init_args.data_dir", str(in_tmp / "nowhere")])  # fmt: skip
    assert code == 2
    stderr = capsys.readouterr().err
    _one_message(stderr)
    assert "nowhere" in stderr and "does not exist" in stderr
    assert "listops-1000" in stderr and "basic_train.tsv" in stderr  # the expected layout
    assert "lra_release.gz" in stderr  # where to download it


def test_a_wrong_strategy_name_suggests_the_right_one(data_root, in_tmp, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(LISTOPS), "--data.init_args.data_dir", str(data_root),
              "--trainer.strategy", "ddpp"])  # fmt: skip
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    _one_message(stderr)
    assert "unknown strategy 'ddpp'" in stderr and "Did you mean 'ddp'" in stderr
