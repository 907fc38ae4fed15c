"""Tiny data sets in the official on-disk formats, laid out as the configs expect under ``data/``.

The writers are the data-module tests' own (tests/data_modules); this module only puts every
data set under one folder, so that ``--data.init_args.data_dir <folder>`` serves any config,
exactly as ``data_dir: data`` does on a real machine.
"""

from __future__ import annotations

from pathlib import Path

from tests.data_modules.conftest import (
    AAN_ROWS,
    IMDB_REVIEWS,
    LISTOPS_ROWS,
    write_aan_file,
    write_listops_file,
)
from tests.data_modules.fixtures_c2 import (
    WIKI_TEST,
    WIKI_TRAIN,
    WIKI_VALID,
    write_cifar,
    write_pathfinder,
    write_wikitext,
)

# More ListOps rows than the data-module tests need: a few training steps and a class imbalance
# (label 4 is the most frequent) that the majority baseline must find.
LISTOPS_TRAIN = [
    ("( ( ( ( [MAX 3 ) 4 ) 3 ) ] )", "4"),
    ("( ( ( [MIN 7 ) ( ( ( [SM 5 ) 9 ) ] ) ) ] )", "4"),
    ("( ( ( ( ( [MED 1 ) 2 ) 8 ) 9 ) ] )", "5"),
    ("( ( ( [MAX 1 ) 4 ) ] )", "4"),
    ("( ( ( [MIN 4 ) 6 ) ] )", "4"),
    ("( ( ( [SM 2 ) 2 ) ] )", "4"),
    ("( ( ( [MAX 0 ) 7 ) ] )", "7"),
    ("( ( ( [MIN 9 ) 8 ) ] )", "8"),
]
LISTOPS_VAL = [("( ( ( [SM 9 ) 9 ) ] )", "8"), ("( ( ( [MIN 0 ) 6 ) ] )", "0"),
               ("( ( ( [MAX 4 ) 1 ) ] )", "4"), ("( ( ( [MED 4 ) 4 ) ] )", "4")]  # fmt: skip


def write_listops(root: Path) -> None:
    folder = root / "lra_release" / "lra_release" / "listops-1000"
    folder.mkdir(parents=True, exist_ok=True)
    rows = {"train": LISTOPS_TRAIN, "val": LISTOPS_VAL, "test": LISTOPS_ROWS["test"]}
    for split, split_rows in rows.items():
        write_listops_file(folder / f"basic_{split}.tsv", split_rows)


def write_imdb(root: Path) -> None:
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            (root / "aclImdb" / split / label).mkdir(parents=True, exist_ok=True)
    for split, label, name, data in IMDB_REVIEWS:
        (root / "aclImdb" / split / label / name).write_bytes(data)


def write_aan(root: Path) -> None:
    folder = root / "lra_release" / "lra_release" / "tsv_data"
    folder.mkdir(parents=True, exist_ok=True)
    for source in ("train", "eval", "test"):
        write_aan_file(folder / f"new_aan_pairs.{source}.tsv", AAN_ROWS[source])


def big_vocabulary_wikitext(words: int) -> str:
    """A training text with more than ``words`` distinct words (the paper's adaptive-softmax
    cutoffs, 20k / 40k / 200k, need a vocabulary above 200,000); it holds every word of the
    validation and test texts too, as WikiText's train split does."""
    line = " ".join(f"w{i}" for i in range(words))
    return WIKI_TRAIN + WIKI_VALID + WIKI_TEST + f" \n = Words = \n \n {line} \n"


def make_data_root(root: Path, wikitext_words: int | None = None) -> Path:
    """Every data set under ``root`` (as under ``data/``); returns ``root``."""
    write_listops(root)
    write_imdb(root)
    write_aan(root)
    write_cifar(root)
    write_pathfinder(root)
    if wikitext_words is None:
        write_wikitext(root)
    else:
        write_wikitext(root, train=big_vocabulary_wikitext(wikitext_words))
    return root
