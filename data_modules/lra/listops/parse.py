"""Reading and tokenising the official ``basic_{train,val,test}.tsv`` files
(:mod:`data_modules.lra.listops.format`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from data_modules.common.base import BadRows
from data_modules.common.errors import DataFormatError
from data_modules.lra.listops.format import HEADER, OPERATORS, TOKEN_IDS, UNK_ID

__all__ = ["TOKENIZERS", "parse_row", "read_listops_tsv", "tokenize"]

_LABEL = re.compile(r"[0-9]+")


TOKENIZERS = ("brackets", "lra")
_WORD = re.compile(r"\w+")  # tfds Tokenizer(alphanum_only=True): runs of [A-Za-z0-9_]
# The alphanumeric part of each operator -> its id ("MAX" -> the id of "[MAX").
_LRA_IDS = {**TOKEN_IDS, **{op.lstrip("["): TOKEN_IDS[op] for op in OPERATORS}}


def tokenize(source: str, tokenizer: str = "brackets") -> list[int]:
    """Token ids of one ``Source``; unknown symbols -> ``<unk>`` (``format``'s docstring).

    brackets: ``]`` -> ``X``, parentheses dropped, split on white space.
    lra: alphanumeric runs only (``[MAX`` -> ``MAX``; ``]``, ``(``, ``)`` dropped).
    """
    if tokenizer == "lra":
        return [_LRA_IDS.get(word, UNK_ID) for word in _WORD.findall(source)]
    symbols = source.replace("]", "X").replace("(", "").replace(")", "").split()
    return [TOKEN_IDS.get(symbol, UNK_ID) for symbol in symbols]


def parse_row(
    line: bytes, path: str | Path, line_number: int, tokenizer: str = "brackets"
) -> tuple[list[int], int]:
    """One data line (without its newline) -> ``(token ids, label)``; else ``DataFormatError``."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise DataFormatError(path, line_number, "UTF-8 text", line) from None
    text = text.removesuffix("\r")
    fields = text.split("\t")
    if len(fields) != 2:
        raise DataFormatError(
            path, line_number, "2 tab-separated fields (Source, Target)", f"{len(fields)} fields"
        )
    source, target = fields
    target = target.strip()
    if not _LABEL.fullmatch(target):
        raise DataFormatError(path, line_number, "an integer Target 0-9", target)
    label = int(target)
    if label > 9:
        raise DataFormatError(path, line_number, "a Target in the range 0-9", target)
    ids = tokenize(source, tokenizer)
    if not ids:
        raise DataFormatError(path, line_number, "a non-empty Source", source)
    return ids, label


def read_listops_tsv(
    path: str | Path, bad_rows: BadRows | None = None, tokenizer: str = "brackets"
) -> Iterator[tuple[int, list[int], int]]:
    """Yield ``(line number, token ids, label)`` per data row of a ``basic_*.tsv`` file.

    The header must be ``Source\\tTarget`` (always an error otherwise: the file is not ListOps).
    Malformed rows go to ``bad_rows`` (default: raise).
    """
    bad_rows = bad_rows if bad_rows is not None else BadRows("error")
    with open(path, "rb") as handle:
        header = handle.readline()
        if header.removeprefix(b"\xef\xbb\xbf").rstrip(b"\r\n") != HEADER.encode():
            raise DataFormatError(path, 1, "the header 'Source<TAB>Target'", header[:80])
        for line_number, line in enumerate(handle, start=2):
            try:
                ids, label = parse_row(line.removesuffix(b"\n"), path, line_number, tokenizer)
            except DataFormatError as error:
                bad_rows(error)
                continue
            yield line_number, ids, label
