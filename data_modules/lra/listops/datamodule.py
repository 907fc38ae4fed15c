"""``ListOpsDataModule``: the official TSV files (or files generated on the spot) read into the
array cache and batched as :class:`data_modules.common.batch.ClassificationBatch`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from data_modules.common.base import BadRowPolicy, BadRows, ClassificationDataModule
from data_modules.common.cache import LABEL_ARRAY, CacheWriter
from data_modules.common.errors import DataNotFoundError
from data_modules.common.locks import file_lock
from data_modules.common.paths import LRA_DOWNLOAD_HINT, resolve_task_dir
from data_modules.lra.listops.format import SPLITS, TASK_FOLDER, UNK_ID, VOCAB
from data_modules.lra.listops.generate import GENERATOR_MANIFEST, GENERATOR_VERSION, write_dataset
from data_modules.lra.listops.parse import TOKENIZERS, read_listops_tsv

__all__ = ["ListOpsDataModule"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _dir_lock(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / ".listops_generate.lock"):
        yield


class ListOpsDataModule(ClassificationDataModule):
    """ListOps from ``listops-1000/basic_{train,val,test}.tsv``, or generated on the spot.

    ``data_dir`` may point at ``lra_release/``, ``lra_release/lra_release/``, ``listops-1000/``
    or any folder holding the three TSV files. With ``generate=True`` and no files there, the
    data are generated into ``data_dir`` with the ``generate_*`` settings and ``seed``; if
    ``data_dir`` holds files generated with other settings (``listops_generator.json``), they
    are generated again. Files without that manifest (the official release) are never touched.

    Batches: :class:`data_modules.common.batch.ClassificationBatch`, ``label`` 0-9. ``vocab_size`` 17, ``num_classes`` 10. The paper's runs pad to 2,048 (the default).

    Args (beyond :class:`ClassificationDataModule`'s):
        tokenizer: ``brackets`` (closing tokens kept) or ``lra`` (the released pipeline's:
            alphanumeric tokens only, so no closing tokens); see ``format``.
        generate: make the data if ``data_dir`` has none.
        generate_train / generate_val / generate_test: trees per split (LRA: 96,000 / 2,000 / 2,000).
        generate_min_length / generate_max_length: keep trees with ``min < length < max``.
        generate_max_depth / generate_max_args: tree depth and operator arity limits (LRA: 10, 10).
        generate_shards: draw the trees as this many seeded streams, one process per core
            (``write_dataset``'s ``shards``); 1 is one stream.
        seed: the generator's seed.
    """

    cache_name = "listops"
    tokenizer_version = "1"

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 32,
        max_length: int = 2048,
        num_workers: int = 0,
        pin_memory: bool = False,
        on_bad_row: BadRowPolicy = "error",
        cache_dir: str | None = None,
        truncate_length: int | None = None,
        tokenizer: str = "brackets",
        generate: bool = False,
        generate_train: int = 96_000,
        generate_val: int = 2_000,
        generate_test: int = 2_000,
        generate_min_length: int = 500,
        generate_max_length: int = 2_000,
        generate_max_depth: int = 10,
        generate_max_args: int = 10,
        generate_shards: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(
            data_dir, batch_size, max_length, num_workers, pin_memory, on_bad_row, cache_dir,
            truncate_length,
        )  # fmt: skip
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
        self.tokenizer = tokenizer
        if generate and generate_max_length - 1 > self.truncate_length:
            raise ValueError(
                f"generated trees have up to generate_max_length - 1 = {generate_max_length - 1} "
                f"tokens but sequences are cut at {self.truncate_length}: raise max_length or "
                "lower generate_max_length (a cut expression no longer determines its label)"
            )
        self.generate = generate
        self.generate_settings: dict[str, Any] = {
            "version": GENERATOR_VERSION,
            "train": generate_train,
            "val": generate_val,
            "test": generate_test,
            "min_length": generate_min_length,
            "max_length": generate_max_length,
            "max_depth": generate_max_depth,
            "max_args": generate_max_args,
            "seed": seed,
        }
        if generate_shards > 1:  # absent for one stream, as in the manifest
            self.generate_settings["shards"] = generate_shards
        self.save_hyperparameters()

    @property
    def vocab_size(self) -> int:
        return len(VOCAB)

    @property
    def num_classes(self) -> int:
        return 10

    def _files(self) -> list[str]:
        return [f"basic_{split}.tsv" for split in SPLITS]

    def cache_settings(self) -> dict:
        settings = super().cache_settings()
        if self.tokenizer != "brackets":  # caches made before the option keep their key
            settings["listops_tokenizer"] = self.tokenizer
        return settings

    def _ensure_generated(self) -> None:
        with _dir_lock(self.data_dir):
            try:
                folder = resolve_task_dir(self.data_dir, TASK_FOLDER, self._files())
            except DataNotFoundError:
                folder = None
            if folder is not None:
                manifest = folder / GENERATOR_MANIFEST
                if not manifest.exists():
                    return  # the official release, or files the user made: use them as they are
                try:
                    previous = json.loads(manifest.read_text())
                except (OSError, ValueError):
                    previous = None
                if previous == self.generate_settings:
                    return
                log.warning("ListOps in %s was generated with other settings; regenerating", folder)
            target = folder if folder is not None else self.data_dir
            start = time.perf_counter()
            s = self.generate_settings
            write_dataset(
                target, s["train"], s["val"], s["test"], s["min_length"], s["max_length"],
                s["max_depth"], s["max_args"], s["seed"], s.get("shards", 1),
                min(s.get("shards", 1), os.cpu_count() or 1),
            )  # fmt: skip
            log.info("generated ListOps into %s in %.1f s", target, time.perf_counter() - start)

    def locate_sources(self) -> tuple[Path, dict[str, list[Path]]]:
        if self.generate:
            self._ensure_generated()
        hint = LRA_DOWNLOAD_HINT + (
            "; or generate ListOps with `python -m data_modules.lra.listops generate --out DIR` "
            "or ListOpsDataModule(generate=True)"
        )
        folder = resolve_task_dir(self.data_dir, TASK_FOLDER, self._files(), hint)
        return folder, {split: [folder / f"basic_{split}.tsv"] for split in SPLITS}

    def build_split(
        self, source: str, files: list[Path], writer: CacheWriter, bad_rows: BadRows
    ) -> None:
        sequences = writer.sequences("input", np.uint8)
        labels: list[int] = []
        unknown = truncated = longest = 0
        for path in files:
            for _, ids, label in read_listops_tsv(path, bad_rows, self.tokenizer):
                longest = max(longest, len(ids))
                truncated += len(ids) > self.truncate_length
                kept = ids[: self.truncate_length]
                unknown += kept.count(UNK_ID)
                sequences.append(kept)
                labels.append(label)
        if unknown:
            warnings.warn(
                f"ListOps {source} split: {unknown} token(s) outside the ListOps vocabulary "
                "were mapped to <unk>",
                stacklevel=2,
            )
        writer.save(LABEL_ARRAY, np.asarray(labels, dtype=np.int64))
        writer.meta.update(
            rows=len(labels), unknown_tokens=unknown, truncated_rows=truncated, longest_row=longest
        )
