"""Tiny files in the official on-disk formats (see ../shared/FORMATS.md), written per test.

Each fixture is a factory: call it with the rows you want; it returns the folder to pass as
``data_dir`` (the layout mimics the real release: ``lra_release/lra_release/<task>/``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

# ListOps rows as they appear in basic_*.tsv (parentheses kept, `]` closes an operator).
LISTOPS_ROWS = {
    "train": [
        ("( ( ( ( [MAX 3 ) 4 ) 3 ) ] )", "4"),
        ("( ( ( [MIN 7 ) ( ( ( [SM 5 ) 9 ) ] ) ) ] )", "4"),
        ("( ( ( ( ( [MED 1 ) 2 ) 8 ) 9 ) ] )", "5"),
    ],
    "val": [("( ( ( [SM 9 ) 9 ) ] )", "8"), ("( ( ( [MIN 0 ) 6 ) ] )", "0")],
    "test": [("( ( ( [MED 2 ) 7 ) ] )", "4")],
}


def write_listops_file(path: Path, rows: Sequence[tuple[str, str]] | Sequence[bytes]) -> None:
    """Header ``Source\\tTarget`` then one row per line; raw ``bytes`` rows are written as is."""
    lines = [b"Source\tTarget"]
    for row in rows:
        lines.append(row if isinstance(row, bytes) else "\t".join(row).encode())
    path.write_bytes(b"\n".join(lines) + b"\n")


@pytest.fixture
def make_listops(tmp_path: Path) -> Callable[..., Path]:
    """``make_listops(rows_by_split=LISTOPS_ROWS)`` -> the ``lra_release`` folder."""

    def make(rows_by_split: dict | None = None) -> Path:
        rows_by_split = LISTOPS_ROWS if rows_by_split is None else rows_by_split
        folder = tmp_path / "lra_release" / "lra_release" / "listops-1000"
        folder.mkdir(parents=True, exist_ok=True)
        for split in ("train", "val", "test"):
            write_listops_file(folder / f"basic_{split}.tsv", rows_by_split[split])
        return tmp_path / "lra_release"

    return make


# IMDB reviews: (split, label folder, file name, raw bytes).
IMDB_REVIEWS = [
    ("train", "pos", "10_9.txt", b"Great film."),
    ("train", "pos", "2_8.txt", "Loved the café scene!".encode()),
    ("train", "neg", "3_1.txt", b"Awful.<br /><br />Just awful."),
    ("test", "pos", "0_10.txt", "Ten stars ★".encode()),
    ("test", "neg", "1_2.txt", b"Boring"),
    ("test", "neg", "7_4.txt", b"Meh \xff\xfe raw bytes"),  # not UTF-8: bytes are still tokens
]


@pytest.fixture
def make_imdb(tmp_path: Path) -> Callable[..., Path]:
    """``make_imdb(reviews=IMDB_REVIEWS)`` -> the folder holding ``aclImdb/``."""

    def make(reviews: Sequence[tuple[str, str, str, bytes]] | None = None) -> Path:
        reviews = IMDB_REVIEWS if reviews is None else reviews
        root = tmp_path / "imdb"
        for split in ("train", "test"):
            for label in ("pos", "neg"):
                (root / "aclImdb" / split / label).mkdir(parents=True, exist_ok=True)
        (root / "aclImdb" / "train" / "unsup").mkdir(exist_ok=True)
        (root / "aclImdb" / "train" / "unsup" / "0_0.txt").write_bytes(b"unlabelled, ignored")
        for split, label, name, data in reviews:
            (root / "aclImdb" / split / label / name).write_bytes(data)
        return root

    return make


# AAN pairs: label (float text), id1, id2, text1, text2 -- no header.
AAN_ROWS = {
    "train": [
        (b"1.0", b"P00-1001", b"W99-0613", b"We parse.", "Un caf\u00e9".encode()),
        (b"0.0", b"J93-2004", b"P02-1040", b"BLEU", b"Penn Treebank"),
    ],
    "eval": [(b"0.0", b"A", b"B", b"ab", b"c")],
    "test": [(b"1.0", b"C", b"D", b"xyz", b"\x00\xff")],
}


def write_aan_file(
    path: Path, rows: Sequence[Sequence[bytes]] | Sequence[bytes], newline: bytes = b"\n"
) -> None:
    """One tab-joined row per line; raw ``bytes`` rows are written as is."""
    lines = [row if isinstance(row, bytes) else b"\t".join(row) for row in rows]
    path.write_bytes(b"".join(line + newline for line in lines))


@pytest.fixture
def make_aan(tmp_path: Path) -> Callable[..., Path]:
    """``make_aan(rows_by_source=AAN_ROWS, newline=b"\\n")`` -> the ``lra_release`` folder."""

    def make(rows_by_source: dict | None = None, newline: bytes = b"\n") -> Path:
        rows_by_source = AAN_ROWS if rows_by_source is None else rows_by_source
        folder = tmp_path / "lra_release" / "lra_release" / "tsv_data"
        folder.mkdir(parents=True, exist_ok=True)
        for source in ("train", "eval", "test"):
            write_aan_file(folder / f"new_aan_pairs.{source}.tsv", rows_by_source[source], newline)
        return tmp_path / "lra_release"

    return make
