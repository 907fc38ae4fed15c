"""ListOps: LRA's generator (seeded), the official tokeniser, and ``ListOpsDataModule``.

A ListOps example is a nested list operation over the digits 0-9; the label is its value::

    Source                                  Target
    ( ( ( ( [MAX 3 ) 4 ) 3 ) ] )            4

Operators: ``[MIN`` min, ``[MAX`` max, ``[MED`` ``int(median)`` (mean of the middle two,
truncated, when the count is even), ``[SM`` sum mod 10. ``]`` closes an operator.

Two tokenisations (``ListOpsDataModule(tokenizer=...)``):

* ``brackets``: replace ``]`` by ``X``, delete ``(`` and ``)``, split on white space. Every
  operator keeps its closing token, so the tree is recoverable from the sequence. A tree's
  ``length`` (tokens) equals its token count after this tokenisation.
* ``lra``: LRA's public input pipeline (``lra_benchmarks/listops/input_pipeline.py``), which the
  released LRA code used to make its data: ``tfds`` ``Tokenizer()`` keeps alphanumeric runs
  only, so ``[MAX`` becomes ``MAX`` and ``]``, ``(`` and ``)`` are dropped. Without the closing
  tokens the nesting is ambiguous; the paper's ListOps numbers were measured on this.

Vocabulary (both): ``<pad>`` 0, ``<unk>`` 1, then ``[MIN [MAX [MED [SM X 0 1 ... 9`` (ids 2-16),
17 in all (``lra`` never produces ``X``).

Generate a data set (the format of ``lra_release/listops-1000/basic_{train,val,test}.tsv``)::

    python -m data_modules.lra.listops generate --out data/listops --train 96000 --val 2000 --test 2000
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import logging
import os
import random
import re
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_modules.common.base import BadRowPolicy, BadRows, ClassificationDataModule
from data_modules.common.cache import CacheWriter
from data_modules.common.errors import DataError, DataFormatError, DataNotFoundError
from data_modules.common.locks import file_lock
from data_modules.common.paths import LRA_DOWNLOAD_HINT, resolve_task_dir

__all__ = [
    "END",
    "OPERATORS",
    "VOCAB",
    "ListOpsDataModule",
    "generate_example",
    "generate_examples",
    "iter_examples",
    "parse_row",
    "read_listops_tsv",
    "tokenize",
    "write_dataset",
]

log = logging.getLogger(__name__)

MIN, MAX, MED, SUM_MOD = "[MIN", "[MAX", "[MED", "[SM"
OPERATORS = (MIN, MAX, MED, SUM_MOD)
END = "]"
VALUE_P = 0.25  # probability that a node below max_depth is an operator (LRA: r <= VALUE_P)
HEADER = "Source\tTarget"
SPLITS = ("train", "val", "test")
TASK_FOLDER = "listops-1000"
GENERATOR_MANIFEST = "listops_generator.json"
GENERATOR_VERSION = 1

PAD_ID, UNK_ID = 0, 1
VOCAB = ("<pad>", "<unk>", *OPERATORS, "X", *(str(d) for d in range(10)))
TOKEN_IDS = {token: index for index, token in enumerate(VOCAB)}


# ---------------------------------------------------------------------------------------------
# The generator (LRA's listops.py, with a seed, streaming, and early rejection of long trees)
# ---------------------------------------------------------------------------------------------
class _TooLong(Exception):
    """Raised inside generate_example once the tree already has ``limit`` tokens."""


def _median(values: list[int]) -> int:
    ordered = sorted(values)
    mid = len(ordered) // 2
    # np.median averages the middle two; int() truncates (values are >= 0, so floor).
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) // 2


_APPLY = {MIN: min, MAX: max, MED: _median, SUM_MOD: lambda values: sum(values) % 10}


def generate_example(
    rng: random.Random,
    max_depth: int = 10,
    max_args: int = 10,
    limit: int | None = None,
) -> tuple[str, int, int] | None:
    """Draw one tree from LRA's distribution; return ``(Source string, value, length)``.

    At depth ``d`` (the root has ``d = 1``): ``r = random()`` if ``d < max_depth`` else 1;
    ``r > VALUE_P`` gives a digit (length 1); otherwise ``n`` uniform in ``2..max_args``
    children at depth ``d + 1`` and a uniform operator (length ``2 + sum of child lengths``).

    The string is LRA's ``to_string`` of the left-nested pairs ``((((op, c0), c1), ...), ']')``,
    where ``to_string((a, b)) = '( ' + to_string(a) + ' ' + to_string(b) + ' )'``: an operator
    with children ``c0 .. c{n-1}`` reads ``'( ' * (n + 1) + op + ' c0 )' + ' ci )'... + ' ] )'``.

    Integers are drawn as ``int(random() * k)`` (uniform to 2**-53), about three times faster
    than ``randrange``. With ``limit``, returns ``None`` as soon as the length reaches ``limit``:
    lengths only grow while a tree is drawn, so this rejects exactly the trees a
    ``length < limit`` filter would, without drawing the rest (accepted trees keep LRA's law).
    """
    uniform = rng.random
    count = 0
    bound = limit if limit is not None else float("inf")

    def grow(depth: int) -> tuple[str, int]:
        nonlocal count
        if depth < max_depth and uniform() <= VALUE_P:
            count += 2  # the operator and its closing bracket
            if count >= bound:
                raise _TooLong
            n_children = 2 + int(uniform() * (max_args - 1))
            children = [grow(depth + 1) for _ in range(n_children)]
            op = OPERATORS[int(uniform() * 4)]
            parts = ["( " * (n_children + 1), op]
            for text, _ in children:
                parts += (" ", text, " )")
            parts.append(" ] )")
            return "".join(parts), _APPLY[op]([value for _, value in children])
        count += 1
        if count >= bound:
            raise _TooLong
        digit = int(uniform() * 10)
        return str(digit), digit

    try:
        source, value = grow(1)
    except _TooLong:
        return None
    return source, value, count


def iter_examples(
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    seed: int = 0,
    max_failures: int = 200_000,
) -> Iterator[tuple[str, int]]:
    """Yield distinct ``(Source, Target)`` with ``min_length < length < max_length``, forever.

    LRA collects trees in a ``set`` (whose order varies between runs); we keep the draw order so
    that one seed always gives the same files. Distinctness is checked on a 16-byte BLAKE2 digest
    of the string, so memory stays small however many trees are drawn. Raises ``ValueError``
    when ``max_failures`` draws in a row bring no new tree (the interval is empty or holds too
    few distinct trees).
    """
    if not 1 <= max_depth <= 200:
        raise ValueError(f"max_depth must lie in [1, 200], got {max_depth}")
    if max_args < 2:
        raise ValueError(f"max_args must be >= 2, got {max_args}")
    if max_length - min_length < 2:
        raise ValueError(
            f"no length lies strictly between min_length={min_length} and max_length={max_length}"
        )
    rng = random.Random(seed)
    seen: set[bytes] = set()
    failures = 0
    while True:
        drawn = generate_example(rng, max_depth, max_args, limit=max_length)
        if drawn is not None and drawn[2] > min_length:
            digest = hashlib.blake2b(drawn[0].encode(), digest_size=16).digest()
            if digest not in seen:
                seen.add(digest)
                failures = 0
                yield drawn[0], drawn[1]
                continue
        failures += 1
        if failures >= max_failures:
            raise ValueError(
                f"gave up after {max_failures} draws in a row without a new tree: only "
                f"{len(seen)} distinct trees with {min_length} < length < {max_length} "
                f"(max_depth={max_depth}, max_args={max_args}) were found"
            )


def generate_examples(num_trees: int, **settings: Any) -> list[tuple[str, int]]:
    """The first ``num_trees`` of :func:`iter_examples` (``settings`` are its arguments)."""
    if num_trees < 0:
        raise ValueError(f"the number of trees must be >= 0, got {num_trees}")
    if num_trees == 0:
        return []
    return list(itertools.islice(iter_examples(**settings), num_trees))


def _shard_seed(seed: int, shard: int) -> int:
    digest = hashlib.blake2b(f"listops:{seed}:{shard}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _draw_shard(job: tuple[int, int, dict[str, Any]]) -> list[tuple[str, int]]:
    shard, count, settings = job
    settings = dict(settings)
    seed = _shard_seed(settings.pop("seed"), shard)
    return generate_examples(count, seed=seed, **settings)


def iter_sharded_examples(
    total: int, shards: int, workers: int = 1, seed: int = 0, **settings: Any
) -> Iterator[tuple[str, int]]:
    """``total`` distinct trees drawn as ``shards`` independent streams of ``ceil(total /
    shards)`` trees each (shard j seeded from ``(seed, j)``), concatenated in shard order with
    repeats across shards dropped (then more shards are drawn). The result depends on
    ``seed`` and ``shards`` only; ``workers`` processes draw the shards in parallel."""
    if shards < 1 or workers < 1:
        raise ValueError(f"shards and workers must be >= 1, got {shards} and {workers}")
    per_shard = -(-total // shards) if total else 0
    jobs = [(j, per_shard, dict(settings, seed=seed)) for j in range(shards)]
    seen: set[bytes] = set()
    produced = 0

    def fresh(trees: list[tuple[str, int]]) -> Iterator[tuple[str, int]]:
        nonlocal produced
        for source, target in trees:
            digest = hashlib.blake2b(source.encode(), digest_size=16).digest()
            if digest in seen or produced == total:
                continue
            seen.add(digest)
            produced += 1
            yield source, target

    if workers > 1 and shards > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(min(workers, shards)) as pool:
            for trees in pool.imap(_draw_shard, jobs):
                yield from fresh(trees)
    else:
        for job in jobs:
            yield from fresh(_draw_shard(job))
    extra = shards
    while produced < total:  # repeats across shards: draw further shards, one at a time
        yield from fresh(_draw_shard((extra, per_shard, dict(settings, seed=seed))))
        extra += 1


def write_dataset(
    out_dir: str | Path,
    train: int,
    val: int,
    test: int,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    seed: int = 0,
    shards: int = 1,
    workers: int = 1,
) -> dict[str, Any]:
    """Generate and write ``basic_{train,val,test}.tsv`` (header ``Source\\tTarget``) to ``out_dir``.

    Trees are split in draw order: the first ``train`` to train, the next ``val`` to val, the
    next ``test`` to test. The files are streamed to temporary names and renamed into place once
    all three are written; ``listops_generator.json`` (these settings) is written last.
    ``shards`` > 1 draws the trees as independent streams (:func:`iter_sharded_examples`), so
    that ``workers`` processes can draw them at once (LRA's 100,000 trees: minutes instead of
    most of an hour); one seed and shard count always give the same files.
    Returns the settings.
    """
    sizes = {"train": train, "val": val, "test": test}
    if min(sizes.values()) < 0:
        raise ValueError(f"split sizes must be >= 0, got {sizes}")
    settings: dict[str, Any] = {
        "version": GENERATOR_VERSION,
        **sizes,
        "min_length": min_length,
        "max_length": max_length,
        "max_depth": max_depth,
        "max_args": max_args,
        "seed": seed,
    }
    lengths = dict(min_length=min_length, max_length=max_length, max_depth=max_depth,
                   max_args=max_args)  # fmt: skip
    if shards > 1:
        settings["shards"] = shards  # absent for one stream: older manifests stay valid
        examples = iter_sharded_examples(sum(sizes.values()), shards, workers, seed, **lengths)
    else:
        examples = iter_examples(seed=seed, **lengths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / GENERATOR_MANIFEST).unlink(missing_ok=True)  # written again once the files are done
    staged = {split: out / f".basic_{split}.tsv.tmp-{os.getpid()}" for split in sizes}
    try:
        for split, size in sizes.items():
            with open(staged[split], "w", encoding="utf-8", newline="\n") as handle:
                handle.write(HEADER + "\n")
                for source, target in itertools.islice(examples, size):
                    handle.write(f"{source}\t{target}\n")
        # Renamed only once all three are complete: a failure leaves the old files as they were.
        for split, tmp in staged.items():
            os.replace(tmp, out / f"basic_{split}.tsv")
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    tmp = out / f".{GENERATOR_MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(settings, indent=1, sort_keys=True))
    os.replace(tmp, out / GENERATOR_MANIFEST)
    return settings


# ---------------------------------------------------------------------------------------------
# Reading and tokenising the official TSV
# ---------------------------------------------------------------------------------------------
_LABEL = re.compile(r"[0-9]+")


TOKENIZERS = ("brackets", "lra")
_WORD = re.compile(r"\w+")  # tfds Tokenizer(alphanum_only=True): runs of [A-Za-z0-9_]
# The alphanumeric part of each operator -> its id ("MAX" -> the id of "[MAX").
_LRA_IDS = {**TOKEN_IDS, **{op.lstrip("["): TOKEN_IDS[op] for op in OPERATORS}}


def tokenize(source: str, tokenizer: str = "brackets") -> list[int]:
    """Token ids of one ``Source``; unknown symbols -> ``<unk>`` (module docstring).

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


# ---------------------------------------------------------------------------------------------
# The data module
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _dir_lock(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / ".listops_generate.lock"):
        yield


class ListOpsDataModule(ClassificationDataModule):
    """ListOps from ``listops-1000/basic_{train,val,test}.tsv``, or generated on the spot.

    ``data_dir`` may point at ``lra_release/``, ``lra_release/lra_release/``, ``listops-1000/``
    or any folder holding the three TSV files. With ``generate=True`` and no files there, the
    data are generated into ``data_dir`` with the ``generate_*`` settings and ``seed``; if
    ``data_dir`` holds files generated with other settings (``listops_generator.json``), they
    are generated again. Files without that manifest (the official release) are never touched.

    Batches: ``input_ids`` (batch, max_length), ``padding_mask`` (True at padding), ``label``
    0-9. ``vocab_size`` 17, ``num_classes`` 10. The paper's runs pad to 2,048 (the default).

    Args (beyond :class:`ClassificationDataModule`'s):
        tokenizer: ``brackets`` (closing tokens kept) or ``lra`` (the released pipeline's:
            alphanumeric tokens only, so no closing tokens); module docstring.
        generate: make the data if ``data_dir`` has none.
        generate_train / generate_val / generate_test: trees per split (LRA: 96,000 / 2,000 / 2,000).
        generate_min_length / generate_max_length: keep trees with ``min < length < max``.
        generate_max_depth / generate_max_args: tree depth and operator arity limits (LRA: 10, 10).
        generate_shards: draw the trees as this many seeded streams, one process per core
            (``write_dataset``'s ``shards``); 1 is one stream.
        seed: the generator's seed.
    """

    cache_name = "listops"
    tokenizer_version = "1"

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 32,
        max_length: int = 2048,
        num_workers: int = 0,
        pin_memory: bool = False,
        on_bad_row: BadRowPolicy = "error",
        cache_dir: str | None = None,
        truncate_length: int | None = None,
        tokenizer: str = "brackets",
        generate: bool = False,
        generate_train: int = 96_000,
        generate_val: int = 2_000,
        generate_test: int = 2_000,
        generate_min_length: int = 500,
        generate_max_length: int = 2_000,
        generate_max_depth: int = 10,
        generate_max_args: int = 10,
        generate_shards: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(
            data_dir, batch_size, max_length, num_workers, pin_memory, on_bad_row, cache_dir,
            truncate_length,
        )  # fmt: skip
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
        self.tokenizer = tokenizer
        if generate and generate_max_length - 1 > self.truncate_length:
            raise ValueError(
                f"generated trees have up to generate_max_length - 1 = {generate_max_length - 1} "
                f"tokens but sequences are cut at {self.truncate_length}: raise max_length or "
                "lower generate_max_length (a cut expression no longer determines its label)"
            )
        self.generate = generate
        self.generate_settings: dict[str, Any] = {
            "version": GENERATOR_VERSION,
            "train": generate_train,
            "val": generate_val,
            "test": generate_test,
            "min_length": generate_min_length,
            "max_length": generate_max_length,
            "max_depth": generate_max_depth,
            "max_args": generate_max_args,
            "seed": seed,
        }
        if generate_shards > 1:  # absent for one stream, as in the manifest
            self.generate_settings["shards"] = generate_shards
        self.save_hyperparameters()

    @property
    def vocab_size(self) -> int:
        return len(VOCAB)

    @property
    def num_classes(self) -> int:
        return 10

    def _files(self) -> list[str]:
        return [f"basic_{split}.tsv" for split in SPLITS]

    def cache_settings(self) -> dict:
        settings = super().cache_settings()
        if self.tokenizer != "brackets":  # caches made before the option keep their key
            settings["listops_tokenizer"] = self.tokenizer
        return settings

    def _ensure_generated(self) -> None:
        with _dir_lock(self.data_dir):
            try:
                folder = resolve_task_dir(self.data_dir, TASK_FOLDER, self._files())
            except DataNotFoundError:
                folder = None
            if folder is not None:
                manifest = folder / GENERATOR_MANIFEST
                if not manifest.exists():
                    return  # the official release, or files the user made: use them as they are
                try:
                    previous = json.loads(manifest.read_text())
                except (OSError, ValueError):
                    previous = None
                if previous == self.generate_settings:
                    return
                log.warning("ListOps in %s was generated with other settings; regenerating", folder)
            target = folder if folder is not None else self.data_dir
            start = time.perf_counter()
            s = self.generate_settings
            write_dataset(
                target, s["train"], s["val"], s["test"], s["min_length"], s["max_length"],
                s["max_depth"], s["max_args"], s["seed"], s.get("shards", 1),
                min(s.get("shards", 1), os.cpu_count() or 1),
            )  # fmt: skip
            log.info("generated ListOps into %s in %.1f s", target, time.perf_counter() - start)

    def locate_sources(self) -> tuple[Path, dict[str, list[Path]]]:
        if self.generate:
            self._ensure_generated()
        hint = LRA_DOWNLOAD_HINT + (
            "; or generate ListOps with `python -m data_modules.lra.listops generate --out DIR` "
            "or ListOpsDataModule(generate=True)"
        )
        folder = resolve_task_dir(self.data_dir, TASK_FOLDER, self._files(), hint)
        return folder, {split: [folder / f"basic_{split}.tsv"] for split in SPLITS}

    def build_split(
        self, source: str, files: list[Path], writer: CacheWriter, bad_rows: BadRows
    ) -> None:
        sequences = writer.sequences("input", np.uint8)
        labels: list[int] = []
        unknown = truncated = longest = 0
        for path in files:
            for _, ids, label in read_listops_tsv(path, bad_rows, self.tokenizer):
                longest = max(longest, len(ids))
                truncated += len(ids) > self.truncate_length
                kept = ids[: self.truncate_length]
                unknown += kept.count(UNK_ID)
                sequences.append(kept)
                labels.append(label)
        if unknown:
            warnings.warn(
                f"ListOps {source} split: {unknown} token(s) outside the ListOps vocabulary "
                "were mapped to <unk>",
                stacklevel=2,
            )
        writer.save("label", np.asarray(labels, dtype=np.int64))
        writer.meta.update(
            rows=len(labels), unknown_tokens=unknown, truncated_rows=truncated, longest_row=longest
        )


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_modules.lra.listops",
        description="ListOps tools (LRA's generator, reimplemented with a seed).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser(
        "generate", help="write basic_{train,val,test}.tsv in the official format"
    )
    gen.add_argument("--out", required=True, type=Path, help="output folder")
    gen.add_argument("--train", type=int, default=96_000, help="train trees (default 96000)")
    gen.add_argument("--val", type=int, default=2_000, help="validation trees (default 2000)")
    gen.add_argument("--test", type=int, default=2_000, help="test trees (default 2000)")
    gen.add_argument("--min-length", type=int, default=500, help="keep length > this (500)")
    gen.add_argument("--max-length", type=int, default=2_000, help="keep length < this (2000)")
    gen.add_argument("--max-depth", type=int, default=10, help="maximum tree depth (10)")
    gen.add_argument("--max-args", type=int, default=10, help="maximum operator arity (10)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (0)")
    gen.add_argument(
        "--shards",
        type=int,
        default=1,
        help="draw the trees as this many independent seeded streams (1)",
    )
    gen.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes drawing shards at once; the output does not depend on it",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        write_dataset(
            args.out, args.train, args.val, args.test, args.min_length, args.max_length,
            args.max_depth, args.max_args, args.seed, args.shards, args.workers,
        )  # fmt: skip
    except (ValueError, OSError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    total = args.train + args.val + args.test
    print(
        f"wrote {total} trees ({args.train}/{args.val}/{args.test}) to {args.out} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
