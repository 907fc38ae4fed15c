"""PathfinderDataModule: text metadata with .npy names, integer-stem order, the 80/10/10 split,
bad rows skipped and counted, Path-X, data_dir levels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules.common.errors import DataFormatError, DataNotFoundError, SkippedRowsWarning
from data_modules.lra.pathfinder import PathfinderDataModule, split_rows
from tests.data_modules.fixtures_c2 import metadata_line, write_pathfinder

TASK = Path("lra_release/lra_release/pathfinder32/curv_contour_length_14")


def all_items(module: PathfinderDataModule, split: str) -> list[dict]:
    dataset = module.dataset(split)
    return [dataset[i] for i in range(len(dataset))]


def test_rows_follow_integer_stem_order_and_split_80_10_10(tmp_path: Path) -> None:
    root, rows = write_pathfinder(tmp_path, per_file=(4, 3, 3))  # metadata 0.npy, 2.npy, 10.npy
    module = PathfinderDataModule(str(root), split_seed=5)
    assert (module.vocab_size, module.num_classes, module.max_length) == (256, 2, 1024)
    module.setup()
    parts = split_rows(10, seed=5)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [8, 1, 1]
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(10))
    for split, indices in parts.items():
        items = all_items(module, split)
        assert [item["label"] for item in items] == [rows[i][0] for i in indices]
        for item, index in zip(items, indices, strict=True):
            assert item["input"].tolist() == rows[index][2].reshape(-1).tolist()  # row-major
    batch = next(iter(module.val_dataloader()))
    assert batch["input_ids"].shape == (1, 1024) and batch["input_ids"].dtype == torch.long
    assert not batch["padding_mask"].any()


def test_path_x_resolution_128(tmp_path: Path) -> None:
    root, rows = write_pathfinder(tmp_path, per_file=(10,), resolution=128)
    module = PathfinderDataModule(str(root), resolution=128)
    assert module.max_length == 16384
    items = all_items(module, "train")
    index = split_rows(10, 0)["train"][0]
    assert items[0]["input"].shape == (16384,)
    assert np.array_equal(items[0]["input"], rows[index][2].reshape(-1))


def test_data_dir_levels(tmp_path: Path) -> None:
    root, _ = write_pathfinder(tmp_path, per_file=(5,))
    for data_dir in (root, root / "lra_release", root / "lra_release" / "pathfinder32",
                     tmp_path / TASK):  # fmt: skip
        module = PathfinderDataModule(str(data_dir), cache_dir=str(tmp_path / "cache"))
        assert module.task_dir() == tmp_path / TASK
    with pytest.raises(DataNotFoundError) as info:
        PathfinderDataModule(str(root), difficulty="curv_baseline").setup()
    assert "pathfinder32/curv_baseline" in str(info.value) and "lra_release.gz" in str(info.value)


def test_empty_png_error_names_the_file(tmp_path: Path) -> None:
    root, _ = write_pathfinder(tmp_path, per_file=(5,))
    empty = tmp_path / TASK / "imgs" / "0" / "sample_3.png"
    empty.write_bytes(b"")
    with pytest.raises(DataFormatError) as info:
        PathfinderDataModule(str(root)).prepare_data()
    assert info.value.path == str(empty)
    assert "empty file" in str(info.value) and "on_bad_row='skip'" in str(info.value)


def test_empty_and_corrupt_pngs_skipped_and_counted(tmp_path: Path) -> None:
    root, rows = write_pathfinder(tmp_path, per_file=(6, 4))
    (tmp_path / TASK / "imgs" / "0" / "sample_1.png").write_bytes(b"")  # row 1
    corrupt = tmp_path / TASK / "imgs" / "2" / "sample_0.png"  # row 6
    corrupt.write_bytes(corrupt.read_bytes()[:40])
    module = PathfinderDataModule(str(root), on_bad_row="skip")
    with pytest.warns(SkippedRowsWarning):
        module.setup()
    parts = split_rows(10, 0)
    for split, indices in parts.items():
        kept = [i for i in indices if i not in (1, 6)]  # the others keep their split
        assert [item["label"] for item in all_items(module, split)] == [rows[i][0] for i in kept]
    skipped = {split: sum(i in (1, 6) for i in parts[split]) for split in parts}
    assert module.skipped_rows == skipped and sum(skipped.values()) == 2


def test_metadata_quirks(tmp_path: Path) -> None:
    root, rows = write_pathfinder(tmp_path, per_file=(3, 2))
    meta = tmp_path / TASK / "metadata"
    # no trailing newline on the last line, \r\n line ends: still 5 rows
    (meta / "2.npy").write_bytes(metadata_line(2, 0, rows[3][0]).encode().replace(b"\n", b"\r\n")
                                 + metadata_line(2, 1, rows[4][0]).strip().encode())  # fmt: skip
    module = PathfinderDataModule(str(root))
    labels = sorted(
        item["label"] for s in ("train", "val", "test") for item in all_items(module, s)
    )
    assert labels == sorted(row[0] for row in rows)
    (meta / "notes.npy").write_text("x")
    with pytest.raises(DataFormatError, match=r"metadata files named <integer>\.npy"):
        PathfinderDataModule(str(root), cache_dir=str(tmp_path / "c2")).setup()


def test_malformed_metadata_line_in_the_release_names_file_and_line(tmp_path: Path) -> None:
    root, _ = write_pathfinder(tmp_path, per_file=(10,))
    meta = tmp_path / TASK / "metadata" / "0.npy"
    lines = meta.read_text().splitlines(keepends=True)
    lines[4] = "imgs/0 sample_4.png 4\n"
    meta.write_text("".join(lines))
    with pytest.raises(DataFormatError) as info:
        PathfinderDataModule(str(root)).prepare_data()
    assert info.value.path == str(meta) and info.value.line_or_record == 5


def test_bad_settings_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="resolution"):
        PathfinderDataModule(str(tmp_path), resolution=48)
    with pytest.raises(ValueError, match="difficulty"):
        PathfinderDataModule(str(tmp_path), difficulty="hard")
