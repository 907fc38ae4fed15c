"""scripts/plot_run.py reads what TensorBoard shows and draws the blend weights per layer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

SCRIPT = Path(__file__).resolve().parents[1] / "plot_run.py"
spec = importlib.util.spec_from_file_location("plot_run", SCRIPT)
plot_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_run)


def write_run(folder: Path) -> None:
    writer = SummaryWriter(str(folder))
    for step in range(3):
        writer.add_scalar("train/loss", 2.0 - step, step)
        writer.add_scalar("blend/encoder.blocks.1.attn.blend.far.0.weight/1", 0.5 * step, step)
    writer.add_scalar("val/acc", 0.75, 2)
    writer.close()


def test_read_scalars_returns_every_logged_point(tmp_path):
    write_run(tmp_path)
    scalars = plot_run.read_scalars(tmp_path)
    assert scalars["train/loss"] == ([0, 1, 2], [2.0, 1.0, 0.0])
    assert scalars["val/acc"][1] == [0.75]
    tag = "blend/encoder.blocks.1.attn.blend.far.0.weight/1"
    assert plot_run._BLEND.match(tag).groups() == ("1", "far.0", "1")


def test_a_folder_without_events_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no TensorBoard event files"):
        plot_run.read_scalars(tmp_path)


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    write_run(tmp_path)
    out = tmp_path / "run.png"
    plot_run.plot(plot_run.read_scalars(tmp_path), out, "test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_out_is_under_results_and_names_the_run(tmp_path):
    run = tmp_path / "quickstart" / "version_3"
    run.mkdir(parents=True)
    out = plot_run.default_out(run)
    assert out == SCRIPT.parents[1] / "results" / "quickstart_version_3.png"
    assert plot_run.default_out(tmp_path / "quickstart") == out.with_name("quickstart.png")
