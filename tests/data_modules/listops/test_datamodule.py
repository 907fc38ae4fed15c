"""ListOpsDataModule over tiny files in the official format: token ids, masks, labels, layout,
generation on first use."""

from __future__ import annotations

import json

import pytest
import torch

from data_modules.common import DataNotFoundError
from data_modules.lra import ListOpsDataModule
from data_modules.lra.listops import tokenize
from tests.data_modules.conftest import LISTOPS_ROWS

# The official vocabulary, written out independently of the module: pad 0, unk 1, then these.
SYMBOL_IDS = {
    "[MIN": 2,
    "[MAX": 3,
    "[MED": 4,
    "[SM": 5,
    "X": 6,
    **{str(d): 7 + d for d in range(10)},
}


def expected_ids(source: str) -> list[int]:
    """Official tokenisation written independently: `]` -> X, parentheses dropped."""
    return [SYMBOL_IDS["X" if s == "]" else s] for s in source.split() if s not in ("(", ")")]


def test_lra_tokenizer_caches_apart(make_listops) -> None:
    folder = make_listops()
    brackets = ListOpsDataModule(str(folder), batch_size=2, max_length=12)
    lra = ListOpsDataModule(str(folder), batch_size=2, max_length=12, tokenizer="lra")
    for dm in (brackets, lra):
        dm.prepare_data()
        dm.setup("fit")
    source = LISTOPS_ROWS["train"][1][0]
    assert lra.dataset("train")[1]["input"].tolist() == tokenize(source, "lra")
    assert brackets.dataset("train")[1]["input"].tolist() == tokenize(source)
    assert 6 not in lra.dataset("train")[1]["input"].tolist()
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        ListOpsDataModule(str(folder), tokenizer="s4")


def test_properties_known_without_data(tmp_path) -> None:
    dm = ListOpsDataModule(str(tmp_path / "does-not-exist"), max_length=300)
    assert (dm.vocab_size, dm.num_classes, dm.max_length) == (17, 10, 300)


def test_batches_exact(make_listops) -> None:
    dm = ListOpsDataModule(str(make_listops()), batch_size=2, max_length=12)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"input_ids", "padding_mask", "label"}
    assert batch["input_ids"].dtype == torch.long and batch["padding_mask"].dtype == torch.bool
    assert batch["input_ids"].shape == (2, 12) and batch["padding_mask"].shape == (2, 12)
    rows = LISTOPS_ROWS["val"]
    for i, (source, target) in enumerate(rows):
        ids = expected_ids(source)
        assert batch["input_ids"][i].tolist() == ids + [0] * (12 - len(ids))
        assert batch["padding_mask"][i].tolist() == [False] * len(ids) + [True] * (12 - len(ids))
        assert batch["label"][i].item() == int(target)
    assert expected_ids(rows[0][0]) == [5, 16, 16, 6]
    train = dm.dataset("train")
    assert len(train) == 3
    assert train[1]["input"].tolist() == [2, 14, 5, 12, 16, 6, 6]
    assert [train[i]["label"] for i in range(3)] == [4, 4, 5]


@pytest.mark.parametrize("level", ["lra_release", "lra_release/lra_release", "task"])
def test_data_dir_levels(make_listops, level) -> None:
    root = make_listops()
    data_dir = {
        "lra_release": root,
        "lra_release/lra_release": root / "lra_release",
        "task": root / "lra_release" / "listops-1000",
    }[level]
    dm = ListOpsDataModule(str(data_dir), max_length=16)
    dm.setup("test")
    assert len(dm.dataset("test")) == 1
    assert dm.dataset("test")[0]["input"].tolist() == [4, 9, 14, 6]


def test_truncation_keeps_the_head(make_listops) -> None:
    dm = ListOpsDataModule(str(make_listops()), batch_size=3, max_length=8, truncate_length=4)
    dm.setup("fit")
    batch = next(iter(torch.utils.data.DataLoader(dm.dataset("train"), batch_size=3,
                                                  collate_fn=dm.make_collate())))  # fmt: skip
    assert batch["input_ids"][2].tolist() == [4, 8, 9, 15, 0, 0, 0, 0]
    assert batch["padding_mask"][2].tolist() == [False] * 4 + [True] * 4


def test_missing_data_names_path_and_sources(tmp_path) -> None:
    dm = ListOpsDataModule(str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "listops-1000" / "basic_train.tsv") in message
    assert "lra_release.gz" in message and "generate" in message


def test_missing_one_split_is_named(make_listops) -> None:
    root = make_listops()
    (root / "lra_release" / "listops-1000" / "basic_val.tsv").unlink()
    with pytest.raises(DataNotFoundError, match=r"listops-1000/basic_val\.tsv"):
        ListOpsDataModule(str(root)).prepare_data()


def test_generate_into_empty_dir_then_reuse(tmp_path) -> None:
    data_dir = tmp_path / "quick"
    kwargs = dict(generate=True, generate_train=40, generate_val=8, generate_test=8,
                  generate_min_length=5, generate_max_length=40, max_length=64, seed=3)  # fmt: skip
    dm = ListOpsDataModule(str(data_dir), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.dataset("train")) == 40 and len(dm.dataset("val")) == 8
    manifest = json.loads((data_dir / "listops_generator.json").read_text())
    assert (manifest["train"], manifest["seed"], manifest["max_length"]) == (40, 3, 40)
    # Every row's tokens are the tokenised Source of the file and lie in (5, 40).
    lines = (data_dir / "basic_train.tsv").read_text().splitlines()[1:]
    for i, line in enumerate(lines):
        source, target = line.split("\t")
        item = dm.dataset("train")[i]
        assert item["input"].tolist() == expected_ids(source)
        assert 5 < len(item["input"]) < 40 and item["label"] == int(target)
    mtime = (data_dir / "basic_train.tsv").stat().st_mtime_ns
    ListOpsDataModule(str(data_dir), **kwargs).prepare_data()  # same settings: files kept
    assert (data_dir / "basic_train.tsv").stat().st_mtime_ns == mtime
    other = ListOpsDataModule(str(data_dir), **{**kwargs, "generate_train": 20})
    other.setup("fit")  # other settings: generated again
    assert len(other.dataset("train")) == 20


def test_generate_leaves_official_files_alone(make_listops) -> None:
    root = make_listops()
    dm = ListOpsDataModule(str(root), generate=True, generate_train=5, generate_val=1,
                           generate_test=1, generate_min_length=5, generate_max_length=30)  # fmt: skip
    dm.setup("fit")
    assert len(dm.dataset("train")) == 3  # the three rows of the fixture, not 5 new trees
    assert not (root / "lra_release" / "listops-1000" / "listops_generator.json").exists()


def test_generate_rejects_trees_longer_than_max_length(tmp_path) -> None:
    with pytest.raises(ValueError, match="generate_max_length"):
        ListOpsDataModule(str(tmp_path), generate=True, max_length=64, generate_max_length=100)


def test_unknown_symbol_maps_to_unk_with_warning(make_listops) -> None:
    rows = {**LISTOPS_ROWS, "test": [("( ( ( [MAX 2 ) [FOO ) ] )", "2")]}
    dm = ListOpsDataModule(str(make_listops(rows)), max_length=8)
    with pytest.warns(UserWarning, match="1 token"):
        dm.setup("test")
    assert dm.dataset("test")[0]["input"].tolist() == [3, 9, 1, 6]


def test_lightning_fit_consumes_batches(make_listops) -> None:
    """The module plugs into a Trainer: a tiny LightningModule sees the right batch shapes."""
    import lightning.pytorch as pl

    seen = []

    class Probe(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            seen.append(tuple(batch["input_ids"].shape))
            return (self.weight * batch["label"].float()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(
        Probe(), datamodule=ListOpsDataModule(str(make_listops()), batch_size=2, max_length=10)
    )
    assert sorted(seen) == [(1, 10), (2, 10)]
