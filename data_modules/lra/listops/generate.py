"""LRA's ListOps generator (its ``listops.py``), with a seed, streaming, sharding over processes,
and early rejection of long trees; writes ``basic_{train,val,test}.tsv`` in the official format
(:mod:`data_modules.lra.listops.format`).

From the command line::

    python -m data_modules.lra.listops generate --out data/listops --train 96000 --val 2000 --test 2000
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_modules.lra.listops.format import HEADER, MAX, MED, MIN, OPERATORS, SUM_MOD

__all__ = [
    "GENERATOR_MANIFEST",
    "GENERATOR_VERSION",
    "generate_example",
    "generate_examples",
    "iter_examples",
    "iter_sharded_examples",
    "write_dataset",
]

VALUE_P = 0.25  # probability that a node below max_depth is an operator (LRA: r <= VALUE_P)
GENERATOR_MANIFEST = "listops_generator.json"
GENERATOR_VERSION = 1


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
