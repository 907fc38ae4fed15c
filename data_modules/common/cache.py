"""Prepare once, load many times: token arrays cached as ``.npy`` files and memory-mapped back.

A cache entry lives in ``<root>/<name>-<key>/`` where ``key`` hashes

* the source files (resolved path, size and ``mtime_ns`` of each; optionally a SHA-256 of the
  contents), and
* the settings that shape the arrays (``max_length``, tokenizer version, bad-row policy, ...),

so a changed source or setting gives a new key and a rebuild; old entries stay until deleted.

Crash and race safety:

* a builder writes into a private staging folder ``<root>/.tmp-<name>-<key>-<pid>-<random>/``,
  writes ``manifest.json`` there last, then renames the folder into place with ``os.replace``
  (atomic on POSIX). A reader only trusts a folder whose manifest exists, parses, carries the
  right key and lists arrays whose ``.npy`` headers match (shape, dtype). A leftover staging
  folder or a folder without a manifest is never read.
* building holds an exclusive ``fcntl.flock`` on ``<root>/<name>-<key>.lock``, so when several
  DDP processes race (Lightning runs ``prepare_data`` on local rank 0 only, but ``setup`` runs on
  every rank) one builds and the others wait, then load. Without ``fcntl`` (Windows) the atomic
  rename alone keeps readers safe.

Arrays are written with ``np.save`` and read with ``np.load(mmap_mode="r", allow_pickle=False)``:
no pickle anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_modules.common.errors import DataError
from data_modules.common.locks import file_lock

__all__ = [
    "CACHE_DIRNAME",
    "CACHE_FORMAT_VERSION",
    "LABEL_ARRAY",
    "ArrayCache",
    "CacheWriter",
    "CachedArrays",
    "SequenceWriter",
    "cache_key",
    "fingerprint_files",
]

CACHE_DIRNAME = ".fmmformer_cache"
CACHE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# The array of a classification entry that holds one label per row (``label.npy``); a batch's
# key for the labels is data_modules.common.batch.LABEL.
LABEL_ARRAY = "label"


def fingerprint_files(paths: Sequence[str | Path], hash_contents: bool = False) -> list[list[Any]]:
    """``[resolved path, size, mtime_ns]`` per file (plus a SHA-256 when ``hash_contents``), in order."""
    prints: list[list[Any]] = []
    parents: dict[str, str] = {}  # resolve each folder once (50,000 IMDB files, 4 folders)
    for path in paths:
        folder, name = os.path.split(os.fspath(path))  # os.path: pathlib is slow at this count
        if folder not in parents:
            parents[folder] = os.path.realpath(folder or ".")
        resolved = os.path.join(parents[folder], name)
        stat = os.stat(resolved)
        entry: list[Any] = [resolved, stat.st_size, stat.st_mtime_ns]
        if hash_contents:
            digest = hashlib.sha256()
            with open(resolved, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
            entry.append(digest.hexdigest())
        prints.append(entry)
    return prints


def cache_key(
    sources: Sequence[str | Path], settings: Mapping[str, Any], hash_contents: bool = False
) -> str:
    """A 16-hex-digit key: SHA-256 of the cache format version, the source fingerprints and settings."""
    payload = json.dumps(
        {
            "format": CACHE_FORMAT_VERSION,
            "sources": fingerprint_files(sources, hash_contents),
            "settings": dict(settings),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class SequenceWriter:
    """Appends variable-length token sequences to disk, never holding them all in memory.

    :meth:`close` produces ``<name>_tokens.npy`` (all sequences concatenated, 1-D) and
    ``<name>_offsets.npy`` (int64, ``n + 1`` entries): sequence ``i`` is
    ``tokens[offsets[i]:offsets[i + 1]]``.
    """

    def __init__(self, staging: Path, name: str, dtype: np.dtype | type) -> None:
        self.name = name
        self.dtype = np.dtype(dtype)
        self._staging = staging
        self._raw_path = staging / f"{name}_tokens.raw"
        self._raw = open(self._raw_path, "wb")  # noqa: SIM115 - closed in close()
        self._offsets: list[int] = [0]
        self._closed = False

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def append(self, sequence: np.ndarray | Sequence[int]) -> None:
        array = np.asarray(sequence)
        if array.ndim != 1:
            raise ValueError(f"a sequence must be 1-D, got shape {array.shape}")
        info = np.iinfo(self.dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ValueError(f"token ids outside {self.dtype} range: {array.min()}..{array.max()}")
        self._raw.write(array.astype(self.dtype, copy=False).tobytes())
        self._offsets.append(self._offsets[-1] + int(array.size))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._raw.close()
        total = self._offsets[-1]
        tokens_path = self._staging / f"{self.name}_tokens.npy"
        if total:
            # np.save streams the memmap to disk; peak memory stays at the page cache's mercy.
            flat = np.memmap(self._raw_path, dtype=self.dtype, mode="r", shape=(total,))
            np.save(tokens_path, flat, allow_pickle=False)
            del flat
        else:
            np.save(tokens_path, np.zeros(0, dtype=self.dtype), allow_pickle=False)
        self._raw_path.unlink()
        np.save(
            self._staging / f"{self.name}_offsets.npy",
            np.asarray(self._offsets, dtype=np.int64),
            allow_pickle=False,
        )


class CacheWriter:
    """The staging area a builder fills: whole arrays via :meth:`save`, sequences via :meth:`sequences`.

    ``meta`` is a JSON-serialisable dict stored in the manifest (row counts, skipped rows, ...).
    """

    def __init__(self, staging: Path) -> None:
        self.staging = staging
        self.meta: dict[str, Any] = {}
        self._sequence_writers: list[SequenceWriter] = []

    def save(self, name: str, array: np.ndarray) -> None:
        np.save(self.staging / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)

    def sequences(self, name: str, dtype: np.dtype | type) -> SequenceWriter:
        writer = SequenceWriter(self.staging, name, dtype)
        self._sequence_writers.append(writer)
        return writer

    @property
    def num_sequences(self) -> int:
        """Rows written so far: the longest of the sequence arrays (0 when there are none)."""
        return max((len(writer) for writer in self._sequence_writers), default=0)

    def close(self) -> None:
        for writer in self._sequence_writers:
            writer.close()


@dataclass
class CachedArrays:
    """A complete cache entry: where its arrays are and the builder's ``meta``.

    Arrays are opened on demand with :meth:`array` (a read-only memmap), so an object holding a
    ``CachedArrays`` pickles cheaply into DataLoader worker processes.
    """

    directory: Path
    shapes: dict[str, tuple[int, ...]]
    meta: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.npy"

    def array(self, name: str) -> np.ndarray:
        if name not in self.shapes:
            raise KeyError(
                f"cache {self.directory} has no array {name!r}; it has {sorted(self.shapes)}"
            )
        return np.load(self.path(name), mmap_mode="r", allow_pickle=False)


class ArrayCache:
    """One cache entry, identified by ``name`` and the key of its sources and settings."""

    def __init__(
        self,
        root: str | Path,
        name: str,
        sources: Sequence[str | Path],
        settings: Mapping[str, Any],
        hash_contents: bool = False,
    ) -> None:
        self.root = Path(root)
        self.name = name
        self.settings = dict(settings)
        self.key = cache_key(sources, settings, hash_contents)
        self.directory = self.root / f"{name}-{self.key}"

    # -- reading ---------------------------------------------------------------------------
    def _read_manifest(self) -> CachedArrays | None:
        """The entry if it is complete and consistent, else ``None`` (never raises on bad files)."""
        try:
            manifest = json.loads((self.directory / MANIFEST).read_text())
            if manifest.get("format") != CACHE_FORMAT_VERSION or manifest.get("key") != self.key:
                return None
            shapes: dict[str, tuple[int, ...]] = {}
            for name, spec in manifest["arrays"].items():
                array = np.load(self.directory / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                if list(array.shape) != spec["shape"] or str(array.dtype) != spec["dtype"]:
                    return None
                shapes[name] = tuple(array.shape)
            return CachedArrays(self.directory, shapes, dict(manifest.get("meta", {})))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def is_complete(self) -> bool:
        return self._read_manifest() is not None

    def load(self) -> CachedArrays:
        entry = self._read_manifest()
        if entry is None:
            raise DataError(
                f"The cache {self.directory} is missing or incomplete; run the data module's "
                "prepare_data() (or delete the folder to rebuild it)."
            )
        return entry

    # -- building --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DataError(
                f"Cannot create the cache folder {self.root} ({error.strerror}); pass a writable "
                "cache_dir to the data module."
            ) from error
        with file_lock(self.root / f"{self.name}-{self.key}.lock"):
            yield

    def get_or_build(self, builder: Callable[[CacheWriter], None]) -> CachedArrays:
        """Load the entry, building it first with ``builder`` if it is missing or incomplete.

        ``builder(writer)`` saves arrays into ``writer`` and may fill ``writer.meta``; if it raises,
        nothing is left behind and the error propagates.
        """
        entry = self._read_manifest()
        if entry is not None:
            return entry
        with self._lock():
            entry = self._read_manifest()  # another process may have built it while we waited
            if entry is not None:
                return entry
            self._build_locked(builder)
        return self.load()

    def _build_locked(self, builder: Callable[[CacheWriter], None]) -> None:
        # Holding the lock means no live process is building this key: staging folders for it
        # are leftovers of a crash, and a final folder without a valid manifest is half-written.
        for stale in self.root.glob(f".tmp-{self.name}-{self.key}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if self.directory.exists():
            shutil.rmtree(self.directory)
        staging = self.root / f".tmp-{self.name}-{self.key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            writer = CacheWriter(staging)
            try:
                builder(writer)
            finally:
                writer.close()
            arrays = {}
            for path in sorted(staging.glob("*.npy")):
                array = np.load(path, mmap_mode="r", allow_pickle=False)
                arrays[path.stem] = {"shape": list(array.shape), "dtype": str(array.dtype)}
                del array
            manifest = {
                "format": CACHE_FORMAT_VERSION,
                "key": self.key,
                "name": self.name,
                "settings": self.settings,
                "arrays": arrays,
                "meta": writer.meta,
            }
            tmp_manifest = staging / (MANIFEST + ".tmp")
            tmp_manifest.write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
            os.replace(tmp_manifest, staging / MANIFEST)  # the manifest is the "complete" marker
            try:
                os.replace(staging, self.directory)
            except OSError:
                # Only possible without a working lock (e.g. no fcntl): someone else won the race.
                if not self.is_complete():
                    raise
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
