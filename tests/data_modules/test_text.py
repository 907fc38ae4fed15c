"""TextDataModule over a tiny ``aclImdb/`` tree: byte ids, order, labels, masks, layout, errors."""

from __future__ import annotations

import pytest
import torch

from data_modules.common import DataFormatError, DataNotFoundError, SkippedRowsWarning
from data_modules.lra import TextDataModule

from .conftest import IMDB_REVIEWS


def byte_ids(data: bytes) -> list[int]:
    return [b + 1 for b in data]


def test_properties_known_without_data(tmp_path) -> None:
    dm = TextDataModule(str(tmp_path / "missing"))
    assert (dm.vocab_size, dm.num_classes, dm.max_length) == (257, 2, 1024)


def test_train_items_exact_in_order(make_imdb) -> None:
    dm = TextDataModule(str(make_imdb()), max_length=64)
    dm.setup("fit")
    train = dm.dataset("train")
    # neg first, then pos; within a folder by the numeric id of <id>_<rating>.txt (2 before 10)
    expected = [
        (b"Awful.<br /><br />Just awful.", 0),
        ("Loved the café scene!".encode(), 1),
        (b"Great film.", 1),
    ]
    assert len(train) == 3
    for i, (data, label) in enumerate(expected):
        assert train[i]["input"].tolist() == byte_ids(data)
        assert train[i]["label"] == label
    # "f" then "é" as its two UTF-8 bytes C3 A9
    assert train[1]["input"].tolist()[12:15] == [0x66 + 1, 0xC3 + 1, 0xA9 + 1]


def test_validation_is_the_test_split(make_imdb) -> None:
    dm = TextDataModule(str(make_imdb()), batch_size=8, max_length=24)
    dm.setup("fit")
    dm.setup("test")
    val = next(iter(dm.val_dataloader()))
    test = next(iter(dm.test_dataloader()))
    for key in val:
        assert torch.equal(val[key], test[key])
    raw = b"Meh \xff\xfe raw bytes"  # invalid UTF-8 is tokenised byte by byte
    assert val["input_ids"][1].tolist() == byte_ids(raw) + [0] * (24 - len(raw))
    assert val["padding_mask"][1].tolist() == [False] * len(raw) + [True] * (24 - len(raw))
    assert val["label"].tolist() == [0, 0, 1]
    assert val["input_ids"].shape == (3, 24) and val["input_ids"].dtype == torch.long


def test_truncate_and_pad(make_imdb) -> None:
    dm = TextDataModule(str(make_imdb()), batch_size=3, max_length=8, truncate_length=5)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["input_ids"][0].tolist() == byte_ids(b"Borin") + [0, 0, 0]
    assert batch["padding_mask"][2].tolist() == [False] * 5 + [True] * 3


def test_data_dir_may_be_the_aclimdb_folder(make_imdb) -> None:
    dm = TextDataModule(str(make_imdb() / "aclImdb"), max_length=32)
    dm.setup("test")
    assert len(dm.dataset("test")) == 3


def test_missing_release_names_path_and_download(tmp_path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        TextDataModule(str(tmp_path)).prepare_data()
    assert str(tmp_path / "aclImdb" / "train" / "pos") in str(info.value)
    assert "aclImdb_v1.tar.gz" in str(info.value)


def test_empty_label_folder_is_reported(make_imdb) -> None:
    reviews = [r for r in IMDB_REVIEWS if (r[0], r[1]) != ("train", "pos")]
    with pytest.raises(DataNotFoundError, match=r"train/pos/\*\.txt"):
        TextDataModule(str(make_imdb(reviews))).prepare_data()


def test_empty_review_error_names_file(make_imdb) -> None:
    root = make_imdb([*IMDB_REVIEWS, ("train", "neg", "5_2.txt", b" \n")])
    with pytest.raises(DataFormatError, match=r"train/neg/5_2\.txt.*non-empty review"):
        TextDataModule(str(root)).prepare_data()


def test_empty_review_skipped_and_counted(make_imdb) -> None:
    root = make_imdb([*IMDB_REVIEWS, ("train", "neg", "5_2.txt", b"")])
    dm = TextDataModule(str(root), on_bad_row="skip", max_length=64)
    with pytest.warns(SkippedRowsWarning, match="skipped 1 malformed row"):
        dm.prepare_data()
    dm.setup("fit")
    assert dm.skipped_rows == {"train": 1, "test": 0}
    assert len(dm.dataset("train")) == 3


def test_strict_utf8_rejects_invalid_bytes(make_imdb) -> None:
    with pytest.raises(DataFormatError, match=r"7_4\.txt, byte 4.*UTF-8"):
        TextDataModule(str(make_imdb()), strict_utf8=True).prepare_data()
