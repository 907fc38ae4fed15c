"""``python -m data_modules.lra.pathfinder generate ...``: the generator's command line.

Generating the data (LRA's generator reimplemented with a seed; docs/pathfinder_generator.md)::

    python -m data_modules.lra.pathfinder generate --out DIR --size 32 --contour-length 14 \\
        --count 200000 --seed 0 --workers 16

or ``PathfinderDataModule(data_dir, generate=True, ...)``, which makes them on first use.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from data_modules.lra.pathfinder.generate.settings import (
    DIFFICULTY_CONTOUR_LENGTH,
    SIZES,
    difficulty_name,
    lra_settings,
)
from data_modules.lra.pathfinder.generate.write import Progress, write_pathfinder

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_modules.lra.pathfinder",
        description="Pathfinder tools (the Pathfinder generator, reimplemented with a seed).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser(
        "generate", help="write pathfinder<size>/<difficulty>/{imgs,metadata} as the release"
    )
    gen.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output folder; the set goes to OUT/pathfinder<size>/<difficulty>",
    )
    gen.add_argument(
        "--size",
        type=int,
        default=32,
        choices=SIZES,
        help="image side: 32 (Pathfinder), 64, 128 (Path-X) (default 32)",
    )
    gen.add_argument(
        "--contour-length",
        type=int,
        default=14,
        choices=sorted(DIFFICULTY_CONTOUR_LENGTH.values()),
        help="target curve length in paddles: 6 curv_baseline, 9, 14 (default 14)",
    )
    gen.add_argument("--count", type=int, default=200_000, help="images (default 200000)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes (default: all CPU cores); the output does not depend on it",
    )
    gen.add_argument("--per-folder", type=int, default=1000,
                     help="images per imgs/<k> folder and metadata file (default 1000)")  # fmt: skip
    args = parser.parse_args(argv)
    task_dir = args.out / f"pathfinder{args.size}" / difficulty_name(args.contour_length)
    start = time.perf_counter()
    try:
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        settings = lra_settings(args.size, args.contour_length)
        progress = Progress(lambda line: print(line, file=sys.stderr, flush=True))
        write_pathfinder(
            task_dir, settings, args.count, args.seed, args.workers, args.per_folder, progress
        )
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    print(
        f"wrote {args.count} images to {task_dir} in {elapsed:.1f} s "
        f"({args.workers} worker(s), {elapsed * args.workers / args.count * 1000:.1f} ms per image "
        "per worker)"
    )
    return 0
