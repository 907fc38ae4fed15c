"""The Pathfinder generator draws the same task as LRA's: checked on the pixels.

* images: size, dtype, value range; labels balanced;
* positives and negatives alike in simple image statistics (ink, row and column profiles,
  connected components, marker distance), with a planted leak to show the check has power;
* the label is right on the pixels: a positive's two markers lie on one dashed curve, a
  negative's never do (flood fill over each curve's own ink with the dash gaps bridged);
* files: the release layout, byte-identical with 1 or 2 worker processes, atomic, read by
  ``PathfinderDataModule`` (also with ``generate=True``); the command line's errors.
"""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest

from data_modules.lra.pathfinder import PathfinderDataModule, main, parse_metadata_line
from data_modules.lra.pathfinder.generate import write as write_module
from data_modules.lra.pathfinder.generate.check import components, grow, joins_markers
from data_modules.lra.pathfinder.generate.draw import Sample, draw_sample
from data_modules.lra.pathfinder.generate.settings import PathfinderSettings, lra_settings
from data_modules.lra.pathfinder.generate.write import (
    MANIFEST,
    Progress,
    image_rng,
    write_pathfinder,
)

N32 = 240  # images drawn for the statistics (about 8 s)
TASK = Path("pathfinder32") / "curv_contour_length_14"


@pytest.fixture(scope="module")
def samples32() -> list[Sample]:
    settings = lra_settings(32, 14)
    return [draw_sample(settings, image_rng(11, i), keep_curves=True) for i in range(N32)]


@pytest.fixture(scope="module")
def samples128() -> list[Sample]:
    settings = lra_settings(128, 14)
    return [draw_sample(settings, image_rng(11, i), keep_curves=True) for i in range(4)]


# ---------------------------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------------------------
def test_images_are_8_bit_squares_and_labels_balanced(samples32, samples128) -> None:
    for samples, size in ((samples32, 32), (samples128, 128)):
        for sample in samples:
            assert sample.image.shape == (size, size) and sample.image.dtype == np.uint8
            assert sample.image.max() == 255 and sample.image.min() == 0  # bytescaled
            assert 2 <= len(sample.curves) <= 2 + lra_settings(size).num_distractors
    positives = sum(sample.label for sample in samples32)
    assert abs(positives - N32 / 2) < 4 * np.sqrt(N32) / 2  # binomial: 4 standard deviations


def _z(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Welch's z of positives' mean minus negatives' mean (per column of ``values``)."""
    pos, neg = values[labels == 1], values[labels == 0]
    return (pos.mean(0) - neg.mean(0)) / np.sqrt(pos.var(0) / len(pos) + neg.var(0) / len(neg))


def test_positives_and_negatives_look_alike(samples32) -> None:
    images = np.stack([s.image for s in samples32]).astype(np.float64)  # (N, 32, 32)
    labels = np.array([s.label for s in samples32])
    ink = images.mean(axis=(1, 2))
    pieces = np.array([components(image > 64).max() for image in images], dtype=np.float64)
    distance = np.array([np.hypot(*np.subtract(*s.markers)) for s in samples32])
    for name, values in (("ink", ink), ("components", pieces), ("marker distance", distance)):
        assert abs(_z(values, labels)) < 3.5, name
    # 32 rows and 32 columns each: allow for the 64 comparisons
    assert np.abs(_z(images.mean(axis=2), labels)).max() < 4.0
    assert np.abs(_z(images.mean(axis=1), labels)).max() < 4.0
    # the check has power: two gray levels more ink on positives (~1.2 sd) are caught
    assert abs(_z(ink + 2 * labels, labels)) > 3.5


def test_markers_are_joined_by_one_dashed_curve_exactly_for_positives(
    samples32, samples128
) -> None:
    for sample in samples32 + samples128:
        joined = [joins_markers(c, sample.markers, sample.margin + 1) for c in sample.curves]
        assert any(joined) == bool(sample.label), sample.markers
        # each curve's ink is in the image (nothing drawn only in the per-curve record)
        for curve in sample.curves:
            assert (sample.image[curve > 0.1 * curve.max()] > 0).all()
        # on the whole image: a positive's markers are joined through the bridged ink
        labels = components(grow(sample.image > 20, sample.margin + 1))
        (y1, x1), (y2, x2) = sample.markers
        if sample.label:
            assert labels[y1, x1] == labels[y2, x2] != 0


def test_checker_on_hand_drawn_curves() -> None:
    dashes = np.zeros((12, 12))
    dashes[2, 1:4] = dashes[2, 6:9] = 1  # one curve: two dashes, 2 pixels apart
    assert joins_markers(dashes, ((2, 1), (2, 8)), gap_radius=2)
    assert not joins_markers(dashes, ((2, 1), (2, 8)), gap_radius=0)
    assert not joins_markers(dashes, ((2, 1), (5, 8)), gap_radius=2)  # a marker off the ink
    dashes[3, 8] = 0.2  # a neighbour's faint fringe under a marker does not put it on the curve
    assert not joins_markers(dashes, ((2, 1), (3, 8)), gap_radius=2)
    assert components(grow(dashes > 0, 1)).max() == 1 and components(dashes > 0).max() == 2


def test_dash_gap_needs_the_margin_radius(samples32) -> None:
    """Without bridging, a curve falls apart into its dashes: the flood fill must bridge."""
    broken = sum(
        components(s.curves[0] > 0.1 * s.curves[0].max()).max() > 1 for s in samples32[:20]
    )
    assert broken == 20


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------
def test_lra_settings_per_size_and_difficulty() -> None:
    s32 = lra_settings(32, 14)
    assert (s32.paddle_length, s32.paddle_thickness, s32.paddle_margins) == (2, 0.5, (1,))
    assert (s32.seed_distance, s32.marker_radius, s32.continuity) == (7, 1.5, 1.0)
    assert (s32.distractor_length, s32.num_distractors) == (4, 5)
    assert (s32.snake_contrasts, s32.paddle_contrasts) == ((2.0,), (0.75,))
    baseline = lra_settings(32, 6)
    assert (baseline.contour_length, baseline.distractor_length, baseline.num_distractors) == (
        6, 2, 5,
    )  # fmt: skip
    s128 = lra_settings(128, 9)
    assert (s128.paddle_margins, s128.paddle_length, s128.num_distractors) == ((2, 3), 5, 8)
    assert s128.distractor_length == 3 and s128.seed_distance == 20
    with pytest.raises(ValueError, match="size must be one of"):
        lra_settings(48)
    with pytest.raises(ValueError, match="whole number"):
        PathfinderSettings(paddle_thickness=0.3)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_layout_is_byte_identical_with_one_or_two_workers(tmp_path: Path) -> None:
    settings = lra_settings(32, 14)
    one, two = tmp_path / "one" / TASK, tmp_path / "two" / TASK
    write_pathfinder(one, settings, count=23, seed=4, workers=1, per_folder=10)
    write_pathfinder(two, settings, count=23, seed=4, workers=2, per_folder=10)
    names = _files(one)
    assert names == _files(two)
    assert [n for n in names if n.startswith("metadata")] == [
        f"metadata/{k}.npy" for k in (0, 1, 2)
    ]
    assert len([n for n in names if n.endswith(".png")]) == 23
    match, mismatch, errors = filecmp.cmpfiles(one, two, names, shallow=False)
    assert not mismatch and not errors
    lines = (one / "metadata" / "2.npy").read_bytes().split(b"\n")[:-1]
    assert len(lines) == 3
    for n, line in enumerate(lines):
        folder, name, label = parse_metadata_line(line, Path("2.npy"), n + 1)
        assert (folder, name) == ("imgs/2", f"sample_{n}.png")
        # image 20 + n is the one drawn by its own seed, whatever the folder size
        assert label == draw_sample(settings, image_rng(4, 20 + n)).label
    assert line.decode().split()[4:] == ["1.0", "14", "4", "2", "0.5", "1", "1"]
    other = tmp_path / "other" / TASK
    write_pathfinder(other, settings, count=3, seed=5, workers=1)
    assert (one / "imgs/0/sample_0.png").read_bytes() != (
        other / "imgs/0/sample_0.png"
    ).read_bytes()


def test_interrupted_generation_leaves_the_previous_set(tmp_path: Path, monkeypatch) -> None:
    settings = lra_settings(32, 6)
    task = tmp_path / "pathfinder32" / "curv_baseline"
    write_pathfinder(task, settings, count=4, seed=0)
    before = {name: (task / name).read_bytes() for name in _files(task)}
    calls = []

    def failing(settings, rng, keep_curves=False):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return draw_sample(settings, rng)

    monkeypatch.setattr(write_module, "draw_sample", failing)
    with pytest.raises(KeyboardInterrupt):
        write_pathfinder(task, settings, count=6, seed=1)
    assert {name: (task / name).read_bytes() for name in _files(task)} == before
    assert sorted(p.name for p in task.parent.iterdir()) == ["curv_baseline"]  # no stage left
    # data without our manifest (the release) are never replaced
    (task / MANIFEST).unlink()
    with pytest.raises(FileExistsError, match="not made by this generator"):
        write_pathfinder(task, settings, count=2)


def test_data_module_reads_generated_data(tmp_path: Path) -> None:
    write_pathfinder(tmp_path / TASK, lra_settings(32, 14), count=20, seed=2, per_folder=8)
    module = PathfinderDataModule(str(tmp_path), cache_dir=str(tmp_path / "cache"))
    module.setup()
    sizes = [len(module.dataset(split)) for split in ("train", "val", "test")]
    assert sizes == [16, 2, 2]
    batch = next(iter(module.train_dataloader()))
    assert batch["input_ids"].shape[1] == 1024 and int(batch["input_ids"].max()) == 255


def test_data_module_generates_on_first_use(tmp_path: Path) -> None:
    kwargs = dict(generate=True, generate_count=10, generate_seed=3, generate_workers=1,
                  cache_dir=str(tmp_path / "cache"), difficulty="curv_contour_length_9")  # fmt: skip
    module = PathfinderDataModule(str(tmp_path / "data"), **kwargs)
    module.setup()
    task = tmp_path / "data" / "pathfinder32" / "curv_contour_length_9"
    manifest = json.loads((task / MANIFEST).read_text())
    assert manifest["count"] == 10 and manifest["settings"]["contour_length"] == 9
    assert sum(len(module.dataset(s)) for s in ("train", "val", "test")) == 10
    stamp = (task / "metadata" / "0.npy").stat().st_mtime_ns
    PathfinderDataModule(str(tmp_path / "data"), **kwargs).setup()  # reused, not redrawn
    assert (task / "metadata" / "0.npy").stat().st_mtime_ns == stamp
    PathfinderDataModule(str(tmp_path / "data"), **{**kwargs, "generate_count": 12}).setup()
    assert json.loads((task / MANIFEST).read_text())["count"] == 12  # other settings: redrawn


def test_command_line(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["generate", "--out", str(out), "--count", "3", "--workers", "1"]) == 0
    assert "wrote 3 images" in capsys.readouterr().out
    assert len(list((out / TASK / "imgs" / "0").glob("*.png"))) == 3
    assert main(["generate", "--out", str(out), "--count", "0", "--workers", "1"]) == 2
    assert capsys.readouterr().err.strip() == "error: count must be >= 1, got 0"
    release = tmp_path / "release" / "pathfinder32" / "curv_baseline"
    release.mkdir(parents=True)
    argv = ["generate", "--out", str(tmp_path / "release"), "--contour-length", "6", "--count", "2"]
    assert main(argv) == 2
    assert "refusing to replace" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["generate", "--out", str(out), "--size", "48"])
    assert info.value.code == 2


def test_paper_config_trains_on_generated_data(tmp_path: Path, monkeypatch) -> None:
    """A paper config with the documented override generates its data and feeds the model."""
    import torch

    from cli import build_cli

    monkeypatch.chdir(tmp_path)  # the trainer's logs/ land here
    config = Path(__file__).resolve().parents[3] / "configs/lra/pathfinder/fmm2_band5.yaml"
    args = ["--config", str(config), "--data.init_args.data_dir", str(tmp_path / "data"),
            "--data.init_args.generate", "true", "--data.init_args.generate_count", "12",
            "--data.init_args.generate_workers", "1", "--data.init_args.num_workers", "0",
            "--trainer.accelerator", "cpu", "--trainer.logger", "false"]  # fmt: skip
    cli = build_cli(args, run=False)
    cli.datamodule.setup("fit")
    batch = next(iter(cli.datamodule.train_dataloader()))
    assert (tmp_path / "data" / TASK / MANIFEST).is_file()
    with torch.no_grad():
        assert cli.model({k: v[:2] for k, v in batch.items()}).shape == (2, 2)


def test_progress_reports_images_done_and_time_left() -> None:
    lines: list[str] = []
    progress = Progress(lines.append, every=0)
    progress(50, 200)
    progress(200, 200)  # the end is reported by the caller, not here
    assert len(lines) == 1 and lines[0].startswith("50/200 images, ") and "s left" in lines[0]
    quiet = Progress(lines.append, every=3600)
    quiet(10, 200)
    assert len(lines) == 1
