"""Time WikiText-103 preparation (vocabulary + numericalisation) on a synthetic corpus.

Builds, in a temporary folder, ``wiki.{train,valid,test}.tokens`` in WikiText's layout: lines
that start with a space and end with `` \\n``, ``= Title =`` / ``= = Section = =`` headings
surrounded by blank lines, paragraphs of Zipf-distributed words (p(rank) ~ rank^-1.07 over a
vocabulary of ``--vocab`` words, among them ``<unk>``, ``@-@``, ``@,@``, ``@.@`` and punctuation),
then runs ``WikiText103DataModule.prepare_data()`` in a fresh child process and reports its wall
time and peak resident memory (``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``: the child
alone, not the generator). The budget: under 180 s and 4 GB for 100 M tokens on 2 cores.

    python bench/wikitext_prepare.py                     # 100 M train tokens (several minutes)
    python bench/wikitext_prepare.py --tokens 5000000    # a quick run

Prints a table and appends a row to ``--csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HEAD_WORDS = [
    "the",
    ",",
    ".",
    "of",
    "and",
    "in",
    "to",
    "a",
    "<unk>",
    '"',
    "was",
    "@-@",
    "'s",
    "The",
    "for",
    "on",
    "is",
    "as",
    "with",
    "by",
    "@,@",
    "@.@",
    "(",
    ")",
    "In",
    ";",
]


def make_vocabulary(size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` distinct words: WikiText's most frequent tokens, then made-up words."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = list(HEAD_WORDS)
    seen = set(words)
    rank = 0
    while len(words) < size:
        rank += 1
        stem = "".join(rng.choice(letters, size=int(rng.integers(2, 9))))
        word = f"{stem}{np.base_repr(rank, 36).lower()}"
        if rank % 7 == 0:
            word = word.capitalize()
        if word not in seen:
            seen.add(word)
            words.append(word)
    return np.array(words, dtype=object)


def write_corpus(path: Path, n_tokens: int, vocab: np.ndarray, rng: np.random.Generator) -> int:
    """Write about ``n_tokens`` words (``<eos>`` not counted) in WikiText's layout; return the count."""
    ranks = np.arange(1, len(vocab) + 1, dtype=np.float64)
    cdf = np.cumsum(ranks**-1.07)
    cdf /= cdf[-1]
    written = 0
    article = 0
    with open(path, "w", encoding="utf-8") as handle:
        while written < n_tokens:
            block = min(1_000_000, n_tokens - written)
            ids = np.searchsorted(cdf, rng.random(block))
            words = vocab[ids].tolist()
            lines = []
            start = 0
            while start < block:
                if rng.random() < 0.05:  # a new article or section
                    article += 1
                    level = 1 if rng.random() < 0.3 else 2
                    title = " ".join(words[start : start + 3])
                    marks = " ".join(["="] * level)
                    lines.append(f" {marks} {title} {marks} \n \n")
                    start += 3
                length = int(rng.integers(20, 180))
                lines.append(" " + " ".join(words[start : start + length]) + " \n \n")
                start += length
            handle.write("".join(lines))
            written += block
    return written


def measure(data_dir: Path) -> dict:
    """Child process: prepare the cache and report time and peak memory."""
    sys.path.insert(0, str(REPO))
    from data_modules.wikitext import WikiText103DataModule

    start = time.perf_counter()
    module = WikiText103DataModule(str(data_dir), cache_dir=str(data_dir / "cache"))
    module.prepare_data()
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "vocab_size": module.vocab_size,
        "train_tokens": module.num_tokens["train"],
        "valid_tokens": module.num_tokens["valid"],
        "test_tokens": module.num_tokens["test"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=100_000_000, help="train words")
    parser.add_argument("--eval-tokens", type=int, default=250_000, help="valid/test words")
    parser.add_argument("--vocab", type=int, default=300_000, help="distinct words drawn from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", type=Path, default=REPO / "results" / "wikitext_prepare.csv")
    parser.add_argument("--_measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure is not None:
        print(json.dumps(measure(args._measure)))
        return

    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="wikitext_bench_") as tmp:
        folder = Path(tmp) / "wikitext-103"
        folder.mkdir()
        t0 = time.perf_counter()
        vocab = make_vocabulary(args.vocab, rng)
        write_corpus(folder / "wiki.train.tokens", args.tokens, vocab, rng)
        write_corpus(folder / "wiki.valid.tokens", args.eval_tokens, vocab, rng)
        write_corpus(folder / "wiki.test.tokens", args.eval_tokens, vocab, rng)
        generate_s = time.perf_counter() - t0
        size_mb = (folder / "wiki.train.tokens").stat().st_size / 2**20
        print(f"generated {size_mb:.0f} MB of train text in {generate_s:.0f} s", flush=True)

        child = subprocess.run(
            [sys.executable, __file__, "--_measure", str(folder)],
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux

    row = {
        "train_words": args.tokens,
        "train_tokens_with_eos": result["train_tokens"],
        "train_file_mb": round(size_mb, 1),
        "vocab_size": result["vocab_size"],
        "prepare_s": round(result["seconds"], 1),
        "peak_rss_mb": round(peak_mb),
        "tokens_per_s": round(result["train_tokens"] / result["seconds"]),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    width = max(len(k) for k in row)
    for key, value in row.items():
        print(f"{key:<{width}}  {value}")
    verdict = row["prepare_s"] < 180 and row["peak_rss_mb"] < 4096
    print(f"{'target (<180 s, <4 GB)':<{width}}  {'met' if verdict else 'MISSED'}")
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    new_file = not args.csv.exists()
    with open(args.csv, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new_file:
            writer.writeheader()
        writer.writerow(row)


if __name__ == "__main__":
    main()
