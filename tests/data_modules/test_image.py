"""LRA Image: CIFAR-10 binary records -> TensorFlow-exact grayscale tokens, splits, bad records."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from data_modules.common.base import BadRows
from data_modules.common.errors import DataFormatError, DataNotFoundError, SkippedRowsWarning
from data_modules.lra.image import (
    ImageDataModule,
    read_cifar_batch,
    rgb_to_grayscale,
    train_val_sizes,
)
from tests.data_modules.fixtures_c2 import CIFAR_RECORD, cifar_records, write_cifar

# sha256 of tf.image.rgb_to_grayscale (TensorFlow 2.21.0, CPU, with and without oneDNN) over all
# 2^24 uint8 colours, ordered r-major (index = r * 65536 + g * 256 + b), one uint8 each.
TF_ALL_COLOURS_SHA256 = "824a76d81dad2c5a2cf1fa0b2c0a5afe7d871ec2970e4fa2809b53ddbecdca93"
# (r, g, b) -> TensorFlow's value; the first ten are colours where float64 arithmetic is off by 1.
TF_VALUES = {
    (0, 122, 186): 93, (40, 96, 215): 93, (70, 105, 90): 93, (100, 236, 151): 186,
    (126, 42, 145): 79, (152, 103, 253): 135, (174, 64, 151): 107, (199, 146, 171): 165,
    (220, 158, 238): 186, (242, 119, 136): 158, (0, 0, 0): 0, (255, 255, 255): 255,
    (255, 0, 0): 76, (0, 255, 0): 149, (0, 0, 255): 29, (128, 128, 128): 128, (1, 1, 1): 1,
    (10, 200, 30): 124, (255, 255, 0): 226, (255, 0, 255): 105, (0, 255, 255): 179,
}  # fmt: skip


def planes_of(rgb: np.ndarray) -> np.ndarray:
    """(n, 32, 32, 3) -> (n, 3, 1024), the layout of a CIFAR record."""
    return np.ascontiguousarray(rgb.transpose(0, 3, 1, 2)).reshape(len(rgb), 3, 1024)


def test_grayscale_matches_tensorflow_values() -> None:
    colours = np.array(list(TF_VALUES), dtype=np.uint8)  # (n, 3)
    gray = rgb_to_grayscale(colours[:, :, None])  # one-pixel images: (n, 3, 1) -> (n, 1)
    assert gray[:, 0].tolist() == list(TF_VALUES.values())


def test_grayscale_matches_tensorflow_on_every_colour() -> None:
    digest = hashlib.sha256()
    values = np.arange(256, dtype=np.uint8)
    for r in range(0, 256, 16):  # 16 red values at a time: 1 M colours, bounded memory
        reds = values[r : r + 16]
        rgb = np.stack(np.meshgrid(reds, values, values, indexing="ij"), axis=-1).reshape(-1, 3)
        planes = rgb.reshape(1024, 1024, 3).transpose(0, 2, 1)  # (images, 3, 1024)
        digest.update(rgb_to_grayscale(planes).tobytes())
    assert digest.hexdigest() == TF_ALL_COLOURS_SHA256


def test_tokens_labels_and_splits(tmp_path: Path) -> None:
    truth = write_cifar(tmp_path, per_batch=4, n_test=3)  # 20 train records -> 18 / 2
    module = ImageDataModule(str(tmp_path), batch_size=5)
    assert (module.vocab_size, module.num_classes, module.max_length) == (256, 10, 1024)
    module.setup()
    labels, rgb = truth["train"]
    expected = {
        "train": (labels[:18], rgb_to_grayscale(planes_of(rgb[:18]))),
        "val": (labels[18:], rgb_to_grayscale(planes_of(rgb[18:]))),
        "test": (truth["test"][0], rgb_to_grayscale(planes_of(truth["test"][1]))),
    }
    for split, (want_labels, want_tokens) in expected.items():
        dataset = module.dataset(split)
        assert len(dataset) == len(want_labels)
        for i in range(len(dataset)):
            item = dataset[i]
            assert item["label"] == want_labels[i]
            assert np.array_equal(item["input"], want_tokens[i])
    batch = next(iter(module.test_dataloader()))
    assert batch["input_ids"].shape == (3, 1024) and batch["input_ids"].dtype == torch.long
    assert not batch["padding_mask"].any()
    assert batch["label"].tolist() == truth["test"][0].tolist()


def test_record_layout_planes_and_row_major(tmp_path: Path) -> None:
    record = np.zeros((3, 32, 32), dtype=np.uint8)
    record[0] = 255  # all red -> 76 everywhere
    record[1, 0, 1] = 255  # green added at row 0, column 1 -> token 1
    record[2, 1, 0] = 255  # blue added at row 1, column 0 -> token 32
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar(tmp_path, per_batch=1, n_test=1)
    (folder / "test_batch.bin").write_bytes(bytes([9]) + record.tobytes())
    module = ImageDataModule(str(folder))  # data_dir may be the folder itself
    item = module.dataset("test")[0]
    expected = np.full(1024, 76)
    expected[1] = TF_VALUES[(255, 255, 0)]
    expected[32] = TF_VALUES[(255, 0, 255)]
    assert item["label"] == 9
    assert item["input"].tolist() == expected.tolist()


def test_split_sizes_rule() -> None:
    assert train_val_sizes(50_000) == (45_000, 5_000)
    assert train_val_sizes(20) == (18, 2)
    assert train_val_sizes(5) == (4, 1)
    assert train_val_sizes(1) == (1, 0)


def test_truncated_batch_names_file_and_record(tmp_path: Path) -> None:
    write_cifar(tmp_path, per_batch=4)
    path = tmp_path / "cifar-10-batches-bin" / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[: 3 * CIFAR_RECORD + 100])  # 3 records + 100 bytes
    with pytest.raises(DataFormatError) as info:
        ImageDataModule(str(tmp_path)).setup()
    assert info.value.path == str(path) and info.value.line_or_record == "record 4"
    assert "3073-byte records" in str(info.value) and "100 bytes" in str(info.value)


def test_truncated_batch_skipped_keeps_the_complete_records(tmp_path: Path) -> None:
    truth = write_cifar(tmp_path, per_batch=4)
    path = tmp_path / "cifar-10-batches-bin" / "data_batch_5.bin"
    path.write_bytes(path.read_bytes()[: 3 * CIFAR_RECORD + 7])
    module = ImageDataModule(str(tmp_path), on_bad_row="skip")
    with pytest.warns(SkippedRowsWarning, match="skipped 1 malformed row"):
        module.setup()
    # 19 complete records -> 18 train + 1 val; the truncated record lies after them (in val)
    labels = truth["train"][0]
    assert [module.dataset("train")[i]["label"] for i in range(18)] == labels[:18].tolist()
    assert len(module.dataset("train")) == 18
    assert [module.dataset("val")[i]["label"] for i in range(1)] == [labels[18]]
    assert len(module.dataset("val")) == 1
    assert module.skipped_rows == {"train": 0, "val": 1, "test": 0}


def test_bad_label_byte(tmp_path: Path) -> None:
    write_cifar(tmp_path, per_batch=4, n_test=3)
    path = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    data = bytearray(path.read_bytes())
    data[CIFAR_RECORD] = 10  # the second record's label
    path.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match="record 2: expected a label byte 0-9, got 10"):
        ImageDataModule(str(tmp_path)).setup("test")
    module = ImageDataModule(str(tmp_path), on_bad_row="skip", cache_dir=str(tmp_path / "c"))
    with pytest.warns(SkippedRowsWarning):
        module.setup("test")
    assert len(module.dataset("test")) == 2


def test_missing_release_names_the_download(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        ImageDataModule(str(tmp_path)).setup()
    assert "cifar-10-batches-bin" in str(info.value) and "cifar-10-binary.tar.gz" in str(info.value)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=3 * CIFAR_RECORD + 50), policy=st.sampled_from(["error", "skip"]))
def test_arbitrary_batch_bytes_give_records_or_our_error(data: bytes, policy: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data_batch_1.bin"
        path.write_bytes(data)
        bad = BadRows(policy)
        try:
            labels, planes, problems = read_cifar_batch(path)
            for _, error in problems:
                bad(error)
        except DataFormatError as error:
            assert error.path == str(path)
            return
        assert len(labels) == len(planes) == len(data) // CIFAR_RECORD
        assert planes.shape[1:] == (3, 1024)
        assert bad.skipped == len(problems) if policy == "skip" else not problems


def test_cache_is_reused(tmp_path: Path, monkeypatch) -> None:
    write_cifar(tmp_path, per_batch=2, n_test=2)
    ImageDataModule(str(tmp_path)).prepare_data()
    import data_modules.lra.image as image

    monkeypatch.setattr(image, "read_cifar_batch", lambda path: pytest.fail("rebuilt the cache"))
    module = ImageDataModule(str(tmp_path))
    module.setup()
    assert len(module.dataset("train")) == 9


def test_record_bytes_helper_roundtrip() -> None:
    data, rgb = cifar_records([3, 7], seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "b.bin"
        path.write_bytes(data)
        labels, planes, problems = read_cifar_batch(path)
    assert labels.tolist() == [3, 7] and not problems
    assert np.array_equal(planes, planes_of(rgb))
