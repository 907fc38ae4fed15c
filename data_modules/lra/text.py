"""Text: IMDB movie reviews, byte level, from the Stanford release ``aclImdb/``.

Layout read (``aclImdb_v1.tar.gz`` unpacked; ``train/unsup`` is ignored)::

    aclImdb/train/pos/*.txt   label 1      aclImdb/test/pos/*.txt   label 1
    aclImdb/train/neg/*.txt   label 0      aclImdb/test/neg/*.txt   label 0

Tokens: the file's raw bytes, id = byte + 1, padding 0 (vocabulary 257), the head kept up to
``truncate_length``. LRA reads bytes, so any byte sequence is a valid review: invalid UTF-8 is
tokenised as it stands unless ``strict_utf8=True`` makes it a bad row. An empty (or all white
space) review is a bad row. As in the official pipeline, validation uses the test split.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from data_modules.common.base import BadRowPolicy, BadRows, ClassificationDataModule
from data_modules.common.cache import LABEL_ARRAY, CacheWriter
from data_modules.common.errors import DataFormatError, DataNotFoundError
from data_modules.common.paths import resolve_task_dir

__all__ = ["IMDB_DOWNLOAD_HINT", "TextDataModule", "byte_tokens", "review_files"]

IMDB_DOWNLOAD_HINT = (
    "Download the IMDB reviews from https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz "
    "and unpack them with `tar xzf aclImdb_v1.tar.gz`"
)
TASK_FOLDER = "aclImdb"
LABELS = {"neg": 0, "pos": 1}
_NAME = re.compile(r"(\d+)_(\d+)\.txt")


def byte_tokens(data: bytes, max_tokens: int) -> np.ndarray:
    """``byte + 1`` for the first ``max_tokens`` bytes, as uint16 (ids 1-256; 0 is padding)."""
    return np.frombuffer(data[:max_tokens], dtype=np.uint8).astype(np.uint16) + 1


def _review_order(name: str) -> tuple[int, int, str]:
    match = _NAME.fullmatch(name)  # "<id>_<rating>.txt": numeric order, 2_9 before 10_1
    return (int(match[1]), int(match[2]), "") if match else (1 << 62, 0, name)


def review_files(split_dir: Path) -> list[tuple[Path, int]]:
    """``(file, label)`` for ``split_dir/{neg,pos}/*.txt``: neg first, each in numeric name order."""
    files: list[tuple[Path, int]] = []
    for folder, label in LABELS.items():
        with os.scandir(split_dir / folder) as entries:  # scandir: 12,500 files per folder
            names = [e.name for e in entries if e.name.endswith(".txt") and e.is_file()]
        if not names:
            raise DataNotFoundError(
                split_dir / folder / "*.txt",
                f"The folder {split_dir / folder} holds no reviews; the IMDB layout is "
                "aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt",
                IMDB_DOWNLOAD_HINT,
            )
        files.extend(
            (split_dir / folder / name, label) for name in sorted(names, key=_review_order)
        )
    return files


def check_review(data: bytes, path: Path, strict_utf8: bool) -> None:
    """Raise ``DataFormatError`` for an empty review or, with ``strict_utf8``, invalid UTF-8."""
    if not data.strip():
        raise DataFormatError(path, None, "a non-empty review", data)
    if strict_utf8:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataFormatError(
                path,
                f"byte {error.start}",
                "UTF-8 text (strict_utf8=True)",
                data[error.start : error.start + 8],
            ) from None


class ByteLevelBinary:
    """What the byte-level LRA tasks (Text, Retrieval) share: ids = byte + 1 with 0 for padding
    (``vocab_size`` 257), two classes, and ``strict_utf8`` as part of the cache key."""

    strict_utf8: bool

    @property
    def vocab_size(self) -> int:
        return 257

    @property
    def num_classes(self) -> int:
        return 2

    def cache_settings(self) -> dict:
        return {**super().cache_settings(), "strict_utf8": self.strict_utf8}


class TextDataModule(ByteLevelBinary, ClassificationDataModule):
    """IMDB sentiment, byte level (LRA "Text").

    ``data_dir``: the folder holding ``aclImdb/`` (or ``aclImdb/`` itself). ``max_length``
    defaults to 1,024: the FMMformer runs kept 1,000 bytes and padded to 1,024
    (``truncate_length=1000``); the LRA paper used 4,000. ``vocab_size`` 257, ``num_classes`` 2.
    Validation uses the test split, as LRA's pipeline does (there is no official dev split).

    Args (beyond :class:`ClassificationDataModule`'s):
        strict_utf8: treat a review that is not valid UTF-8 as a bad row (default: tokenise bytes).
    """

    cache_name = "imdb"
    tokenizer_version = "1"
    split_sources = {"train": "train", "val": "test", "test": "test"}

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
        strict_utf8: bool = False,
    ) -> None:
        super().__init__(
            data_dir, batch_size, max_length, num_workers, pin_memory, on_bad_row, cache_dir,
            truncate_length,
        )  # fmt: skip
        self.strict_utf8 = strict_utf8
        self.save_hyperparameters()

    def locate_sources(self) -> tuple[Path, dict[str, list[Path]]]:
        required = ["train/pos", "train/neg", "test/pos", "test/neg"]
        folder = resolve_task_dir(self.data_dir, TASK_FOLDER, required, IMDB_DOWNLOAD_HINT)
        return folder, {
            split: [path for path, _ in review_files(folder / split)] for split in ("train", "test")
        }

    def build_split(
        self, source: str, files: list[Path], writer: CacheWriter, bad_rows: BadRows
    ) -> None:
        sequences = writer.sequences("input", np.uint16)
        labels: list[int] = []
        for path in files:
            label = LABELS[path.parent.name]
            data = path.read_bytes()
            try:
                check_review(data, path, self.strict_utf8)
            except DataFormatError as error:
                bad_rows(error)
                continue
            sequences.append(byte_tokens(data, self.truncate_length))
            labels.append(label)
        writer.save(LABEL_ARRAY, np.asarray(labels, dtype=np.int64))
        writer.meta.update(rows=len(labels))
