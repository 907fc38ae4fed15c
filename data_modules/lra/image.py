"""Image: CIFAR-10 in grayscale, one pixel per token (LRA "Image"), from the binary release.

Layout read (``cifar-10-binary.tar.gz`` unpacked)::

    cifar-10-batches-bin/data_batch_{1..5}.bin   10,000 records each   (train + validation)
    cifar-10-batches-bin/test_batch.bin          10,000 records        (test)

A record is 3,073 bytes: the label (0-9), then 1,024 red, 1,024 green and 1,024 blue bytes, each
plane row-major 32x32. Tokens are the grayscale pixels 0-255 (vocabulary 256, no padding needed:
every sequence is 1,024 long), computed bit for bit as LRA's ``tf.image.rgb_to_grayscale`` on
``uint8`` images (see :func:`rgb_to_grayscale`).

Split: the train records in file order (batch 1 record 0 first), ``n = 50,000``; the last
``n_val = max(1, n // 10)`` (5,000) validate and the first ``n - n_val`` (45,000) train; the test
file is the test split. LRA took ``train[:90%]`` / ``train[90%:]`` of TFDS's ``cifar10``, whose
record order is a hash-shuffle fixed when TFDS built the data set, so our validation images are a
different (equally random) 5,000 than LRA's; the test split is the same 10,000 images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_modules.common.base import BadRowPolicy, BadRows, ClassificationDataModule
from data_modules.common.cache import LABEL_ARRAY, CacheWriter
from data_modules.common.errors import DataFormatError
from data_modules.common.paths import resolve_task_dir

__all__ = [
    "CIFAR_DOWNLOAD_HINT",
    "ImageDataModule",
    "read_cifar_batch",
    "rgb_to_grayscale",
    "train_val_sizes",
]

CIFAR_DOWNLOAD_HINT = (
    "Download the CIFAR-10 binary version from "
    "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz (162 MB) and unpack it with "
    "`tar xzf cifar-10-binary.tar.gz`"
)
TASK_FOLDER = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
SIDE = 32
PIXELS = SIDE * SIDE
RECORD_BYTES = 1 + 3 * PIXELS
NUM_CLASSES = 10
# TensorFlow's luma weights, as float32 constants (TF builds them as a float32 tensor).
_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)


def rgb_to_grayscale(planes: np.ndarray) -> np.ndarray:
    """``tf.image.rgb_to_grayscale`` on ``uint8`` images, bit for bit.

    ``planes`` (n, 3, 1024) uint8 R, G, B -> (n, 1024) uint8. TensorFlow converts to float32 with
    ``convert_image_dtype`` (``x * (1/255)``), takes ``0.2989 R + 0.5870 G + 0.1140 B`` in float32,
    and converts back with ``convert_image_dtype``, which multiplies by ``255 + 0.5`` and casts,
    i.e. *truncates*::

        gray = uint8( float32(0.2989 r' + 0.5870 g' + 0.1140 b') * 255.5 ),  r' = float32(r / 255)

    Evaluated in float32 in this order it equals TensorFlow 2.21's output for all 2^24 colours
    (the test checks a digest of that table); float64 arithmetic differs on 237 of them.
    """
    scaled = planes.astype(np.float32) * np.float32(1.0 / 255.0)  # (n, 3, 1024)
    gray = scaled[:, 0] * _WEIGHTS[0] + scaled[:, 1] * _WEIGHTS[1]
    gray = gray + scaled[:, 2] * _WEIGHTS[2]  # (n, 1024), float32 throughout
    return (gray * np.float32(255.5)).astype(np.uint8)


def read_cifar_batch(
    path: Path,
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, DataFormatError]]]:
    """``(labels (n,) int64, planes (n, 3, 1024) uint8, problems)`` of one batch file.

    ``n`` counts the file's complete records. ``problems`` lists ``(record index, error)``: a
    label byte that is not 0-9 (that record), a truncated last record (file size not a multiple
    of 3,073; index ``n``, just after the complete ones) or an empty file (index 0).
    """
    data = path.read_bytes()
    n, tail = divmod(len(data), RECORD_BYTES)
    expected = f"{RECORD_BYTES}-byte records (1 label byte + {3 * PIXELS} pixel bytes)"
    problems: list[tuple[int, DataFormatError]] = []
    records = np.frombuffer(data, dtype=np.uint8, count=n * RECORD_BYTES).reshape(n, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    for index in np.flatnonzero(labels >= NUM_CLASSES):
        error = DataFormatError(path, f"record {index + 1}", "a label byte 0-9", int(labels[index]))
        problems.append((int(index), error))
    if not data:
        problems.append((0, DataFormatError(path, None, expected, "an empty file")))
    elif tail:
        got = (
            f"a truncated record of {tail} bytes (file size {len(data)} is not a multiple "
            f"of {RECORD_BYTES})"
        )
        problems.append((n, DataFormatError(path, f"record {n + 1}", expected, got)))
    return labels, records[:, 1:].reshape(n, 3, PIXELS), problems


def train_val_sizes(n: int) -> tuple[int, int]:
    """``(n_train, n_val)`` for ``n`` train records: the last ``max(1, n // 10)`` validate.

    45,000 / 5,000 on the real data; on a tiny file at least one record validates (none if
    ``n < 2``, so that training keeps one).
    """
    n_val = max(1, n // 10) if n >= 2 else 0
    return n - n_val, n_val


class ImageDataModule(ClassificationDataModule):
    """CIFAR-10 as sequences of 1,024 grayscale pixel tokens (LRA "Image").

    ``data_dir``: ``cifar-10-batches-bin/`` or the folder holding it. ``vocab_size`` 256 (pixel
    values; nothing is padded), ``num_classes`` 10, ``max_length`` 1,024. Batches:
    :class:`data_modules.common.batch.ClassificationBatch` (``seq`` 1,024, the mask all False).
    Bad data (truncated batch file, label byte > 9): :class:`DataFormatError` naming the file and
    the record, or skipped and counted with ``on_bad_row="skip"``.
    """

    cache_name = "cifar10-gray"
    tokenizer_version = "1"

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        on_bad_row: BadRowPolicy = "error",
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(
            data_dir, batch_size, PIXELS, num_workers, pin_memory, on_bad_row, cache_dir
        )  # fmt: skip
        self.save_hyperparameters()

    @property
    def vocab_size(self) -> int:
        return 256

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    def locate_sources(self) -> tuple[Path, dict[str, list[Path]]]:
        required = [*TRAIN_FILES, TEST_FILE]
        folder = resolve_task_dir(self.data_dir, TASK_FOLDER, required, CIFAR_DOWNLOAD_HINT)
        train = [folder / name for name in TRAIN_FILES]
        return folder, {"train": train, "val": train, "test": [folder / TEST_FILE]}

    def build_split(
        self, source: str, files: list[Path], writer: CacheWriter, bad_rows: BadRows
    ) -> None:
        # Positions run over the complete records of all files in order; a file-level problem
        # sits at the position just after its file's records, so it belongs to exactly one split.
        labels, planes, bad = [], [], []
        offset = 0
        for path in files:
            file_labels, file_planes, problems = read_cifar_batch(path)
            labels.append(file_labels)
            planes.append(file_planes)
            # (position, error, whether it is a record to drop or a file-level problem)
            bad.extend((offset + i, error, i < len(file_labels)) for i, error in problems)
            offset += len(file_labels)
        labels = np.concatenate(labels)
        planes = np.concatenate(planes)  # (n, 3, 1024)
        keep = np.ones(len(labels), dtype=bool)
        split = np.full(len(labels) + 1, source, dtype="<U5")  # the split owning each position
        if source != "test":
            n_train, n_val = train_val_sizes(len(labels))
            split[:] = "train"
            split[n_train + (n_val == 0) :] = "val"  # position n goes to val unless val is empty
        for position, error, is_record in bad:
            if split[position] == source:
                bad_rows(error)
            if is_record:
                keep[position] = False
        keep &= split[:-1] == source
        labels, planes = labels[keep], planes[keep]
        sequences = writer.sequences("input", np.uint8)
        for start in range(0, len(labels), 4096):  # bounded float32 temporaries
            for row in rgb_to_grayscale(planes[start : start + 4096]):
                sequences.append(row)
        writer.save(LABEL_ARRAY, labels)
        writer.meta.update(rows=len(labels))
