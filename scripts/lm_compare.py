"""Train WikiText-103 configs side by side on one GPU, test each, print one table.

    python scripts/lm_compare.py --data data/debian-docs --steps 2000 --batch 32

Launches ``cli.py fit --config configs/wikitext103/<variant>.yaml`` for every variant at once
(same steps, batch and schedule for each), waits, then ``cli.py test`` on each run's best
checkpoint (by val/ppl) with the config's evaluation: every test token scored with the full
256-token window before it. Writes ``<out>/summary.csv`` and prints a markdown table: steps,
median training tokens/s, last val/ppl, test/ppl, test tokens/s (scored tokens per second).

Overrides shared by all runs: ``--steps`` (max_steps), ``--warmup`` (warm-up steps; the
cosine runs over ``--steps``), ``--batch`` (training streams), ``--val-every``,
``--test-batches`` (full-context batches of ``--test-windows`` windows; 0 = the whole test
split: no test tokens/s then), and
``--cutoffs`` (adaptive softmax; WikiText-103's 200,000 exceeds a smaller vocabulary). Any
further ``--`` arguments go to every ``cli.py`` call.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _scalars(run_dir: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for events in sorted(run_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values += [e.value for e in acc.Scalars(tag)]
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/debian-docs")
    parser.add_argument("--variants", nargs="+",
                        default=["softmax", "linear", "band20", "fmm2_band20"])  # fmt: skip
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--test-batches", type=int, default=200)
    parser.add_argument("--test-windows", type=int, default=256, help="windows per test batch")
    parser.add_argument("--cutoffs", default="[20000, 40000]")
    parser.add_argument("--out", type=Path, default=Path("logs/lm_compare"))
    parser.add_argument("extra", nargs="*", help="more cli.py arguments (after --)")
    args = parser.parse_args(argv)
    for variant in args.variants:
        if not (ROOT / f"configs/wikitext103/{variant}.yaml").is_file():
            print(f"error: no configs/wikitext103/{variant}.yaml", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    common = [
        "--data.init_args.data_dir", args.data,
        "--data.init_args.batch_size", str(args.batch),
        "--model.init_args.decoder.adaptive_softmax_cutoffs", args.cutoffs,
        "--model.init_args.optim.warmup_steps", str(args.warmup),
        "--data.init_args.full_context_batch_size", str(args.test_windows),
        "--trainer.logger.init_args.save_dir", str(args.out),
        *args.extra,
    ]  # fmt: skip
    # Build the data cache once, before the runs race for its lock.
    subprocess.run([sys.executable, "-c", "from data_modules.wikitext import "
                    f"WikiText103DataModule as D; D({args.data!r}).vocab_size"],
                   cwd=ROOT, check=True)  # fmt: skip

    def cli(stage: str, variant: str, more: list[str]) -> subprocess.Popen:
        log = open(args.out / f"{variant}.{stage}.log", "w")  # noqa: SIM115 - closed by exit
        command = [sys.executable, "cli.py", stage, "--config",
                   f"configs/wikitext103/{variant}.yaml", *common, *more]  # fmt: skip
        return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    fit = ["--trainer.max_steps", str(args.steps), "--trainer.val_check_interval",
           str(args.val_every)]  # fmt: skip
    start = time.time()
    runs = {v: cli("fit", v, fit) for v in args.variants}
    failed = [v for v, p in runs.items() if p.wait() != 0]
    print(f"fit: {time.time() - start:.0f} s for {len(runs)} concurrent runs")
    rows = []
    tests = {}
    for variant in args.variants:
        run_dir = args.out / "wikitext103" / variant
        best = sorted(
            run_dir.glob("version_*/checkpoints/best-*.ckpt"), key=lambda p: p.stat().st_mtime
        )
        if variant in failed or not best:
            print(f"{variant}: fit failed, see {args.out / f'{variant}.fit.log'}")
            continue
        more = ["--ckpt_path", str(best[-1])]
        if args.test_batches:
            more += ["--trainer.limit_test_batches", str(args.test_batches)]
        tests[variant] = (cli("test", variant, more), time.time())
    for variant, (process, began) in tests.items():
        code, seconds = process.wait(), time.time() - began
        run_dir = args.out / "wikitext103" / variant
        rate = _scalars(run_dir, "train/tokens_per_sec")
        val = _scalars(run_dir, "val/ppl")
        test = _scalars(run_dir, "test/ppl")
        # One scored token per window, the first window's all; start-up time included.
        scored = (args.test_batches or 0) * args.test_windows + 255
        rows.append({
            "variant": variant,
            "steps": args.steps,
            "train_tokens_per_s": round(statistics.median(rate)) if rate else "",
            "val_ppl": round(val[-1], 2) if val else "",
            "test_ppl": round(test[-1], 2) if code == 0 and test else "",
            "test_scored_tokens_per_s": round(scored / seconds) if args.test_batches and code == 0 else "",
        })  # fmt: skip
    if rows:
        with open(args.out / "summary.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print("| " + " | ".join(rows[0]) + " |")
        print("|" + "---|" * len(rows[0]))
        for row in rows:
            print("| " + " | ".join(str(v) for v in row.values()) + " |")
    return 1 if failed or len(rows) < len(args.variants) else 0


if __name__ == "__main__":
    sys.exit(main())
