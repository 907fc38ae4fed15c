"""Retrieval: ACL Anthology Network citation pairs (LRA "Retrieval"), byte level.

Reads ``tsv_data/new_aan_pairs.{train,eval,test}.tsv`` from the LRA release: no header, one pair
per line, five tab-separated columns ``label  id1  id2  text1  text2``; ``label`` is a float,
``0.0`` or ``1.0`` (whether one paper cites the other). Fields are split on tabs with no
quoting (texts hold no tabs or newlines); a trailing ``\\r`` is dropped.

Tokens per document: raw bytes + 1, padding 0 (vocabulary 257), the head kept up to
``truncate_length`` (LRA: 4,000 bytes, padded to 4,096). Invalid UTF-8 is tokenised as bytes
unless ``strict_utf8=True``. Malformed rows: a column count other than 5, a label that is not a
number equal to 0 or 1, an empty text.

Batches: :class:`data_modules.common.batch.RetrievalBatch` (dual encoder: each document is
encoded on its own).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from data_modules.common.base import BadRowPolicy, BadRows, ClassificationDataModule
from data_modules.common.batch import (
    INPUT_IDS_1,
    INPUT_IDS_2,
    PADDING_MASK_1,
    PADDING_MASK_2,
    RetrievalBatch,
)
from data_modules.common.cache import LABEL_ARRAY, CacheWriter
from data_modules.common.errors import DataFormatError
from data_modules.common.paths import resolve_task_dir
from data_modules.lra.text import ByteLevelBinary, byte_tokens

__all__ = ["RetrievalDataModule", "parse_row", "read_aan_tsv"]

TASK_FOLDER = "tsv_data"
SOURCES = {"train": "train", "eval": "eval", "test": "test"}
COLUMNS = "label, id1, id2, text1, text2"


def parse_row(
    line: bytes, path: str | Path, line_number: int, strict_utf8: bool = False
) -> tuple[bytes, bytes, int]:
    """One line (without its newline) -> ``(text1, text2, label)``; else ``DataFormatError``."""
    line = line.removesuffix(b"\r")
    fields = line.split(b"\t")
    if len(fields) != 5:
        raise DataFormatError(
            path, line_number, f"5 tab-separated fields ({COLUMNS})", f"{len(fields)} fields"
        )
    raw_label, _id1, _id2, text1, text2 = fields
    try:
        value = float(raw_label.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise DataFormatError(path, line_number, "a numeric label 0.0 or 1.0", raw_label) from None
    if math.isnan(value) or value not in (0.0, 1.0):
        raise DataFormatError(path, line_number, "a label equal to 0 or 1", raw_label)
    for name, text in (("text1", text1), ("text2", text2)):
        if not text.strip():
            raise DataFormatError(path, line_number, f"a non-empty {name}", text)
        if strict_utf8:
            try:
                text.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataFormatError(
                    path,
                    line_number,
                    f"UTF-8 text in {name} (strict_utf8=True)",
                    text[error.start : error.start + 8],
                ) from None
    return text1, text2, int(value)


def read_aan_tsv(path: str | Path, bad_rows: BadRows | None = None, strict_utf8: bool = False):
    """Yield ``(line number, text1, text2, label)`` per well-formed line of an AAN pairs file."""
    bad_rows = bad_rows if bad_rows is not None else BadRows("error")
    with open(path, "rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            try:
                text1, text2, label = parse_row(
                    line.removesuffix(b"\n"), path, line_number, strict_utf8
                )
            except DataFormatError as error:
                bad_rows(error)
                continue
            yield line_number, text1, text2, label


class RetrievalDataModule(ByteLevelBinary, ClassificationDataModule):
    """AAN document matching, byte level (LRA "Retrieval"); validation reads the ``eval`` file.

    ``data_dir``: ``lra_release/``, ``lra_release/lra_release/`` or ``tsv_data/`` itself.
    ``max_length`` (per document) defaults to 4,096; LRA keeps 4,000 bytes
    (``truncate_length=4000``). ``vocab_size`` 257, ``num_classes`` 2.

    Args (beyond :class:`ClassificationDataModule`'s):
        strict_utf8: treat a text that is not valid UTF-8 as a bad row (default: tokenise bytes).
    """

    cache_name = "aan"
    tokenizer_version = "1"
    batch_fields = {
        "input1": (INPUT_IDS_1, PADDING_MASK_1),
        "input2": (INPUT_IDS_2, PADDING_MASK_2),
    }
    batch_layout = RetrievalBatch
    split_sources = {"train": "train", "val": "eval", "test": "test"}

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 32,
        max_length: int = 4096,
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
        names = {source: f"new_aan_pairs.{source}.tsv" for source in SOURCES}
        folder = resolve_task_dir(self.data_dir, TASK_FOLDER, list(names.values()))
        return folder, {source: [folder / name] for source, name in names.items()}

    def build_split(
        self, source: str, files: list[Path], writer: CacheWriter, bad_rows: BadRows
    ) -> None:
        first = writer.sequences("input1", np.uint16)
        second = writer.sequences("input2", np.uint16)
        labels: list[int] = []
        for path in files:
            for _, text1, text2, label in read_aan_tsv(path, bad_rows, self.strict_utf8):
                first.append(byte_tokens(text1, self.truncate_length))
                second.append(byte_tokens(text2, self.truncate_length))
                labels.append(label)
        writer.save(LABEL_ARRAY, np.asarray(labels, dtype=np.int64))
        writer.meta.update(rows=len(labels))
