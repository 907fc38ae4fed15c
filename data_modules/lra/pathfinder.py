"""Pathfinder and Path-X: are the two dots connected by a path? Pixels as tokens (LRA).

Layout read (the LRA release, ``lra_release.gz``)::

    pathfinder32/curv_contour_length_14/metadata/<k>.npy        # TEXT, despite the ending
    pathfinder32/curv_contour_length_14/imgs/<k>/sample_<n>.png # 8-bit grayscale, 32x32
    pathfinder128/curv_contour_length_14/...                    # Path-X, 128x128

Each metadata line describes one image, space separated: field 0 ``imgs/<k>``, field 1
``sample_<n>.png``, field 3 the label (0 or 1); the other fields are generator parameters. The
files are read in the order of their integer stem (0, 1, 2, ..., 10, not 0, 1, 10, 2), lines
in file order: row ``i`` of the data set is the ``i``-th line in that order (200,000 per
difficulty). The difficulties: ``curv_baseline`` (easy), ``curv_contour_length_9``
(intermediate), ``curv_contour_length_14`` (hard, the one LRA reports).

Split: a permutation of the rows drawn with ``numpy.random.default_rng(split_seed)``; its first
``8n // 10`` rows train, the next ``9n // 10 - 8n // 10`` validate, the rest test (160,000 /
20,000 / 20,000). LRA split TFDS's hash-shuffled order 80/10/10 the same way, so the proportions
match but not the membership. Bad rows are dropped *after* splitting, as LRA drops empty images
after splitting: which split a good image lands in never depends on the bad ones.

Tokens: the pixel values 0-255 row-major (vocabulary 256, nothing padded), length
``resolution**2``: 1,024 for 32x32, 16,384 for Path-X.

Bad data: a malformed metadata line (too few fields, label not 0/1, a path that is not
``imgs/<k>`` + ``sample_<n>.png``), a missing, empty or undecodable PNG, or one of the wrong
size or not grayscale. The release HAS empty PNGs (``pathfinder32/curv_baseline/imgs/0/
sample_172.png`` is one) and LRA's own input pipeline silently filters them out, so use
``on_bad_row="skip"`` on the real data: the skipped images are counted and reported
(:class:`SkippedRowsWarning`, ``skipped_rows``). The default ``"error"`` stops at the first
bad row with a :class:`DataFormatError` naming the file.

Caching: the decoded pixels of each split, ``uint8``, under ``<task>/.fmmformer_cache/``. The
cache key covers the metadata files and the ``imgs/<k>`` folders (size and mtime: a folder's
mtime changes when files are added, removed or renamed, not when one is rewritten in place --
delete the cache folder after repairing images in place).

Generating the data (LRA's generator reimplemented with a seed; docs/pathfinder_generator.md)::

    python -m data_modules.lra.pathfinder generate --out DIR --size 32 --contour-length 14 \
        --count 200000 --seed 0 --workers 16

or ``PathfinderDataModule(data_dir, generate=True, ...)``, which makes them on first use.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_modules.common.base import BadRowPolicy, BadRows, ClassificationDataModule
from data_modules.common.cache import CacheWriter
from data_modules.common.errors import DataFormatError, DataNotFoundError
from data_modules.common.paths import LRA_DOWNLOAD_HINT, resolve_task_dir
from data_modules.lra.pathfinder_gen.settings import DIFFICULTY_CONTOUR_LENGTH, lra_settings
from data_modules.lra.pathfinder_gen.write import (
    MANIFEST,
    Progress,
    directory_lock,
    manifest_for,
    write_pathfinder,
)
from data_modules.lra.pathfinder_gen.write import main as generator_main

__all__ = [
    "DIFFICULTIES",
    "PathfinderDataModule",
    "decode_png",
    "metadata_files",
    "parse_metadata_line",
    "read_metadata",
    "split_rows",
]

log = logging.getLogger(__name__)

DIFFICULTIES = tuple(DIFFICULTY_CONTOUR_LENGTH)  # curv_baseline, curv_contour_length_{9,14}
RESOLUTIONS = (32, 64, 128)
_HINT = LRA_DOWNLOAD_HINT + (
    "; or generate Pathfinder with `python -m data_modules.lra.pathfinder generate --out DIR` "
    "or PathfinderDataModule(generate=True)"
)
_IMG_DIR = re.compile(r"imgs/\d+")
_IMG_NAME = re.compile(r"sample_\d+\.png")
# Decoded data must be 8-bit grayscale; these modes are accepted when every pixel is gray.
_GRAY_CONVERTIBLE = ("1", "P", "LA", "RGB", "RGBA", "I;16", "I")


def metadata_files(task_dir: Path) -> list[Path]:
    """``metadata/<k>.npy`` sorted by the integer ``k``; another ``.npy`` name is an error."""
    files = list((task_dir / "metadata").glob("*.npy"))
    for path in files:
        if not path.stem.isdigit():
            raise DataFormatError(path, None, "metadata files named <integer>.npy", path.name)
    if not files:
        raise DataNotFoundError(
            task_dir / "metadata" / "0.npy",
            f"The folder {task_dir / 'metadata'} holds no <k>.npy metadata files",
            LRA_DOWNLOAD_HINT,
        )
    return sorted(files, key=lambda path: int(path.stem))


def parse_metadata_line(line: bytes, path: Path, line_no: int) -> tuple[str, str, int]:
    """``(image folder, image file name, label)`` of one metadata line, else ``DataFormatError``."""
    expected = "'imgs/<k> sample_<n>.png <n> <label 0|1> ...' (at least 4 space-separated fields)"
    try:
        fields = line.decode("ascii").split()
    except UnicodeDecodeError:
        raise DataFormatError(path, line_no, expected, line) from None
    if len(fields) < 4:
        raise DataFormatError(path, line_no, expected, line)
    folder, name, label = fields[0], fields[1], fields[3]
    if not _IMG_DIR.fullmatch(folder) or not _IMG_NAME.fullmatch(name):
        raise DataFormatError(path, line_no, "fields 1-2 like 'imgs/<k> sample_<n>.png'", line)
    if label not in ("0", "1"):
        raise DataFormatError(path, line_no, "a label 0 or 1 in field 4", label)
    return folder, name, int(label)


def read_metadata(files: list[Path]) -> list[tuple[Path, int, bytes]]:
    """Every metadata line, in order, as ``(metadata file, line number, raw line)``.

    Lines are split on ``\\n`` as LRA does; a trailing newline ends the last line rather than
    starting an empty one (``\\r`` is white space to the parser).
    """
    rows: list[tuple[Path, int, bytes]] = []
    for path in files:
        lines = path.read_bytes().split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        rows.extend((path, number, line) for number, line in enumerate(lines, start=1))
    return rows


def split_rows(n: int, seed: int) -> dict[str, np.ndarray]:
    """Row indices of each split (each sorted): a seeded permutation cut 80 / 10 / 10."""
    order = np.random.default_rng(seed).permutation(n)
    cut1, cut2 = (8 * n) // 10, (9 * n) // 10
    parts = {"train": order[:cut1], "val": order[cut1:cut2], "test": order[cut2:]}
    return {split: np.sort(rows) for split, rows in parts.items()}


def decode_png(path: Path, resolution: int) -> np.ndarray:
    """The ``resolution**2`` pixel values (uint8, row-major) of a grayscale PNG.

    Raises :class:`DataFormatError` naming the file when it is missing, empty, not a decodable
    PNG, not ``resolution`` x ``resolution``, or not gray.
    """
    expected = f"a {resolution}x{resolution} 8-bit grayscale PNG"
    try:
        size = path.stat().st_size
    except OSError:
        raise DataFormatError(
            path, None, expected, "no such file (listed in the metadata)"
        ) from None
    if size == 0:
        raise DataFormatError(
            path,
            None,
            expected + " (the LRA release has a few empty PNGs; LRA's pipeline drops them: "
            "pass on_bad_row='skip' to do the same)",
            "an empty file (0 bytes)",
        )
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise DataFormatError(path, None, expected, f"a {image.format} image")
            image.load()
            mode, dims = image.mode, image.size
            if mode == "L":
                pixels = np.asarray(image, dtype=np.uint8)
            elif mode in _GRAY_CONVERTIBLE:
                pixels = _gray_pixels(image, path, expected)
            else:
                raise DataFormatError(path, None, expected, f"image mode {mode}")
    except DataFormatError:
        raise
    except (  # what Pillow raises on a corrupt or truncated file
        OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
        UnidentifiedImageError, Image.DecompressionBombError,
    ) as error:  # fmt: skip
        raise DataFormatError(path, None, expected, f"undecodable ({error})") from None
    if dims != (resolution, resolution):
        raise DataFormatError(path, None, expected, f"{dims[0]}x{dims[1]} pixels ({mode})")
    return pixels.reshape(-1)


def _gray_pixels(image: Image.Image, path: Path, expected: str) -> np.ndarray:
    """Pixels of a non-``L`` image whose content is gray (equal R, G, B; 8-bit range)."""
    if image.mode in ("I;16", "I"):
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 255:
            raise DataFormatError(path, None, expected, f"{image.mode} values beyond 0-255")
        return values.astype(np.uint8)
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise DataFormatError(path, None, expected, f"a colour {image.mode} image")
    return rgb[..., 0]


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
    the module docstring). Batches: ``{"input_ids": (B, resolution**2) long, "padding_mask":
    (B, resolution**2) bool (all False), "label": (B,) long}``.
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
        writer.save("label", np.asarray(labels, dtype=np.int64))
        writer.meta.update(rows=len(labels), metadata_rows=len(rows))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m data_modules.lra.pathfinder generate ...`` (see ``pathfinder_gen.write``)."""
    return generator_main(argv)


if __name__ == "__main__":
    sys.exit(main())
