"""``python -m data_modules.lra.listops generate ...``: the generator's command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from data_modules.common.errors import DataError
from data_modules.lra.listops.generate import write_dataset

__all__ = ["main"]


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
