"""``PathfinderDataModule``: Pathfinder (32x32, 64x64) and Path-X (128x128) read from the release
(:mod:`data_modules.lra.pathfinder.parse`) or generated on the spot
(:mod:`data_modules.lra.pathfinder.generate`), batched as
:class:`data_modules.common.batch.ClassificationBatch`.

Caching: the decoded pixels of each split, ``uint8``, under ``<task>/.fmmformer_cache/``. The
cache key covers the metadata files and the ``imgs/<k>`` folders (size and mtime: a folder's
mtime changes when files are added, removed or renamed, not when one is rewritten in place --
delete the cache folder after repairing images in place).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from data_modules.common.base import BadRowPolicy, BadRows, ClassificationDataModule
from data_modules.common.cache import LABEL_ARRAY, CacheWriter
from data_modules.common.errors import DataFormatError, DataNotFoundError
from data_modules.common.paths import LRA_DOWNLOAD_HINT, resolve_task_dir
from data_modules.lra.pathfinder.generate.settings import DIFFICULTY_CONTOUR_LENGTH, lra_settings
from data_modules.lra.pathfinder.generate.write import (
    MANIFEST,
    Progress,
    directory_lock,
    manifest_for,
    write_pathfinder,
)
from data_modules.lra.pathfinder.parse import (
    decode_png,
    metadata_files,
    parse_metadata_line,
    read_metadata,
    split_rows,
)

__all__ = ["DIFFICULTIES", "RESOLUTIONS", "PathfinderDataModule"]

log = logging.getLogger(__name__)

DIFFICULTIES = tuple(DIFFICULTY_CONTOUR_LENGTH)  # curv_baseline, curv_contour_length_{9,14}
RESOLUTIONS = (32, 64, 128)
_HINT = LRA_DOWNLOAD_HINT + (
    "; or generate Pathfinder with `python -m data_modules.lra.pathfinder generate --out DIR` "
    "or PathfinderDataModule(generate=True)"
)


class PathfinderDataModule(ClassificationDataModule):
    """Pathfinder (32x32, 64x64) and Path-X (128x128) from the LRA release.

    Args (beyond :class:`ClassificationDataModule`'s; ``max_length`` is ``resolution**2``):
        data_dir: the ``lra_release`` folder (either level), ``pathfinder<res>/``, or the
            difficulty folder itself.
        resolution: 32, 64 or 128 (Path-X).
        difficulty: ``curv_baseline``, ``curv_contour_length_9`` or ``curv_contour_length_14``.
        split_seed: seed of the 80/10/10 permutation.
        generate: if ``data_dir`` holds no such data, generate them there
            (``<data_dir>/pathfinder<resolution>/<difficulty>``) with LRA's settings for this
            resolution and difficulty. Data generated earlier with other ``generate_*`` values
            (their ``pathfinder_generator.json`` differs) are generated again; data without it
            (the release) are never touched.
        generate_count: images to generate (the release: 200,000 per difficulty).
        generate_seed: the generator's seed (the files depend only on it and the settings).
        generate_workers: processes drawing images; 0 = every CPU core.

    ``vocab_size`` 256, ``num_classes`` 2. Use ``on_bad_row="skip"`` on the real release (see
    :mod:`data_modules.lra.pathfinder.parse`). Batches:
    :class:`data_modules.common.batch.ClassificationBatch` with ``seq = resolution**2`` (the
    padding mask all False).
    """

    tokenizer_version = "1"
    carved_splits = True  # 80/10/10 of one pool: tiny data may leave val or test empty

    def __init__(
        self,
        data_dir: str,
        resolution: int = 32,
        difficulty: str = "curv_contour_length_14",
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        on_bad_row: BadRowPolicy = "error",
        cache_dir: str | None = None,
        split_seed: int = 0,
        generate: bool = False,
        generate_count: int = 200_000,
        generate_seed: int = 0,
        generate_workers: int = 0,
    ) -> None:
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution}")
        if difficulty not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
        super().__init__(
            data_dir, batch_size, resolution * resolution, num_workers, pin_memory, on_bad_row,
            cache_dir,
        )  # fmt: skip
        self.resolution = resolution
        self.difficulty = difficulty
        self.split_seed = split_seed
        self.generate = generate
        self.generate_count = generate_count
        self.generate_seed = generate_seed
        self.generate_workers = generate_workers
        if generate:
            self.generator_settings = lra_settings(
                resolution, DIFFICULTY_CONTOUR_LENGTH[difficulty]
            )  # fmt: skip
            if generate_count < 1 or generate_workers < 0:
                raise ValueError(
                    f"generate_count must be >= 1 and generate_workers >= 0, got "
                    f"{generate_count} and {generate_workers}"
                )
        self.save_hyperparameters()

    @property
    def vocab_size(self) -> int:
        return 256

    @property
    def num_classes(self) -> int:
        return 2

    @property
    def cache_name(self) -> str:  # type: ignore[override]
        return f"pathfinder{self.resolution}-{self.difficulty}"

    def cache_settings(self) -> dict:
        return {**super().cache_settings(), "resolution": self.resolution,
                "split_seed": self.split_seed}  # fmt: skip

    def task_dir(self) -> Path:
        """The difficulty folder, wherever ``data_dir`` points in the release."""
        task_folder = f"pathfinder{self.resolution}/{self.difficulty}"
        try:
            return resolve_task_dir(self.data_dir, task_folder, ["metadata", "imgs"], _HINT)
        except DataNotFoundError:
            folder = self.data_dir / self.difficulty  # data_dir = .../pathfinder<res>
            if (folder / "metadata").is_dir() and (folder / "imgs").is_dir():
                return folder
            raise

    def _ensure_generated(self) -> None:
        """Generate the data into ``data_dir`` unless they are there (see ``generate``)."""
        wanted = manifest_for(self.generator_settings, self.generate_count, self.generate_seed,
                              per_folder=1000)  # fmt: skip
        with directory_lock(self.data_dir):
            try:
                folder = self.task_dir()
            except DataNotFoundError:
                folder = self.data_dir / f"pathfinder{self.resolution}" / self.difficulty
            else:
                manifest = folder / MANIFEST
                if not manifest.is_file():
                    return  # the release, or files the user made: use them as they are
                try:
                    previous = json.loads(manifest.read_text())
                except (OSError, ValueError):
                    previous = None
                if previous == wanted:
                    return
                log.warning("Pathfinder in %s was generated with other settings; regenerating",
                            folder)  # fmt: skip
            workers = self.generate_workers or os.cpu_count() or 1
            start = time.perf_counter()
            log.info("generating %d Pathfinder images into %s with %d processes",
                     self.generate_count, folder, workers)  # fmt: skip
            write_pathfinder(folder, self.generator_settings, self.generate_count,
                             self.generate_seed, workers, per_folder=1000,
                             progress=Progress(log.info, every=30))  # fmt: skip
            log.info("generated %d Pathfinder images into %s in %.1f s", self.generate_count,
                     folder, time.perf_counter() - start)  # fmt: skip

    def locate_sources(self) -> tuple[Path, dict[str, list[Path]]]:
        if self.generate:
            self._ensure_generated()
        folder = self.task_dir()
        files = metadata_files(folder)
        # The imgs/<k> folders too: adding, removing or renaming an image changes their mtime.
        image_dirs = [folder / "imgs" / path.stem for path in files]
        sources = files + [d for d in image_dirs if d.is_dir()]
        return folder, {split: sources for split in ("train", "val", "test")}

    def build_split(
        self, source: str, files: list[Path], writer: CacheWriter, bad_rows: BadRows
    ) -> None:
        task = self.task_dir()
        rows = read_metadata([path for path in files if path.suffix == ".npy"])
        chosen = split_rows(len(rows), self.split_seed)[source]
        sequences = writer.sequences("input", np.uint8)
        labels: list[int] = []
        for index in chosen:
            path, line_no, line = rows[index]
            try:
                folder, name, label = parse_metadata_line(line, path, line_no)
                pixels = decode_png(task / folder / name, self.resolution)
            except DataFormatError as error:
                bad_rows(error)
                continue
            sequences.append(pixels)
            labels.append(label)
        writer.save(LABEL_ARRAY, np.asarray(labels, dtype=np.int64))
        writer.meta.update(rows=len(labels), metadata_rows=len(rows))
