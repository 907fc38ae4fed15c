"""ArrayCache: built once, keyed by sources and settings, never read half-written, race safe."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from data_modules.common import ArrayCache, CachedArrays, DataError
from data_modules.common.cache import cache_key
from data_modules.lra import ListOpsDataModule

from .conftest import LISTOPS_ROWS, write_listops_file


class Builder:
    """Writes two sequences and a label array; counts its calls."""

    def __init__(self, first: int = 1) -> None:
        self.calls = 0
        self.first = first

    def __call__(self, writer) -> None:
        self.calls += 1
        sequences = writer.sequences("input", np.uint16)
        sequences.append([self.first, 2, 3])
        sequences.append([])
        writer.save("label", np.array([4, 5], dtype=np.int64))
        writer.meta["rows"] = 2


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "source.txt"
    path.write_text("some data")
    return path


def test_built_once_then_memory_mapped(tmp_path, source) -> None:
    builder = Builder()
    entry = ArrayCache(tmp_path / "c", "t", [source], {"n": 1}).get_or_build(builder)
    again = ArrayCache(tmp_path / "c", "t", [source], {"n": 1}).get_or_build(builder)
    assert builder.calls == 1 and again.directory == entry.directory
    tokens = again.array("input_tokens")
    assert isinstance(tokens, np.memmap) and tokens.mode == "r"
    assert tokens.tolist() == [1, 2, 3] and tokens.dtype == np.uint16
    assert again.array("input_offsets").tolist() == [0, 3, 3]
    assert again.array("label").tolist() == [4, 5]
    assert again.meta["rows"] == 2


def test_changed_source_or_setting_gives_a_new_key(tmp_path, source) -> None:
    key = cache_key([source], {"n": 1})
    assert cache_key([source], {"n": 1}) == key
    assert cache_key([source], {"n": 2}) != key
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache_key([source], {"n": 1}) != key
    source.write_text("other data!")
    assert cache_key([source], {"n": 1}) != key


def test_changed_source_rebuilds(tmp_path, source) -> None:
    ArrayCache(tmp_path / "c", "t", [source], {}).get_or_build(Builder(1))
    source.write_text("edited, and longer")
    builder = Builder(9)
    entry = ArrayCache(tmp_path / "c", "t", [source], {}).get_or_build(builder)
    assert builder.calls == 1 and entry.array("input_tokens").tolist() == [9, 2, 3]


def test_content_hash_catches_same_size_same_mtime_edits(tmp_path, source) -> None:
    before = (cache_key([source], {}), cache_key([source], {}, hash_contents=True))
    stat = source.stat()
    source.write_text("SOME DATA")  # same size
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache_key([source], {}) == before[0]
    assert cache_key([source], {}, hash_contents=True) != before[1]


def test_missing_manifest_is_not_read(tmp_path, source) -> None:
    cache = ArrayCache(tmp_path / "c", "t", [source], {})
    cache.get_or_build(Builder(1))
    (cache.directory / "manifest.json").unlink()  # as if the builder died before finishing
    assert not cache.is_complete()
    with pytest.raises(DataError, match="missing or incomplete"):
        cache.load()
    builder = Builder(7)
    assert cache.get_or_build(builder).array("input_tokens").tolist() == [7, 2, 3]
    assert builder.calls == 1


def test_array_not_matching_manifest_is_not_read(tmp_path, source) -> None:
    cache = ArrayCache(tmp_path / "c", "t", [source], {})
    cache.get_or_build(Builder(1))
    np.save(cache.directory / "label.npy", np.zeros(3, dtype=np.int64))  # wrong shape
    assert not cache.is_complete()
    builder = Builder(1)
    cache.get_or_build(builder)
    assert builder.calls == 1 and cache.load().array("label").tolist() == [4, 5]


def test_leftover_staging_folder_is_ignored_and_removed(tmp_path, source) -> None:
    cache = ArrayCache(tmp_path / "c", "t", [source], {})
    stale = tmp_path / "c" / f".tmp-t-{cache.key}-99999-deadbeef"
    stale.mkdir(parents=True)
    np.save(stale / "label.npy", np.array([1]))
    (stale / "manifest.json").write_text("{}")
    assert not cache.is_complete()
    builder = Builder()
    cache.get_or_build(builder)
    assert builder.calls == 1 and not stale.exists()


def test_failed_build_leaves_nothing(tmp_path, source) -> None:
    def broken(writer) -> None:
        writer.save("label", np.arange(3))
        raise DataError("bad row")

    cache = ArrayCache(tmp_path / "c", "t", [source], {})
    with pytest.raises(DataError, match="bad row"):
        cache.get_or_build(broken)
    assert not cache.directory.exists()
    assert not list((tmp_path / "c").glob(".tmp-*"))


def test_never_pickles(tmp_path, source) -> None:
    def objects(writer) -> None:
        writer.save("label", np.array([{"a": 1}], dtype=object))

    with pytest.raises(ValueError, match="pickle"):
        ArrayCache(tmp_path / "c", "t", [source], {}).get_or_build(objects)


def test_sequence_writer_checks_range(tmp_path, source) -> None:
    def too_big(writer) -> None:
        writer.sequences("input", np.uint8).append([256])

    with pytest.raises(ValueError, match="outside uint8"):
        ArrayCache(tmp_path / "c", "t", [source], {}).get_or_build(too_big)


def _race(root: str, source: str, counter: str, out: str) -> None:
    def slow(writer) -> None:
        with open(counter, "a") as handle:
            handle.write("built\n")
        time.sleep(0.3)
        Builder(3)(writer)

    entry = ArrayCache(root, "t", [source], {}).get_or_build(slow)
    Path(out).write_text(str(entry.array("input_tokens").tolist()))


def test_racing_processes_build_once(tmp_path, source) -> None:
    context = multiprocessing.get_context("fork")
    counter = tmp_path / "builds.txt"
    processes = [
        context.Process(
            target=_race,
            args=(str(tmp_path / "c"), str(source), str(counter), str(tmp_path / f"o{i}")),
        )
        for i in range(3)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    assert counter.read_text() == "built\n"
    assert [(tmp_path / f"o{i}").read_text() for i in range(3)] == ["[3, 2, 3]"] * 3


def test_data_module_rebuilds_on_changed_file_and_setting(make_listops, tmp_path) -> None:
    root = make_listops()
    cache_root = tmp_path / "cache"
    dm = ListOpsDataModule(str(root), max_length=16, cache_dir=str(cache_root))
    dm.setup("fit")
    assert len(dm.dataset("train")) == 3
    folders = set(cache_root.glob("listops-train-*"))
    assert len([f for f in folders if f.is_dir()]) == 1
    train = root / "lra_release" / "listops-1000" / "basic_train.tsv"
    write_listops_file(train, [*LISTOPS_ROWS["train"], ("( ( ( [MAX 1 ) 2 ) ] )", "2")])
    dm = ListOpsDataModule(str(root), max_length=16, cache_dir=str(cache_root))
    dm.setup("fit")
    assert len(dm.dataset("train")) == 4
    assert dm.dataset("train")[3]["input"].tolist() == [3, 8, 9, 6]
    dm = ListOpsDataModule(str(root), max_length=16, truncate_length=2, cache_dir=str(cache_root))
    dm.setup("fit")
    assert dm.dataset("train")[3]["input"].tolist() == [3, 8]
    assert len([f for f in cache_root.glob("listops-train-*") if f.is_dir()]) == 3


def test_default_cache_location_and_cheap_pickling(make_listops) -> None:
    root = make_listops()
    dm = ListOpsDataModule(str(root), max_length=16)
    dm.setup("fit")
    cache = root / "lra_release" / "listops-1000" / ".fmmformer_cache"
    # setup("fit") maps train and val only
    assert sorted(f.name.split("-")[1] for f in cache.glob("listops-*") if f.is_dir()) == [
        "train",
        "val",
    ]
    dataset = dm.dataset("train")
    first = dataset[0]["input"].tolist()
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._arrays is None and isinstance(clone.cached, CachedArrays)
    assert clone[0]["input"].tolist() == first
