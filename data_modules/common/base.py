"""The base of every classification data module: cache, datasets over memmaps, padding collate.

A subclass says where its files are and how one split is tokenised; the base does the rest::

    class MyDataModule(ClassificationDataModule):
        cache_name = "my-task"
        tokenizer_version = "1"             # bump when tokenisation changes: rebuilds caches

        @property
        def vocab_size(self) -> int: ...    # fixed by the task settings, no data read
        @property
        def num_classes(self) -> int: ...

        def locate_sources(self) -> tuple[Path, dict[str, list[Path]]]:
            # (folder for the cache, {source split: files}); raise DataNotFoundError if missing
        def build_split(self, source, files, writer, bad_rows) -> None:
            seqs = writer.sequences("input", np.uint16)   # one entry per row
            ...; seqs.append(token_ids); labels.append(y)
            writer.save(LABEL_ARRAY, np.asarray(labels, dtype=np.int64))

``split_sources`` maps the loader splits (train / val / test) to source splits, so two loader
splits may share one cached source (IMDB validates on its test split). ``predict`` uses test.

Batches: :class:`data_modules.common.batch.ClassificationBatch` (or the subclass's
``batch_layout``), padded to ``max_length``, so every batch has the same fixed shape — no
recompilation, no shape-dependent memory spikes; the attention's cost is linear in
``max_length`` anyway.

Sequences longer than ``truncate_length`` (default ``max_length``) are cut at preparation time,
keeping the head, as LRA does.

Resuming mid-epoch: the train loader is a ``torchdata`` ``StatefulDataLoader`` whose sampler,
:class:`ResumableShuffleSampler`, orders epoch ``e`` by ``randperm(n, seed = PL_GLOBAL_SEED + e)``
(``DistributedSampler``'s rule, sharded over the processes itself, so Lightning injects no other
sampler) and saves ``(epoch, rows yielded)`` in the checkpoint: a resumed run reads exactly the
rows the uninterrupted run would have read next, with any number of workers or processes.
"""

from __future__ import annotations

import logging
import os
import warnings
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from data_modules.common.batch import INPUT_IDS, LABEL, PADDING_MASK, ClassificationBatch
from data_modules.common.cache import (
    CACHE_DIRNAME,
    LABEL_ARRAY,
    ArrayCache,
    CachedArrays,
    CacheWriter,
)
from data_modules.common.errors import DataFormatError, SkippedRowsWarning, TruncatedRowsWarning

# torchdata 0.11 calls torch.set_vital, which torch 2.13 deprecated, in every loader it makes.
warnings.filterwarnings("ignore", "'set_vital' is deprecated", UserWarning)

__all__ = [
    "BadRows",
    "ClassificationDataModule",
    "PadCollate",
    "ResumableShuffleSampler",
    "TokenSequenceDataset",
]

log = logging.getLogger(__name__)

BadRowPolicy = Literal["error", "skip"]
_STAGE_SPLITS: dict[str | None, tuple[str, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
    None: ("train", "val", "test"),
}


class BadRows:
    """Applies the ``on_bad_row`` policy: ``"error"`` re-raises, ``"skip"`` counts."""

    def __init__(self, policy: str) -> None:
        if policy not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be 'error' or 'skip', got {policy!r}")
        self.policy = policy
        self.skipped = 0
        self.first: str | None = None

    def __call__(self, error: DataFormatError) -> None:
        if self.policy == "error":
            raise error
        self.skipped += 1
        if self.first is None:
            self.first = str(error)


class TokenSequenceDataset(Dataset):
    """Row ``i`` of a cache entry: ``{field: token ids (int64 array), LABEL: int}``.

    Each field ``f`` is stored flat as ``f_tokens`` + ``f_offsets`` (see ``SequenceWriter``);
    the memmaps are opened lazily in each process, so pickling into workers copies no data.
    """

    def __init__(self, cached: CachedArrays, fields: Sequence[str] = ("input",)) -> None:
        self.cached = cached
        self.fields = tuple(fields)
        self._length = cached.shapes[LABEL_ARRAY][0]
        for name in self.fields:
            if cached.shapes[f"{name}_offsets"][0] != self._length + 1:
                raise ValueError(f"{cached.directory}: {name}_offsets does not match label count")
        self._arrays: dict[str, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            names = [f"{f}_{part}" for f in self.fields for part in ("tokens", "offsets")]
            self._arrays = {name: self.cached.array(name) for name in [*names, LABEL_ARRAY]}
        return self._arrays

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self._length <= index < self._length:
            raise IndexError(index)
        index %= self._length
        arrays = self._open()
        item: dict[str, Any] = {LABEL: int(arrays[LABEL_ARRAY][index])}
        for name in self.fields:
            offsets = arrays[f"{name}_offsets"]
            start, end = int(offsets[index]), int(offsets[index + 1])
            item[name] = np.asarray(arrays[f"{name}_tokens"][start:end], dtype=np.int64)
        return item


class PadCollate:
    """Pads each field to ``max_length`` with ``pad_id``; the mask is True at padding.

    ``fields`` maps a dataset field to its ``(ids key, mask key)`` in the batch dict.
    """

    def __init__(
        self,
        max_length: int,
        fields: Mapping[str, tuple[str, str]] | None = None,
        pad_id: int = 0,
    ) -> None:
        self.max_length = max_length
        self.fields = dict(fields or {"input": (INPUT_IDS, PADDING_MASK)})
        self.pad_id = pad_id

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = len(items)
        # Built in numpy, handed over with from_numpy: small torch ops cost more per call here.
        positions = np.arange(self.max_length)
        out: dict[str, torch.Tensor] = {}
        for name, (ids_key, mask_key) in self.fields.items():
            ids = np.full((batch, self.max_length), self.pad_id, dtype=np.int64)
            lengths = np.empty(batch, dtype=np.int64)
            for row, item in enumerate(items):
                tokens = item[name][: self.max_length]
                ids[row, : len(tokens)] = tokens
                lengths[row] = len(tokens)
            out[ids_key] = torch.from_numpy(ids)  # (batch, max_length)
            out[mask_key] = torch.from_numpy(positions[None, :] >= lengths[:, None])
        out[LABEL] = torch.tensor([int(item[LABEL]) for item in items], dtype=torch.long)
        return out


class _ResumableIndices(Iterator[int]):
    """One epoch's indices, stateful: ``state_dict`` is the epoch and how many were yielded."""

    def __init__(self, indices: list[int], epoch: int) -> None:
        self.indices, self.epoch = indices, epoch
        self.yielded = 0

    def __iter__(self) -> _ResumableIndices:
        return self

    def __next__(self) -> int:
        if self.yielded >= len(self.indices):
            raise StopIteration
        self.yielded += 1
        return self.indices[self.yielded - 1]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # A position only means something in the epoch it was saved in: a checkpoint written at
        # the end of epoch e (yielded == all) resumes epoch e + 1 from its start.
        yielded = int(state["yielded"])
        same_epoch = int(state.get("epoch", self.epoch)) == self.epoch
        self.yielded = yielded if same_epoch and yielded < len(self.indices) else 0


class ResumableShuffleSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled, padded to equal shards) whose position is checkpointed.

    Epoch ``e`` reads ``randperm(n, generator seeded with seed + e)``, padded by repetition to a
    multiple of ``num_replicas``, rank ``r`` taking every ``num_replicas``-th index from ``r``.
    The order depends only on ``(seed, epoch)``; the iterator's ``state_dict`` holds the epoch
    and the rows yielded, which ``StatefulDataLoader`` saves and restores. Being a
    ``DistributedSampler``, it is left in place by Lightning under DDP.

    ``epoch_source`` (the data module passes ``trainer.current_epoch``) names the epoch at each
    ``__iter__``. Lightning's own ``set_epoch`` counts epochs *processed*, which after a resume
    from an end-of-epoch checkpoint runs one ahead of the epoch being trained (it shuffled
    epoch 1 with epoch 2's order); ``current_epoch`` does not.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        epoch_source: Callable[[], int] | None = None,
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.epoch_source = epoch_source

    def __iter__(self) -> _ResumableIndices:
        if self.epoch_source is not None:
            self.epoch = int(self.epoch_source())
        return _ResumableIndices(list(super().__iter__()), self.epoch)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "seed": self.seed, "num_replicas": self.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if (state["seed"], state["num_replicas"]) != (self.seed, self.num_replicas):
            # Another seed or world size orders the rows differently: say so, resumption is
            # then only approximate (the position is kept, the rows behind it are not those read).
            log.warning(
                "Resuming with seed %d and %d process(es), the checkpoint had seed %d and %d: "
                "the rest of the interrupted epoch is not the rows the run would have read",
                self.seed, self.num_replicas, state["seed"], state["num_replicas"],
            )  # fmt: skip
        self.set_epoch(int(state["epoch"]))


class ClassificationDataModule(LightningDataModule):
    """Shared machinery of the LRA classification data modules (see the module docstring).

    Args:
        data_dir: where the data set is (the exact level accepted depends on the subclass).
        batch_size: rows per batch (per process under DDP).
        max_length: padded sequence length N of every batch; also the model's ``max_length``.
        num_workers: DataLoader worker processes.
        pin_memory: pin batches in page-locked memory (faster host-to-GPU copies).
        on_bad_row: ``"error"`` raises :class:`DataFormatError` at the first malformed row;
            ``"skip"`` drops malformed rows and warns (:class:`SkippedRowsWarning`) with the count.
        cache_dir: where to keep prepared arrays; default ``<task folder>/.fmmformer_cache``.
        truncate_length: tokens kept per sequence (head kept); default ``max_length``.
    """

    cache_name: ClassVar[str] = "data"
    tokenizer_version: ClassVar[str] = "1"
    #: dataset field -> (ids key, mask key) in the batch dict
    batch_fields: ClassVar[dict[str, tuple[str, str]]] = {"input": (INPUT_IDS, PADDING_MASK)}
    #: the layout of the collated batches (data_modules.common.batch)
    batch_layout: ClassVar[type] = ClassificationBatch
    #: loader split -> source split
    split_sources: ClassVar[dict[str, str]] = {"train": "train", "val": "val", "test": "test"}
    #: the splits are carved from one pool of rows (a seeded split), not read from their own
    #: files: an empty validation or test split then warns instead of raising
    carved_splits: ClassVar[bool] = False
    #: also hash file contents into the cache key (slower; size + mtime catch ordinary edits)
    hash_contents: ClassVar[bool] = False

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 32,
        max_length: int = 1024,
        num_workers: int = 0,
        pin_memory: bool = False,
        on_bad_row: BadRowPolicy = "error",
        cache_dir: str | None = None,
        truncate_length: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if on_bad_row not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
        truncate = max_length if truncate_length is None else truncate_length
        if not 1 <= truncate <= max_length:
            raise ValueError(
                f"truncate_length must lie in [1, max_length={max_length}], got {truncate_length}"
            )
        self.data_dir = Path(data_dir).expanduser()
        self.batch_size = batch_size
        self._max_length = max_length
        self.truncate_length = truncate
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.on_bad_row = on_bad_row
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        #: rows skipped per source split (filled when a split is prepared or loaded)
        self.skipped_rows: dict[str, int] = {}
        self._cached: dict[str, CachedArrays] = {}
        self._datasets: dict[str, Dataset] = {}

    # -- what the model needs, known without reading data --------------------------------------
    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids, padding (id 0) included."""

    @property
    @abstractmethod
    def num_classes(self) -> int:
        """Number of labels."""

    # -- subclass hooks -------------------------------------------------------------------------
    @abstractmethod
    def locate_sources(self) -> tuple[Path, dict[str, list[Path]]]:
        """``(task folder, {source split: files in order})``; raises ``DataNotFoundError``."""

    @abstractmethod
    def build_split(
        self, source: str, files: list[Path], writer: CacheWriter, bad_rows: BadRows
    ) -> None:
        """Tokenise one source split into ``writer``; report malformed rows to ``bad_rows``."""

    def cache_settings(self) -> dict[str, Any]:
        """Everything besides the source files that changes the cached arrays."""
        return {
            "tokenizer": f"{type(self).__name__}/{self.tokenizer_version}",
            "truncate_length": self.truncate_length,
            "on_bad_row": self.on_bad_row,
        }

    def make_dataset(self, cached: CachedArrays) -> Dataset:
        return TokenSequenceDataset(cached, fields=tuple(self.batch_fields))

    def make_collate(self) -> PadCollate:
        """The DataLoader's ``collate_fn``: a small picklable object, not a bound method, so
        spawned workers do not pickle the whole data module."""
        return PadCollate(self._max_length, self.batch_fields)

    # -- Lightning hooks ------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Build every missing cache entry (Lightning calls this on one process per node)."""
        task_dir, sources = self.locate_sources()
        for source in dict.fromkeys(self.split_sources.values()):
            self._prepare_source(task_dir, source, sources[source])

    def setup(self, stage: str | None = None) -> None:
        """Map the cached arrays of the splits ``stage`` needs (building any still missing)."""
        task_dir, sources = self.locate_sources()
        for split in _STAGE_SPLITS.get(stage, _STAGE_SPLITS[None]):
            source = self.split_sources[split]
            if source not in self._cached:
                self._cached[source] = self._prepare_source(task_dir, source, sources[source])
            self._datasets[split] = self.make_dataset(self._cached[source])

    def _prepare_source(self, task_dir: Path, source: str, files: list[Path]) -> CachedArrays:
        root = self.cache_dir if self.cache_dir is not None else task_dir / CACHE_DIRNAME
        settings = {**self.cache_settings(), "source_split": source}
        cache = ArrayCache(root, f"{self.cache_name}-{source}", files, settings, self.hash_contents)
        built = False

        def builder(writer: CacheWriter) -> None:
            nonlocal built
            built = True
            bad_rows = BadRows(self.on_bad_row)
            self.build_split(source, files, writer, bad_rows)
            if writer.num_sequences == 0:
                where = (
                    files[0] if len(files) == 1 else Path(os.path.commonpath(files or [task_dir]))
                )
                got = "none"
                if bad_rows.skipped:
                    got += f" ({bad_rows.skipped} malformed row(s) skipped)"
                error = DataFormatError(where, None, f"at least one row in the {source} split", got)
                # An empty split would train on nothing or report an accuracy of 0/0. Splits
                # carved from one pool (Pathfinder's 80/10/10) may be empty on tiny data: warn.
                if not self.carved_splits or source == "train":
                    raise error
                warnings.warn(str(error), UserWarning, stacklevel=2)
            writer.meta.update(skipped_rows=bad_rows.skipped, first_bad_row=bad_rows.first)

        cached = cache.get_or_build(builder)
        truncated = int(cached.meta.get("truncated_rows", 0))
        if truncated:  # on every load, not only when built: a cut row changes what is learnt
            warnings.warn(
                f"{type(self).__name__}: {truncated} of {cached.meta.get('rows', '?')} rows of the "
                f"{source} split are longer than truncate_length={self.truncate_length} tokens "
                f"and were cut to it (the longest has {cached.meta.get('longest_row', '?')}); "
                "raise data.init_args.max_length to keep them whole",
                TruncatedRowsWarning,
                stacklevel=2,
            )
        skipped = int(cached.meta.get("skipped_rows", 0))
        self.skipped_rows[source] = skipped
        if skipped and built:
            warnings.warn(
                f"{type(self).__name__}: skipped {skipped} malformed row(s) in the {source} split "
                f"(on_bad_row='skip'). First: {cached.meta.get('first_bad_row')}",
                SkippedRowsWarning,
                stacklevel=2,
            )
        elif skipped:
            log.info(
                "%s: the cached %s split was built skipping %d malformed row(s)",
                type(self).__name__,
                source,
                skipped,
            )
        return cached

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self._datasets:
            self.setup(None)
        dataset = self._datasets[split]
        options = {
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "collate_fn": self.make_collate(),
            "persistent_workers": self.num_workers > 0,
        }
        if not shuffle:
            return DataLoader(dataset, **options)
        # The seed Lightning gives its own DistributedSampler; the trainer's rank and world size
        # (it is attached when fit asks for this loader), so one process and DDP read alike.
        trainer = getattr(self, "trainer", None)
        rank, world = (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)
        seed = int(os.getenv("PL_GLOBAL_SEED", "0"))
        epoch_source = None if trainer is None else (lambda: trainer.current_epoch)
        sampler = ResumableShuffleSampler(
            dataset, num_replicas=world, rank=rank, seed=seed, epoch_source=epoch_source
        )
        return StatefulDataLoader(dataset, sampler=sampler, **options)

    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` (train / val / test), set up on first use."""
        if split not in self._datasets:
            self.setup(None)
        return self._datasets[split]

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
