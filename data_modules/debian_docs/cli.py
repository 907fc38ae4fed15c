"""``python -m data_modules.debian_docs prepare --out DIR ...``: the converter's command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_modules.debian_docs import corpus
from data_modules.debian_docs.corpus import UNK, prepare

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_modules.debian_docs", description=corpus.__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write wiki.{train,valid,test}.tokens")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--root", type=Path, default=Path("/"), help="where the packages live")
    p.add_argument("--eval-words", type=int, default=250_000, help="words in valid and in test")
    p.add_argument("--min-count", type=int, default=3, help="rarer train words become <unk>")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gcide-entries", type=int, default=200, help="GCIDE entries per article")
    args = parser.parse_args(argv)
    if args.eval_words < 1 or args.min_count < 1 or args.gcide_entries < 1:
        print("--eval-words, --min-count and --gcide-entries must be >= 1", file=sys.stderr)
        return 2
    try:
        stats = prepare(args.out, args.root, args.eval_words, args.min_count, args.seed,
                        args.gcide_entries)  # fmt: skip
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out}/wiki.{{train,valid,test}}.tokens: train {stats['train']:,} words, "
        f"valid {stats['valid']:,}, test {stats['test']:,}; vocabulary {stats['vocab']:,} "
        f"(words seen < {args.min_count} times in train are {UNK})"
    )
    return 0
