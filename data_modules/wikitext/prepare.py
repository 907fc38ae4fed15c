"""WikiText-103 preparation: the official files read as Transformer-XL does, the vocabulary,
and the numericalised ``.npy`` cache that :mod:`data_modules.wikitext.dataset` batches.

Reading (the standard one, Transformer-XL and its descendants)::

    tokens(line) = line.split() + ["<eos>"]        # a blank line is a lone "<eos>"

The vocabulary is counted on ``wiki.train.tokens`` only: ``<eos>`` first, then every other word by
descending count; words with equal counts keep the order of their first occurrence in train
(exactly ``collections.Counter.most_common``, which Transformer-XL uses: the vocabulary order, and
so the adaptive-softmax clusters, match its ids). On the real data that is 267,735 words.
A valid/test word missing from the vocabulary becomes ``<unk>`` (WikiText's own unknown word,
present in train); if the train file has no ``<unk>``, such a line is a bad row (see
``on_bad_row``), because silently inventing an id would change the vocabulary.

Caching (:class:`data_modules.common.cache.ArrayCache`): the first use numericalises all three
files into ``int32`` ``.npy`` arrays plus ``vocab.txt`` (one word per line, id = line number)
under ``<cache_dir>/wikitext103-<key>/`` (default ``cache_dir``: ``wikitext-103/.fmmformer_cache``),
where ``key`` hashes the source files (path, size, mtime) and the reading settings; the entry is
built in a staging folder renamed into place when complete, under a file lock, so DDP processes
build it once. Later runs memory-map the arrays. The train file is read once: words get
provisional ids in first-occurrence order while it streams by in 8 MiB blocks, counts come from
``np.bincount``, and a permutation maps provisional to final ids (about 40 s and < 1 GB for
100 M tokens on 2 cores: ``bench/wikitext_prepare.py``).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from itertools import filterfalse, repeat
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from data_modules.common.base import BadRows
from data_modules.common.cache import ArrayCache, CachedArrays, CacheWriter
from data_modules.common.errors import (
    DataError,
    DataFormatError,
    DataNotFoundError,
    SkippedRowsWarning,
)

__all__ = [
    "EOS",
    "SPLITS",
    "UNK",
    "build_corpus",
    "prepare_corpus",
    "read_vocab",
    "resolve_wikitext_dir",
]

log = logging.getLogger(__name__)

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")
FILE_NAMES = {split: f"wiki.{split}.tokens" for split in SPLITS}
DOWNLOAD_HINT = (
    "Download wikitext-103-v1.zip (the tokenised release, 181 MB) from "
    "https://wikitext.smerity.com/wikitext-103-v1.zip (formerly "
    "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-v1.zip) and unzip it"
)
# Bump when the reading rule or the cache layout changes: old caches are then ignored.
READER_VERSION = "transformer-xl/1"
# Bytes read per block; ~1.7 M tokens of WikiText, whose str objects (~60 B each) stay < 150 MB.
_BLOCK_BYTES = 8 << 20

OnBadRow = Literal["error", "skip"]


# ---------------------------------------------------------------------------------------------
# Locating the files
# ---------------------------------------------------------------------------------------------


def resolve_wikitext_dir(data_dir: str | os.PathLike[str]) -> Path:
    """The folder holding ``wiki.{train,valid,test}.tokens``: ``data_dir`` or ``data_dir/wikitext-103``.

    Raises :class:`DataNotFoundError` naming the first missing file.
    """
    root = Path(data_dir).expanduser()
    candidates = [root, root / "wikitext-103"]
    for folder in candidates:
        if all((folder / name).is_file() for name in FILE_NAMES.values()):
            return folder
    best = max(candidates, key=lambda f: sum((f / n).is_file() for n in FILE_NAMES.values()))
    if not any((best / n).is_file() for n in FILE_NAMES.values()):
        best = root / "wikitext-103"
    missing = next(best / n for n in FILE_NAMES.values() if not (best / n).is_file())
    layout = (
        "Pass as data_dir the folder wikitext-103/ (or its parent); it must contain "
        + ", ".join(FILE_NAMES.values())
    )
    if not root.exists():
        layout = f"The data_dir {data_dir} does not exist. " + layout
    raise DataNotFoundError(missing, layout, DOWNLOAD_HINT)


# ---------------------------------------------------------------------------------------------
# Reading: blocks of whole lines -> token lists
# ---------------------------------------------------------------------------------------------


def _read_blocks(path: Path, block_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Yield ``(first_line_number, raw)`` blocks of whole lines, newlines normalised to ``\\n``.

    Python's text mode (what Transformer-XL reads with) ends a line at ``\\n``, ``\\r\\n`` or a
    lone ``\\r``; normalising the bytes the same way keeps our lines identical to its lines. A
    cut is made after the last ``\\n`` of a read, so a ``\\r\\n`` pair is never split. The final
    block may lack its trailing newline (a last line without one is still a line).
    """
    line_no = 1
    rest = b""
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(block_bytes)
            if not chunk:
                break
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # a line longer than a block: keep reading
                rest = data
                continue
            block, rest = data[:cut], data[cut:]
            if b"\r" in block:
                block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            yield line_no, block
            line_no += block.count(b"\n")
    if rest:
        if b"\r" in rest:
            rest = rest.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        yield line_no, rest


def _split_block(text: str) -> list[str]:
    """``line.split() + ["<eos>"]`` for every line of ``text``, concatenated.

    One C-level ``split`` over the block instead of one per line: replacing each newline by
    `` <eos> `` yields exactly the per-line result (a newline is white space to ``str.split``,
    which drops empty strings, so a blank line gives a lone ``<eos>``). A final line without a
    newline still ends with ``<eos>``, as in Transformer-XL.
    """
    tokens = text.replace("\n", f" {EOS} ").split()
    if text and not text.endswith("\n"):
        tokens.append(EOS)
    return tokens


def _decoded_lines(
    path: Path, first_line: int, raw: bytes, bad: BadRows
) -> Iterator[tuple[int, str]]:
    """Slow path, only for a block that failed to decode: each line decoded on its own."""
    pieces = raw.split(b"\n")
    if raw.endswith(b"\n"):
        pieces.pop()
    for offset, piece in enumerate(pieces):
        try:
            yield first_line + offset, piece.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad(
                DataFormatError(
                    path,
                    first_line + offset,
                    "UTF-8 text",
                    piece[max(0, exc.start - 10) : exc.end + 10],
                )
            )


def _token_blocks(
    path: Path, bad: BadRows, block_bytes: int = _BLOCK_BYTES
) -> Iterator[tuple[list[int], str, list[str]]]:
    """Yield ``(line_numbers, text, tokens)`` per block; undecodable lines go to ``bad``.

    ``line_numbers[i]`` is the 1-based file line of the block's ``i``-th line of ``text``
    (they skip the dropped lines when ``on_bad_row="skip"``).
    """
    for first_line, raw in _read_blocks(path, block_bytes):
        try:
            text = raw.decode("utf-8")
            n_lines = raw.count(b"\n") + (not raw.endswith(b"\n"))
            numbers = range(first_line, first_line + n_lines)
        except UnicodeDecodeError:
            kept = list(_decoded_lines(path, first_line, raw, bad))
            # Every kept line gets a newline: the tokens are the same (a last line without one
            # still ends with <eos>), and the lines stay separate.
            text = "".join(line + "\n" for _, line in kept)
            numbers = [number for number, _ in kept]
        yield numbers, text, _split_block(text)


def _lines(text: str) -> list[str]:
    """The lines of ``text`` as Python's file iteration gives them, newlines stripped."""
    lines = text.split("\n")
    if text.endswith("\n") or not text:
        lines.pop()
    return lines


# ---------------------------------------------------------------------------------------------
# Vocabulary and numericalisation
# ---------------------------------------------------------------------------------------------


def _count_and_number_train(path: Path, bad: BadRows) -> tuple[list[str], np.ndarray, list]:
    """One pass over train: provisional ids in first-occurrence order, then counts.

    Returns ``(words_in_first_occurrence_order, counts, chunks_of_provisional_ids)``. Counting
    is a ``np.bincount`` over the provisional ids, so no per-token Python object outlives its
    block; ranking by count afterwards needs only a permutation of the ids.
    """
    prov: dict[str, int] = {}
    chunks: list[np.ndarray] = []
    for _, _, tokens in _token_blocks(path, bad):
        # dict.fromkeys keeps first-occurrence order; only the block's new words loop in Python.
        new = list(filterfalse(prov.__contains__, dict.fromkeys(tokens)))
        prov.update(zip(new, range(len(prov), len(prov) + len(new)), strict=True))
        chunks.append(np.fromiter(map(prov.__getitem__, tokens), np.int32, count=len(tokens)))
    counts = np.zeros(len(prov), dtype=np.int64)
    for chunk in chunks:
        counts += np.bincount(chunk, minlength=len(prov))
    return list(prov), counts, chunks


def _rank_vocabulary(words: list[str], counts: np.ndarray) -> tuple[list[str], np.ndarray]:
    """``<eos>`` first, then descending count, ties in first-occurrence order.

    Returns ``(vocab, perm)`` with ``perm[provisional_id] = final_id``. ``words`` is in
    first-occurrence order, so a stable sort on ``-counts`` reproduces ``Counter.most_common``.
    """
    order = np.argsort(-counts, kind="stable")
    eos = words.index(EOS)
    order = np.concatenate([[eos], order[order != eos]])
    perm = np.empty(len(words), dtype=np.int32)
    perm[order] = np.arange(len(words), dtype=np.int32)
    return [words[i] for i in order], perm


def _numericalise(path: Path, stoi: dict[str, int], bad: BadRows) -> list[np.ndarray]:
    """Ids of a valid/test file; unknown words become ``<unk>`` (a bad line if there is none)."""
    unk = stoi.get(UNK, -1)
    chunks: list[np.ndarray] = []
    for numbers, text, tokens in _token_blocks(path, bad):
        ids = np.fromiter(map(stoi.get, tokens, repeat(unk)), np.int32, count=len(tokens))
        if unk < 0 and (ids < 0).any():
            # Slow path, only without <unk>: find (and report or drop) the lines at fault.
            kept: list[str] = []
            for number, line in zip(numbers, _lines(text), strict=True):
                words = line.split()
                missing = next(filterfalse(stoi.__contains__, words), None)
                if missing is not None:
                    bad(
                        DataFormatError(
                            path,
                            number,
                            f"only words of the train vocabulary (it has no {UNK} to map "
                            "unknown words to)",
                            missing,
                        )
                    )
                    continue
                kept.extend(words)
                kept.append(EOS)
            ids = np.fromiter(map(stoi.__getitem__, kept), np.int32, count=len(kept))
        chunks.append(ids)
    return chunks


# ---------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------


def _write_npy(path: Path, chunks: list[np.ndarray], perm: Optional[np.ndarray] = None) -> int:
    """Write the concatenation of ``chunks`` (mapped through ``perm``) as a 1-D int32 ``.npy``.

    Written chunk by chunk (a chunk is freed as soon as it is on disk) so that the whole array
    never sits in memory twice.
    """
    total = sum(len(c) for c in chunks)
    with open(path, "wb") as handle:
        header = {
            "descr": np.lib.format.dtype_to_descr(np.dtype(np.int32)),
            "fortran_order": False,
            "shape": (total,),
        }
        np.lib.format.write_array_header_1_0(handle, header)
        while chunks:
            chunk = chunks.pop(0)
            out = chunk if perm is None else perm[chunk]
            handle.write(np.ascontiguousarray(out, dtype=np.int32).tobytes())
    return total


def build_corpus(source_dir: Path, out_dir: Path, on_bad_row: OnBadRow = "error") -> dict:
    """Read the three files; write ``vocab.txt`` and ``{train,valid,test}.npy`` into ``out_dir``.

    Returns the metadata: tokens per split, vocabulary size, skipped lines per split.
    """
    meta: dict = {"tokens": {}, "skipped_lines": {}, "first_bad_line": {}}
    train_path = source_dir / FILE_NAMES["train"]
    bad = BadRows(on_bad_row)
    words, counts, chunks = _count_and_number_train(train_path, bad)
    if not words:
        raise DataFormatError(train_path, None, "at least one line of text", "an empty file")
    vocab, perm = _rank_vocabulary(words, counts)
    del words, counts
    meta["tokens"]["train"] = _write_npy(out_dir / "train.npy", chunks, perm)
    meta["skipped_lines"]["train"], meta["first_bad_line"]["train"] = bad.skipped, bad.first
    (out_dir / "vocab.txt").write_text("".join(w + "\n" for w in vocab), encoding="utf-8")
    stoi = {word: i for i, word in enumerate(vocab)}
    for split in ("valid", "test"):
        path = source_dir / FILE_NAMES[split]
        bad = BadRows(on_bad_row)
        meta["tokens"][split] = _write_npy(out_dir / f"{split}.npy", _numericalise(path, stoi, bad))
        if not meta["tokens"][split]:
            got = (
                f"no tokens ({bad.skipped} malformed line(s) skipped)"
                if bad.skipped
                else "an empty file"
            )
            raise DataFormatError(path, None, "at least one line of text", got)
        meta["skipped_lines"][split], meta["first_bad_line"][split] = bad.skipped, bad.first
    meta["vocab_size"] = len(vocab)
    return meta


def prepare_corpus(
    source_dir: Path, cache_root: Path, on_bad_row: OnBadRow = "error"
) -> CachedArrays:
    """The cache entry for these sources and settings, built first if missing.

    :class:`ArrayCache` makes it safe: built in a staging folder renamed into place when complete,
    under a file lock so that concurrent DDP processes build it once.
    """
    sources = [source_dir / FILE_NAMES[split] for split in SPLITS]
    settings = {"reader": READER_VERSION, "on_bad_row": on_bad_row}
    cache = ArrayCache(cache_root, "wikitext103", sources, settings)
    built = False

    def builder(writer: CacheWriter) -> None:
        nonlocal built
        built = True
        log.info("Numericalising WikiText-103 from %s into %s", source_dir, cache.directory)
        writer.meta.update(build_corpus(source_dir, writer.staging, on_bad_row))

    cached = cache.get_or_build(builder)
    if built:
        for split in SPLITS:
            skipped = cached.meta["skipped_lines"][split]
            if skipped:
                warnings.warn(
                    f"WikiText103DataModule: skipped {skipped} malformed line(s) of "
                    f"{source_dir / FILE_NAMES[split]} (on_bad_row='skip'). "
                    f"First: {cached.meta['first_bad_line'][split]}",
                    SkippedRowsWarning,
                    stacklevel=2,
                )
    return cached


def read_vocab(cached: CachedArrays) -> list[str]:
    """The vocabulary stored as ``vocab.txt`` (id = line number), checked against the manifest."""
    path = cached.directory / "vocab.txt"
    try:
        vocab = path.read_text(encoding="utf-8").split("\n")[:-1]
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(
            f"Cannot read {path} ({error}); delete {cached.directory} to rebuild it"
        ) from error
    if len(vocab) != cached.meta["vocab_size"]:
        raise DataError(
            f"{path} lists {len(vocab)} words, its manifest says {cached.meta['vocab_size']}; "
            f"delete {cached.directory} to rebuild it"
        )
    return vocab
