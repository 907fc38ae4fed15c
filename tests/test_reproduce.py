"""scripts/reproduce.py: runs, resumes without retraining, reports; one real tiny run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import reproduce  # noqa: E402

from data_modules.lra.listops import write_dataset  # noqa: E402

TINY = ["--trainer.max_steps=4", "--trainer.val_check_interval=2", "--trainer.accelerator=cpu",
        "--trainer.precision=32-true", "--data.init_args.max_length=48",
        "--data.init_args.batch_size=8"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_listops(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("listops")
    write_dataset(out, 64, 16, 16, min_length=4, max_length=40, max_depth=3, max_args=4, seed=1)
    return out


def test_real_runs_write_results_and_a_rerun_trains_nothing(tiny_listops, tmp_path, capsys):
    out = tmp_path / "rep"
    argv = ["lra", "--task", "listops", "--variants", "fmm2_band5", "--seeds", "0",
            "--data-dir", str(tiny_listops), "--out", str(out), "--", *TINY]  # fmt: skip
    assert reproduce.main(argv) == 0
    result = json.loads((out / "runs" / "fmm2_band5-seed0" / "result.json").read_text())
    assert 0.0 <= result["test/acc"] <= 1.0 and result["best_step"] in (2, 4)
    assert result["best_val"] is not None
    table = (out / "table.md").read_text()
    assert "| fmm2_band5 |" in table and "36.74" in table  # next to the paper's number
    assert (out / "results.csv").read_text().startswith("variant,seed,test/acc")
    assert "run,step,val/acc" in (out / "curves.csv").read_text()
    capsys.readouterr()
    assert reproduce.main(argv) == 0  # finished: nothing is trained again
    assert "1 runs, 1 finished before" in capsys.readouterr().out
    assert not (out / "runs" / "fmm2_band5-seed0" / "fit.log").read_text().count("$ ") > 1


def _stub(script: str) -> list[str]:
    return [sys.executable, "-c", script]


def test_a_stopped_reproduction_resumes_its_runs(tmp_path, monkeypatch, tiny_listops):
    """Stopped at its time limit, it exits non-zero; the rerun passes --ckpt_path last.ckpt to
    the unfinished run and starts the others afresh."""
    calls: list[list[str]] = []
    real_fit = reproduce.fit_command

    def fit(run, over, cli_args):
        command = real_fit(run, over, cli_args)
        calls.append(command)
        if "--ckpt_path" in command:  # the second attempt finishes
            return _stub("print('`Trainer.fit` stopped: `max_steps=4` reached.')")
        # The first has saved a checkpoint and is still training when it is stopped.
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        for name in ("last.ckpt", "best-step=2.ckpt"):
            torch.save({"global_step": 2}, run.checkpoints / name)
        return _stub("import time; time.sleep(60)")

    def test(run, best, cli_args):
        folder = run.folder / "test" / "version_0"
        return _stub(f"import pathlib; p = pathlib.Path({str(folder)!r}); "
                     "p.mkdir(parents=True); (p / 'metrics.csv').write_text('test/acc\\n0.5\\n')")  # fmt: skip

    monkeypatch.setattr(reproduce, "fit_command", fit)
    monkeypatch.setattr(reproduce, "test_command", test)
    monkeypatch.setattr(reproduce, "read_curve", lambda run, tag="val/acc": [(2, 0.25)])
    monkeypatch.setattr(reproduce, "prepare_cache", lambda *a: None)
    out = tmp_path / "rep"
    argv = ["lra", "--variants", "softmax", "--seeds", "0", "1", "--parallel", "2",
            "--data-dir", str(tiny_listops), "--out", str(out), "--time-limit", "3",
            "--", "--trainer.max_steps=4"]  # fmt: skip
    assert reproduce.main(argv) == 3  # stopped: not a success
    assert len(calls) == 2 and not any("--ckpt_path" in c for c in calls)
    assert not list(out.glob("runs/*/result.json"))
    assert reproduce.main(argv[:-4] + ["--", "--trainer.max_steps=4"]) == 0
    assert all("--ckpt_path" in c for c in calls[2:]) and len(calls) == 4
    results = sorted(json.loads(p.read_text())["test/acc"] for p in out.glob("runs/*/result.json"))
    assert results == [0.5, 0.5]


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    command = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "lra", "--task", "text",
               "--data-dir", str(tmp_path / "missing")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def _finished(out: Path, accs: dict[int, float], cli_args: list[str]) -> Path:
    """A reproduction folder as ``reproduce.py lra`` leaves it, for fmm2_band5 x seeds."""
    config = str(ROOT / "configs" / "lra" / "listops" / "fmm2_band5.yaml")
    meta = {"kind": "lra", "task": "listops", "variants": ["fmm2_band5"], "seeds": list(accs),
            "configs": {"fmm2_band5": config}, "cli_args": cli_args}  # fmt: skip
    out.mkdir(parents=True)
    (out / "reproduce.json").write_text(json.dumps(meta))
    curves = ["run,step,val/acc"]
    for seed, acc in accs.items():
        run = out / "runs" / f"fmm2_band5-seed{seed}"
        run.mkdir(parents=True)
        result = {"variant": "fmm2_band5", "seed": seed, "test/acc": acc, "best_val": acc,
                  "best_step": 50}  # fmt: skip
        (run / "result.json").write_text(json.dumps(result))
        curves += [f"fmm2_band5-seed{seed},50,{acc}", f"fmm2_band5-seed{seed},100,{acc}"]
    (out / "curves.csv").write_text("\n".join(curves) + "\n")
    return out


def test_compare_puts_an_ablation_in_one_table(tmp_path, capsys):
    paper = _finished(tmp_path / "paper", {0: 0.2, 1: 0.4}, [])
    fp32 = _finished(tmp_path / "fp32", {0: 0.5}, ["--trainer.precision=32-true"])
    to = tmp_path / "cmp"
    assert reproduce.main(["compare", str(paper), str(fp32), "--to", str(to)]) == 0
    table = (to / "compare.md").read_text().splitlines()
    assert (
        table[2] == "| paper config | fmm2_band5 | 30.00 +- 14.14 (20.00, 40.00) | 30.00 +- 14.14 |"
    )
    assert table[3].startswith("| --trainer.precision=32-true | fmm2_band5 | 50.00 +- 0.00 (50.00)")
    rows = (to / "compare.csv").read_text().splitlines()
    assert rows[0] == "setting,variant,seed,test/acc,best_val,best_step" and len(rows) == 4
    capsys.readouterr()
    assert reproduce.main(["compare", str(paper), str(fp32), "--labels", "one"]) == 2
    assert "2 reproductions but 1 labels" in capsys.readouterr().err


def test_report_keeps_the_curves_of_runs_without_event_files(tmp_path):
    """Results copied without their TensorBoard files (a GPU machine's, say) report again
    without losing the validation curves already in curves.csv."""
    out = _finished(tmp_path / "rep", {0: 0.2, 1: 0.4}, [])
    before = (out / "curves.csv").read_text()
    reproduce.report(out)
    assert (out / "curves.csv").read_text() == before
    assert "| fmm2_band5 | 30.00 +- 14.14 (20.00, 40.00) | 2 |" in (out / "table.md").read_text()


def test_a_second_command_into_the_same_folder_reports_every_run(
    tmp_path, monkeypatch, tiny_listops
):
    """More variants or seeds run later into one ``--out``: the table covers them all."""

    def fit(run, over, cli_args):
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        torch.save({"global_step": 2}, run.checkpoints / "best-step=2.ckpt")
        return _stub("print('`Trainer.fit` stopped: `max_steps=4` reached.')")

    def test(run, best, cli_args):
        folder = run.folder / "test" / "version_0"
        acc = 0.3 if run.variant == "softmax" else 0.2
        return _stub(f"import pathlib; p = pathlib.Path({str(folder)!r}); p.mkdir(parents=True); "
                     f"(p / 'metrics.csv').write_text('test/acc\\n{acc + run.seed / 100}\\n')")  # fmt: skip

    monkeypatch.setattr(reproduce, "fit_command", fit)
    monkeypatch.setattr(reproduce, "test_command", test)
    monkeypatch.setattr(reproduce, "read_curve", lambda run, tag="val/acc": [(2, 0.25)])
    monkeypatch.setattr(reproduce, "prepare_cache", lambda *a: None)
    out = tmp_path / "rep"
    common = ["--data-dir", str(tiny_listops), "--out", str(out), "--", "--trainer.max_steps=4"]
    assert reproduce.main(["lra", "--variants", "softmax", "--seeds", "0", *common]) == 0
    assert (
        reproduce.main(["lra", "--variants", "fmm2_band5", "softmax", "--seeds", "1", *common]) == 0
    )
    meta = json.loads((out / "reproduce.json").read_text())
    assert meta["variants"] == ["softmax", "fmm2_band5"] and meta["seeds"] == [0, 1]
    table = (out / "table.md").read_text()
    assert "| softmax | 30.50 +- 0.71 (30.00, 31.00) | 2 |" in table
    assert "| fmm2_band5 | 21.00 +- 0.00 (21.00) | 1 |" in table
    assert len((out / "results.csv").read_text().splitlines()) == 4
