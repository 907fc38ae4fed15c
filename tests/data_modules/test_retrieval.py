"""RetrievalDataModule over tiny AAN pair files: no header, float labels, two documents per row."""

from __future__ import annotations

import pytest
import torch

from data_modules.common import DataFormatError, DataNotFoundError
from data_modules.lra import RetrievalDataModule

from .conftest import AAN_ROWS


def byte_ids(data: bytes) -> list[int]:
    return [b + 1 for b in data]


def padded(data: bytes, length: int) -> tuple[list[int], list[bool]]:
    ids = byte_ids(data)[:length]
    return ids + [0] * (length - len(ids)), [False] * len(ids) + [True] * (length - len(ids))


def test_properties_known_without_data(tmp_path) -> None:
    dm = RetrievalDataModule(str(tmp_path / "missing"))
    assert (dm.vocab_size, dm.num_classes, dm.max_length) == (257, 2, 4096)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_train_batch_exact(make_aan, newline) -> None:
    dm = RetrievalDataModule(str(make_aan(newline=newline)), batch_size=4, max_length=16)
    dm.setup("fit")
    batch = next(iter(torch.utils.data.DataLoader(dm.dataset("train"), batch_size=4,
                                                  collate_fn=dm.make_collate())))  # fmt: skip
    keys = {"input_ids_1", "padding_mask_1", "input_ids_2", "padding_mask_2", "label"}
    assert set(batch) == keys
    for i, (label, _id1, _id2, text1, text2) in enumerate(AAN_ROWS["train"]):
        for field, text in (("1", text1), ("2", text2)):
            ids, mask = padded(text, 16)
            assert batch[f"input_ids_{field}"][i].tolist() == ids
            assert batch[f"padding_mask_{field}"][i].tolist() == mask
        assert batch["label"][i].item() == int(float(label))
    assert batch["input_ids_2"][0, :8].tolist() == byte_ids(b"Un caf\xc3\xa9")
    assert batch["input_ids_1"].dtype == torch.long and batch["padding_mask_2"].dtype == torch.bool


def test_splits_read_train_eval_test(make_aan) -> None:
    dm = RetrievalDataModule(str(make_aan() / "lra_release" / "tsv_data"), max_length=4)
    dm.setup(None)
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [2, 1, 1]
    assert dm.dataset("val")[0]["input1"].tolist() == byte_ids(b"ab")
    assert dm.dataset("test")[0]["input2"].tolist() == [1, 256]  # bytes 0x00 0xff
    assert dm.dataset("test")[0]["label"] == 1


def test_truncation_per_document(make_aan) -> None:
    dm = RetrievalDataModule(str(make_aan()), max_length=6, truncate_length=3)
    dm.setup("fit")
    item = dm.dataset("train")[1]
    assert item["input1"].tolist() == byte_ids(b"BLE")
    assert item["input2"].tolist() == byte_ids(b"Pen")


def test_integer_looking_labels_are_accepted(make_aan) -> None:
    rows = {**AAN_ROWS, "test": [(b"1", b"a", b"b", b"x", b"y"), (b"0.00", b"a", b"b", b"x", b"y")]}
    dm = RetrievalDataModule(str(make_aan(rows)), max_length=4)
    dm.setup("test")
    assert [dm.dataset("test")[i]["label"] for i in range(2)] == [1, 0]


def test_missing_file_names_path_and_download(make_aan) -> None:
    root = make_aan()
    (root / "lra_release" / "tsv_data" / "new_aan_pairs.eval.tsv").unlink()
    with pytest.raises(DataNotFoundError) as info:
        RetrievalDataModule(str(root)).prepare_data()
    assert str(root / "lra_release" / "tsv_data" / "new_aan_pairs.eval.tsv") in str(info.value)
    assert "lra_release.gz" in str(info.value)


def test_header_line_is_a_bad_row(make_aan) -> None:
    rows = {**AAN_ROWS, "eval": [b"label\tid1\tid2\ttext1\ttext2", *AAN_ROWS["eval"]]}
    with pytest.raises(DataFormatError, match=r"new_aan_pairs\.eval\.tsv, line 1: .*label"):
        RetrievalDataModule(str(make_aan(rows))).prepare_data()
