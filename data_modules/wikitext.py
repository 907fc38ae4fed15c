"""WikiText-103 word-level language modelling, read and batched as Transformer-XL does.

Reading (the standard one, Transformer-XL and its descendants)::

    tokens(line) = line.split() + ["<eos>"]        # a blank line is a lone "<eos>"

The vocabulary is counted on ``wiki.train.tokens`` only: ``<eos>`` first, then every other word by
descending count; words with equal counts keep the order of their first occurrence in train
(exactly ``collections.Counter.most_common``, which Transformer-XL uses: the vocabulary order, and
so the adaptive-softmax clusters, match its ids). On the real data that is 267,735 words.
A valid/test word missing from the vocabulary becomes ``<unk>`` (WikiText's own unknown word,
present in train); if the train file has no ``<unk>``, such a line is a bad row (see
``on_bad_row``), because silently inventing an id would change the vocabulary.

Batching (``LMOrderedIterator`` of Transformer-XL)::

    S      = batch_size * world_size                    # global number of streams
    n_step = len(tokens) // S                           # tokens per stream (the tail is dropped)
    stream s = tokens[s * n_step : (s + 1) * n_step]    # rank r owns streams r*B ... r*B + B-1
    batch i: input_ids  = streams[:, i*T     : i*T + T]          # (B, T)
             target_ids = streams[:, i*T + 1 : i*T + T + 1]      # inputs shifted by one

so consecutive batches continue each stream (what a recurrent memory needs), every rank sees the
same number of batches, and the last window of a split may be shorter than ``T``.

Sliding-window evaluation (``sliding_window=True``) gives each scored target up to ``T`` tokens of
context: window k ends at ``e_k = min(k * stride + T, n_step - 1)`` and starts at
``max(0, e_k - T)`` (the last window is pulled back to full length), and only the targets not
scored by an earlier window count: the batch carries ``"loss_mask"`` (B, T) bool, True where the
target counts. Every target of a stream is scored exactly once.

Full-context evaluation (``val_full_context`` / ``test_full_context``), as the released
``eval_sliding_window.py`` (Transformer-XL's data iterator with ``sliding_window=True``, batch 1)
scores: the whole split is one stream of n tokens; window w holds inputs ``tokens[w : w+T]``
and targets ``tokens[w+1 : w+T+1]``; window 0 scores all its T targets, every later window
only its last, so every target from the T-th on is predicted from exactly T tokens before it,
and every target is scored once (n - 1 in all, nothing dropped). Windows are independent, so
``eval_batch_size`` consecutive windows make one batch (a final short batch is padded with
windows whose ``loss_mask`` is all False); with DDP, rank r takes windows r*B .. r*B + B-1 of
each group of B * world_size. Cost: n - T + 1 windows of T tokens, T times a plain pass.

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

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader

from data_modules.common.base import BadRows
from data_modules.common.cache import CACHE_DIRNAME, ArrayCache, CachedArrays, CacheWriter
from data_modules.common.errors import (
    DataError,
    DataFormatError,
    DataNotFoundError,
    SkippedRowsWarning,
)

__all__ = [
    "EOS",
    "UNK",
    "FullContextDataset",
    "LMStreamDataset",
    "WikiText103DataModule",
    "build_corpus",
    "resolve_wikitext_dir",
    "stream_windows",
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


# ---------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------


def stream_windows(
    n_step: int, tgt_len: int, stride: Optional[int] = None
) -> list[tuple[int, int, int]]:
    """Windows over a stream of ``n_step`` tokens as ``(begin, end, score_from)`` triples.

    Inputs are ``stream[begin:end]``, targets ``stream[begin+1:end+1]``; targets at window
    positions ``>= score_from`` count. ``stride=None``: consecutive windows of ``tgt_len``
    (the last may be shorter), all targets count. With a stride: see the module docstring.
    """
    n_targets = n_step - 1
    if n_targets < 1:
        return []
    if stride is None:
        return [(b, min(b + tgt_len, n_targets), 0) for b in range(0, n_targets, tgt_len)]
    windows = []
    scored = 0  # targets [0, scored) of the stream are already scored
    k = 0
    while scored < n_targets:
        end = min(k * stride + tgt_len, n_targets)
        begin = max(0, end - tgt_len)
        windows.append((begin, end, scored - begin))
        scored = end
        k += 1
    return windows


class LMStreamDataset(IterableDataset):
    """Batches of one process's streams: yields ``{"input_ids", "target_ids"[, "loss_mask"]}``.

    ``tokens`` is the whole split (1-D); ``rank``/``world_size`` pick this process's
    ``batch_size`` streams among ``batch_size * world_size``. Each item is a whole batch (use a
    ``DataLoader`` with ``batch_size=None``); with DataLoader workers, worker ``w`` of ``n``
    produces batches ``w, w+n, ...`` and the loader returns them in order.

    Stateful for ``torchdata``'s ``StatefulDataLoader`` (which calls ``state_dict`` in the
    process, main or worker, that iterates): the state is the next window index, so a run
    resumed from a mid-epoch checkpoint continues with the window it would have read next.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        tgt_len: int,
        rank: int = 0,
        world_size: int = 1,
        stride: Optional[int] = None,
    ) -> None:
        if batch_size < 1 or tgt_len < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need batch_size >= 1, tgt_len >= 1, 0 <= rank < world_size; got "
                f"batch_size={batch_size}, tgt_len={tgt_len}, rank={rank}, world_size={world_size}"
            )
        if stride is not None and not 1 <= stride <= tgt_len:
            raise ValueError(f"eval stride must lie in [1, tgt_len={tgt_len}], got {stride}")
        n_streams = batch_size * world_size
        n_step = len(tokens) // n_streams
        if n_step < 2:
            raise DataError(
                f"A split of {len(tokens)} tokens is too short for {n_streams} streams "
                f"(batch_size {batch_size} x world_size {world_size}): each stream needs at "
                "least 2 tokens"
            )
        self.tokens = tokens
        self.rows = (rank * batch_size, (rank + 1) * batch_size, n_streams, n_step)
        self.windows = stream_windows(n_step, tgt_len, stride)
        self.sliding = stride is not None
        self._next_window = 0  # the window the running pass yields next
        self._resume_at: Optional[int] = None  # set by load_state_dict for the next pass

    @property
    def streams(self) -> np.ndarray:
        """This process's streams, a (batch_size, n_step) view of ``tokens`` (no copy)."""
        first, last, n_streams, n_step = self.rows
        return self.tokens[: n_streams * n_step].reshape(n_streams, n_step)[first:last]

    def __getstate__(self) -> dict:
        # A memmap would pickle as a full copy of the split into every spawned worker: send
        # where it lives instead, and map it again on the other side.
        state = self.__dict__.copy()
        tokens = state["tokens"]
        if isinstance(tokens, np.memmap) and tokens.filename is not None:
            state["tokens"] = (tokens.filename, tokens.offset, tokens.shape, tokens.dtype.str)
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["tokens"], tuple):
            filename, offset, shape, dtype = state["tokens"]
            state["tokens"] = np.memmap(filename, dtype=dtype, mode="r", offset=offset, shape=shape)
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.windows)

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        begin, end, score_from = self.windows[index]
        streams = self.streams  # (B, n_step)
        inputs = np.asarray(streams[:, begin:end], dtype=np.int64)  # (B, T)
        targets = np.asarray(streams[:, begin + 1 : end + 1], dtype=np.int64)  # (B, T)
        out = {"input_ids": torch.from_numpy(inputs), "target_ids": torch.from_numpy(targets)}
        if self.sliding:
            mask = torch.zeros(inputs.shape, dtype=torch.bool)  # (B, T)
            mask[:, score_from:] = True
            out["loss_mask"] = mask
        return out

    def state_dict(self) -> dict[str, int]:
        return {"next_window": self._next_window}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = int(state["next_window"])

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        start, step = (0, 1) if info is None else (info.id, info.num_workers)
        resume, self._resume_at = self._resume_at, None
        # A saved position at (or past) the end means the pass was complete: start a new one.
        if resume is not None and resume < len(self.windows):
            if (resume - start) % step:
                raise ValueError(
                    f"window {resume} does not belong to loader worker {start} of {step}: "
                    "resume with the num_workers the checkpoint was saved with"
                )
            start = resume
        self._next_window = start
        for index in range(start, len(self.windows), step):
            self._next_window = index + step
            yield self.batch(index)


class FullContextDataset(IterableDataset):
    """Full-context evaluation batches of one split (module docstring): yields
    ``{"input_ids", "target_ids", "loss_mask"}``, each ``(batch_size, L)``, L = min(T, n - 1)."""

    def __init__(
        self, tokens: np.ndarray, batch_size: int, tgt_len: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if batch_size < 1 or tgt_len < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need batch_size >= 1, tgt_len >= 1, 0 <= rank < world_size; got "
                f"batch_size={batch_size}, tgt_len={tgt_len}, rank={rank}, world_size={world_size}"
            )
        n_targets = len(tokens) - 1
        if n_targets < 1:
            raise DataError(f"A split of {len(tokens)} tokens has no target to score")
        self.tokens = tokens
        self.length = min(tgt_len, n_targets)  # L
        self.n_windows = n_targets - self.length + 1
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    def __len__(self) -> int:
        return -(-self.n_windows // (self.batch_size * self.world_size))

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        first = (index * self.world_size + self.rank) * self.batch_size
        windows = np.arange(first, first + self.batch_size)  # (B,) window w starts at token w
        real = windows < self.n_windows
        begins = np.minimum(windows, self.n_windows - 1)  # padding repeats the last window
        rows = begins[:, None] + np.arange(self.length)[None, :]  # (B, L)
        inputs = np.asarray(self.tokens[rows], dtype=np.int64)
        targets = np.asarray(self.tokens[rows + 1], dtype=np.int64)
        mask = np.zeros(rows.shape, dtype=bool)  # (B, L)
        mask[:, -1] = real
        mask[windows == 0] = True  # the first window scores every target
        return {
            "input_ids": torch.from_numpy(inputs),
            "target_ids": torch.from_numpy(targets),
            "loss_mask": torch.from_numpy(mask),
        }

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        start, step = (0, 1) if info is None else (info.id, info.num_workers)
        for index in range(start, len(self), step):
            yield self.batch(index)


# ---------------------------------------------------------------------------------------------
# The LightningDataModule
# ---------------------------------------------------------------------------------------------


class WikiText103DataModule(L.LightningDataModule):
    """WikiText-103 as contiguous token streams (Transformer-XL batching, DDP-aware).

    Args:
        data_dir: ``wikitext-103/`` (holding ``wiki.{train,valid,test}.tokens``) or its parent.
        batch_size: training streams *per process* (global: ``batch_size * world_size``).
        tgt_len: training window length ``T``.
        eval_batch_size: validation/test streams per process (default: ``batch_size``).
        eval_tgt_len: validation/test window length (default: ``tgt_len``).
        sliding_window: evaluate with overlapping windows (adds ``"loss_mask"`` to val/test
            batches); see the module docstring.
        eval_stride: how far a sliding window advances (default ``eval_tgt_len // 2``; 1 gives
            every target a full context of ``eval_tgt_len`` at ``eval_tgt_len`` times the cost).
        val_full_context, test_full_context: score that split as the released
            ``eval_sliding_window.py`` does (every target with ``eval_tgt_len`` tokens of
            context, one stream, ``eval_batch_size`` windows per batch; module docstring).
            Takes precedence over ``sliding_window`` for that split.
        full_context_batch_size: windows per full-context batch (default ``eval_batch_size``;
            it changes the speed, not the result).
        num_workers: DataLoader workers (0 is right: a batch is one slice of a memory map).
        on_bad_row: ``"error"`` raises :class:`DataFormatError` on an undecodable line (or, with
            no ``<unk>`` in train, a valid/test line with an unknown word); ``"skip"`` drops the
            line and warns with the count.
        cache_dir: where the numericalised cache lives (default: ``<wikitext-103>/cache``).

    ``vocab_size`` may be read right after construction (the CLI links it to the model): the
    first read builds the cache (once; DDP processes wait on a file lock) or loads it.
    Batches: ``{"input_ids": (B, T) long, "target_ids": (B, T) long}`` plus, for sliding-window
    evaluation, ``"loss_mask": (B, T) bool`` (True = this target counts).
    """

    def __init__(
        self,
        data_dir: str = "data/wikitext-103",
        batch_size: int = 96,
        tgt_len: int = 256,
        eval_batch_size: Optional[int] = None,
        eval_tgt_len: Optional[int] = None,
        sliding_window: bool = False,
        eval_stride: Optional[int] = None,
        val_full_context: bool = False,
        test_full_context: bool = False,
        full_context_batch_size: Optional[int] = None,
        num_workers: int = 0,
        on_bad_row: OnBadRow = "error",
        cache_dir: Optional[str] = None,
    ) -> None:
        super().__init__()
        if on_bad_row not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
        for name, value in (
            ("batch_size", batch_size),
            ("tgt_len", tgt_len),
            ("eval_batch_size", eval_batch_size),
            ("eval_tgt_len", eval_tgt_len),
            ("eval_stride", eval_stride),
            ("full_context_batch_size", full_context_batch_size),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.tgt_len = tgt_len
        self.eval_batch_size = eval_batch_size or batch_size
        self.eval_tgt_len = eval_tgt_len or tgt_len
        self.sliding_window = sliding_window
        self.full_context = {"valid": val_full_context, "test": test_full_context}
        self.full_context_batch_size = full_context_batch_size or self.eval_batch_size
        self.eval_stride = eval_stride or max(1, self.eval_tgt_len // 2)
        if self.eval_stride > self.eval_tgt_len:
            raise ValueError(
                f"eval_stride must be <= eval_tgt_len={self.eval_tgt_len}, got {eval_stride}"
            )
        self.num_workers = num_workers
        self.on_bad_row = on_bad_row
        self.cache_dir = cache_dir
        self._cached: Optional[CachedArrays] = None
        self._vocab: Optional[list[str]] = None
        self._tokens: dict[str, np.ndarray] = {}

    # -- preparation --------------------------------------------------------------------------

    def _ensure_cache(self) -> CachedArrays:
        if self._cached is None:
            source = resolve_wikitext_dir(self.data_dir)
            root = Path(self.cache_dir).expanduser() if self.cache_dir else source / CACHE_DIRNAME
            self._cached = prepare_corpus(source, root, self.on_bad_row)
        return self._cached

    def prepare_data(self) -> None:
        """Build the cache if it is missing (Lightning calls this on one process per node)."""
        self._ensure_cache()

    def setup(self, stage: Optional[str] = None) -> None:
        """Memory-map the numericalised splits (building the cache first if it is missing)."""
        cached = self._ensure_cache()
        for split in SPLITS:
            if split not in self._tokens:
                self._tokens[split] = cached.array(split)

    # -- sizes for the model ------------------------------------------------------------------

    @property
    def vocab(self) -> list[str]:
        """The words, id = index (``<eos>`` is 0). Builds or loads the cache on first use."""
        if self._vocab is None:
            self._vocab = read_vocab(self._ensure_cache())
        return self._vocab

    @property
    def vocab_size(self) -> int:
        """Number of words (267,735 on WikiText-103). Builds or loads the cache on first use."""
        return int(self._ensure_cache().meta["vocab_size"])

    @property
    def max_length(self) -> int:
        """Longest window a batch holds, the model's ``max_length`` (linked by the CLI)."""
        return max(self.tgt_len, self.eval_tgt_len)

    @property
    def num_tokens(self) -> dict[str, int]:
        """Tokens per split, ``<eos>`` included."""
        return dict(self._ensure_cache().meta["tokens"])

    @property
    def skipped_lines(self) -> dict[str, int]:
        """Lines dropped per split under ``on_bad_row="skip"`` (all 0 with ``"error"``)."""
        return dict(self._ensure_cache().meta["skipped_lines"])

    # -- loaders ------------------------------------------------------------------------------

    def _process_index(self) -> tuple[int, int]:
        """``(global_rank, world_size)`` from the attached Trainer; ``(0, 1)`` without one."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _loader(self, split: str, batch_size: int, tgt_len: int, stride: Optional[int]):
        if split not in self._tokens:
            self.setup()
        rank, world_size = self._process_index()
        dataset = LMStreamDataset(
            self._tokens[split], batch_size, tgt_len, rank, world_size, stride
        )
        # An IterableDataset: Lightning adds no DistributedSampler (we shard by stream ourselves).
        # Stateful for training only: Lightning checkpoints the train loader's position.
        loader = StatefulDataLoader if split == "train" else DataLoader
        return loader(dataset, batch_size=None, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, self.tgt_len, None)

    def _eval_loader(self, split: str) -> DataLoader:
        if self.full_context[split]:
            if split not in self._tokens:
                self.setup()
            rank, world_size = self._process_index()
            dataset = FullContextDataset(
                self._tokens[split], self.full_context_batch_size, self.eval_tgt_len, rank,
                world_size,
            )  # fmt: skip
            return DataLoader(dataset, batch_size=None, num_workers=self.num_workers)
        stride = self.eval_stride if self.sliding_window else None
        return self._loader(split, self.eval_batch_size, self.eval_tgt_len, stride)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
