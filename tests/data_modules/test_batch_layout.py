"""Every data module's batches match the layout it declares (data_modules/common/batch.py):
the keys, each key's dtype, and the shapes (one ``batch`` size across keys, ``seq`` equal to the
data module's ``max_length``, ``window`` at most it)."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import torch

import data_modules.lra as lra
from data_modules.common.batch import (
    LAYOUTS,
    TOKEN_KEYS,
    ClassificationBatch,
    LMBatch,
    RetrievalBatch,
)
from data_modules.wikitext import WikiText103DataModule
from tests.app_data import make_data_root

SMALL = {"batch_size": 2, "max_length": 64}
# (data module, keyword arguments, the layout it must declare)
MODULES = {
    "listops": (lra.ListOpsDataModule, SMALL, ClassificationBatch),
    "text": (lra.TextDataModule, SMALL, ClassificationBatch),
    "retrieval": (lra.RetrievalDataModule, SMALL, RetrievalBatch),
    "image": (lra.ImageDataModule, {"batch_size": 2}, ClassificationBatch),
    "pathfinder": (lra.PathfinderDataModule, {"batch_size": 2}, ClassificationBatch),
    "wikitext": (WikiText103DataModule, {"batch_size": 2, "tgt_len": 8}, LMBatch),
    "wikitext-sliding": (
        WikiText103DataModule,
        {"batch_size": 2, "tgt_len": 8, "sliding_window": True},
        LMBatch,
    ),
    "wikitext-full-context": (
        WikiText103DataModule,
        {"batch_size": 2, "tgt_len": 8, "val_full_context": True, "full_context_batch_size": 3},
        LMBatch,
    ),
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_data_root(tmp_path_factory.mktemp("data"))


def layout_errors(batch: object, layout: type, seq: int, exact_seq: bool) -> list[str]:
    """What is wrong with ``batch`` for ``layout`` (empty when it matches)."""
    if not isinstance(batch, dict):
        return [f"a batch is a {type(batch).__name__}, not a dict"]
    spec = LAYOUTS[layout]
    errors = []
    missing = layout.__required_keys__ - batch.keys()
    extra = batch.keys() - spec.keys()
    if missing or extra:
        errors.append(f"missing keys {sorted(missing)}, unexpected keys {sorted(extra)}")
    sizes: dict[str, int] = {}
    for key in spec.keys() & batch.keys():
        dtype, dims = spec[key]
        value = batch[key]
        if not isinstance(value, torch.Tensor) or value.dtype != dtype:
            errors.append(f"{key}: {getattr(value, 'dtype', type(value))}, declared {dtype}")
            continue
        if value.dim() != len(dims):
            errors.append(f"{key}: shape {tuple(value.shape)}, declared {dims}")
            continue
        for name, size in zip(dims, value.shape, strict=True):
            if sizes.setdefault(name, size) != size:
                errors.append(f"{key}: {name} = {size}, another key has {sizes[name]}")
    length = sizes.get("seq", sizes.get("window"))
    if length is not None and (length != seq if exact_seq else not 1 <= length <= seq):
        errors.append(f"sequence length {length}, the data module's max_length is {seq}")
    return errors


def test_the_typed_dicts_and_the_layout_table_name_the_same_keys() -> None:
    for layout, spec in LAYOUTS.items():
        assert set(typing.get_type_hints(layout)) == set(spec), layout.__name__
        assert layout.__required_keys__ | layout.__optional_keys__ == set(spec)
    assert LMBatch.__optional_keys__ == {"loss_mask"}
    # every key that holds token ids is an int64 key of some layout (the throughput count)
    ids_keys = {k for spec in LAYOUTS.values() for k, (dtype, _) in spec.items() if "ids" in k}
    assert set(TOKEN_KEYS) == ids_keys - {"target_ids"}


def test_every_data_module_is_checked() -> None:
    checked = {module for module, _, _ in MODULES.values()}
    assert checked == {getattr(lra, name) for name in lra._LAZY} | {WikiText103DataModule}


@pytest.mark.parametrize("name", list(MODULES))
def test_batches_match_the_declared_layout(name: str, data_root: Path, tmp_path: Path) -> None:
    module_class, kwargs, layout = MODULES[name]
    assert module_class.batch_layout is layout
    module = module_class(str(data_root), cache_dir=str(tmp_path / "cache"), **kwargs)
    module.prepare_data()
    module.setup("fit")
    exact = layout is not LMBatch  # classification pads to max_length; a window may be shorter
    loaders = {"train": module.train_dataloader(), "val": module.val_dataloader()}
    for split, loader in loaders.items():
        batches = list(loader)
        assert batches, split
        for batch in batches:
            assert layout_errors(batch, layout, module.max_length, exact) == [], split
    has_mask = ["loss_mask" in batch for batch in batches]  # the validation batches
    if layout is LMBatch:  # the optional key: in evaluation batches exactly when asked for
        wants_mask = kwargs.get("sliding_window", False) or kwargs.get("val_full_context", False)
        assert all(has_mask) if wants_mask else not any(has_mask)


def test_a_wrong_batch_is_reported() -> None:
    good = {
        "input_ids": torch.zeros(2, 8, dtype=torch.long),
        "padding_mask": torch.zeros(2, 8, dtype=torch.bool),
        "label": torch.zeros(2, dtype=torch.long),
    }
    assert layout_errors(good, ClassificationBatch, 8, exact_seq=True) == []
    assert layout_errors(good, ClassificationBatch, 9, exact_seq=True)  # not padded to seq
    assert layout_errors({**good, "label": torch.zeros(3, dtype=torch.long)}, ClassificationBatch,
                         8, exact_seq=True)  # fmt: skip
    assert layout_errors({**good, "padding_mask": good["input_ids"]}, ClassificationBatch, 8,
                         exact_seq=True)  # fmt: skip
    assert layout_errors({**good, "extra": good["label"]}, ClassificationBatch, 8, exact_seq=True)
    assert layout_errors(good, RetrievalBatch, 8, exact_seq=True)
