"""Reading the Pathfinder / Path-X release: metadata lines, PNG pixels, the 80/10/10 split.

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
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_modules.common.errors import DataFormatError, DataNotFoundError
from data_modules.common.paths import LRA_DOWNLOAD_HINT

__all__ = ["decode_png", "metadata_files", "parse_metadata_line", "read_metadata", "split_rows"]

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
