"""Scaling tables (docs/benchmarks.md) from the output folder of ``scripts/gpu_scaling_run.sh``.

    python scripts/scaling_report.py RUN_DIR [--out results/scaling]

Writes into ``--out``:
  runs.csv     one row per training run: strategy, GPUs, steps, samples/s, tokens/s, peak
               allocated / reserved memory per GPU (the largest rank), parameters
  curves.csv   step, then the global-batch training loss of every run (one column a run)
  checks.csv   each check with its measured value, its tolerance and pass/fail
and prints the same as Markdown tables.

Checks (tolerances stated here, once; a check whose runs are missing is left out):
  curve_<s>      1 GPU vs 2 GPUs, same global batch, same sample sets per step (the
                 DistributedSampler's permutation is split across ranks): max over steps of
                 |loss_2(t) - loss_1(t)| <= 0.05 and mean <= 0.01. bf16 rounding differs with
                 the per-GPU batch shape, and the differences compound over steps.
  curve_<s>_vs_ddp_2gpu   the same bound between DeepSpeed and DDP, both on 2 GPUs.
  efficiency_<s> throughput(2 GPUs) / (2 x throughput(1 GPU)): reported, not checked.
  resume_<s>     the resumed run starts at step E + 1 (E = the epoch-0 checkpoint's step) with
                 the uninterrupted run's learning rate at that step (relative 1e-6), and its
                 mean loss over the resumed steps is within 0.05 of the uninterrupted run's
                 over the same steps. Not step for step: Lightning 2.6.6 reshuffles the epoch
                 after an epoch-end checkpoint with the next sampler epoch (docs/scaling.md).
  convert_<s>    val/loss of ``cli.py validate`` from the converted single file vs val/loss
                 the DeepSpeed run logged at that step: relative difference <= 2 % (the
                 DeepSpeed run computed with bf16 weights, the file holds the fp32 master).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

CURVE_MAX, CURVE_MEAN = 0.05, 0.01
RESUME_MEAN = 0.05
CONVERT_REL = 0.02
STRATEGY_NAMES = {"ddp": "ddp", "ds2": "deepspeed_stage2", "ds3": "deepspeed_stage3"}


def read_losses(run: Path) -> dict[int, tuple[float, float]]:
    path = run / "probe" / "loss.csv"
    if not path.is_file():
        return {}
    with open(path) as f:
        return {int(r["step"]): (float(r["loss"]), float(r["lr"])) for r in csv.DictReader(f)}


def read_summary(run: Path) -> dict | None:
    path = run / "probe" / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def logged_values(run: Path, key: str) -> list[float]:
    """Every value of ``key`` in the CSVLogger's metrics.csv files under ``run``, in order."""
    values = []
    for path in sorted(run.glob("**/metrics.csv")):
        with open(path) as f:
            values += [float(row[key]) for row in csv.DictReader(f) if row.get(key)]
    return values


def parse_name(name: str) -> tuple[str, int, str] | None:
    """'ds3_2' -> ('ds3', 2, ''), 'ddp1' -> ('ddp', 1, ''), 'wide_ds2_2' -> ('ds2', 2, 'wide')."""
    kind = ""
    if name.startswith("wide_"):
        kind, name = "wide", name[len("wide_") :]
    for short in STRATEGY_NAMES:
        if name.startswith(short):
            rest = name[len(short) :].lstrip("_")
            if rest.isdigit():
                return short, int(rest), kind
    return None


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def markdown(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, default=Path("results/scaling"))
    args = parser.parse_args(argv)
    results: Path = args.results
    if not results.is_dir():
        print(f"error: {results} is not a directory", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)

    runs, curves = [], {}
    for run in sorted(p for p in results.iterdir() if p.is_dir()):
        parsed = parse_name(run.name.removeprefix("resume_"))
        summary = read_summary(run)
        if parsed is None or summary is None:
            continue
        strategy, gpus, kind = parsed
        losses = read_losses(run)
        curves[run.name] = {step: loss for step, (loss, _) in losses.items()}
        runs.append(
            {
                "run": run.name,
                "model": "wide (dim 1024, 8 layers)" if kind else "LRA ListOps (paper)",
                "strategy": STRATEGY_NAMES[strategy],
                "gpus": gpus,
                "steps": summary["steps_this_run"],
                "timed_steps": summary["timed_steps"],
                "samples_per_sec": summary["samples_per_sec"],
                "tokens_per_sec": summary["tokens_per_sec"],
                "peak_alloc_gib": max(summary["peak_allocated_gib"]),
                "peak_reserved_gib": max(summary["peak_reserved_gib"]),
                "parameters": summary["parameters"],
            }
        )
    by_name = {r["run"]: r for r in runs}

    checks = []

    def check(name: str, value, limit, ok: bool | None, note: str = "") -> None:
        checks.append(
            {
                "check": name,
                "value": value,
                "limit": limit,
                "pass": "" if ok is None else ("yes" if ok else "NO"),
                "note": note,
            }
        )

    for short, strategy in STRATEGY_NAMES.items():
        one, two = (
            curves.get(f"{short}1" if short == "ddp" else f"{short}_1"),
            curves.get(f"{short}2" if short == "ddp" else f"{short}_2"),
        )
        reference = curves.get("ddp1")
        for label, ref in (("same strategy, 1 GPU", one), ("ddp, 1 GPU", reference)):
            if short == "ddp" and label.startswith("ddp"):
                continue  # the same pair as the line before
            if two and ref:
                steps = sorted(set(two) & set(ref))
                diffs = [abs(two[s] - ref[s]) for s in steps]
                worst, mean = max(diffs), sum(diffs) / len(diffs)
                check(
                    f"curve_{strategy}_2gpu_vs_{label.replace(' ', '_').replace(',', '')}",
                    f"max {worst:.4f}, mean {mean:.4f} over {len(steps)} steps",
                    f"max {CURVE_MAX}, mean {CURVE_MEAN}",
                    worst <= CURVE_MAX and mean <= CURVE_MEAN,
                )
        ddp_two = curves.get("ddp2")
        if short != "ddp" and two and ddp_two:
            # Same sample sets per step (both shard one permutation over 2 ranks): the strategy
            # changes only the arithmetic (DeepSpeed bf16 keeps bf16 weights, DDP autocasts).
            steps = sorted(set(two) & set(ddp_two))
            diffs = [abs(two[s] - ddp_two[s]) for s in steps]
            worst, mean = max(diffs), sum(diffs) / len(diffs)
            check(
                f"curve_{strategy}_vs_ddp_2gpu",
                f"max {worst:.4f}, mean {mean:.4f} over {len(steps)} steps",
                f"max {CURVE_MAX}, mean {CURVE_MEAN}",
                worst <= CURVE_MAX and mean <= CURVE_MEAN,
            )
        one_run = by_name.get(f"{short}1" if short == "ddp" else f"{short}_1")
        two_run = by_name.get(f"{short}2" if short == "ddp" else f"{short}_2")
        if one_run and two_run and one_run["samples_per_sec"] and two_run["samples_per_sec"]:
            efficiency = two_run["samples_per_sec"] / (2 * one_run["samples_per_sec"])
            check(f"efficiency_{strategy}", f"{efficiency:.2f}", "reported", None)

        resume_name = f"resume_{short}2" if short == "ddp" else f"resume_{short}_2"
        original_name = f"{short}2" if short == "ddp" else f"{short}_2"
        resumed = read_losses(results / resume_name)
        original = read_losses(results / original_name)
        if resumed and original:
            first = min(resumed)
            steps = sorted(set(resumed) & set(original))
            lr_ok = math.isclose(resumed[first][1], original[first][1], rel_tol=1e-6)
            mean_resumed = sum(resumed[s][0] for s in steps) / len(steps)
            mean_original = sum(original[s][0] for s in steps) / len(steps)
            delta = abs(mean_resumed - mean_original)
            check(
                f"resume_{strategy}",
                f"first step {first}, lr {resumed[first][1]:.4g} (uninterrupted "
                f"{original[first][1]:.4g}), mean loss {mean_resumed:.4f} vs {mean_original:.4f}",
                f"lr equal, mean diff <= {RESUME_MEAN}",
                # The epoch-0 checkpoint sits at half of the uninterrupted run's steps.
                lr_ok and delta <= RESUME_MEAN and first == len(original) // 2 + 1,
            )

        convert_dir = results / f"convert_{short}"
        if convert_dir.is_dir():
            # The converted checkpoint is the epoch-0 one: compare with epoch 0's validation.
            logged_all = logged_values(results / original_name, "val/loss")
            logged = logged_all[0] if logged_all else None
            converted_all = logged_values(convert_dir / "validate", "val/loss")
            converted = converted_all[-1] if converted_all else None
            tested_all = logged_values(convert_dir / "test", "test/acc")
            tested = tested_all[-1] if tested_all else None
            if logged is not None and converted is not None:
                rel = abs(converted - logged) / abs(logged)
                check(
                    f"convert_{strategy}",
                    f"val/loss from file {converted:.4f} vs logged by the run {logged:.4f} "
                    f"(test/acc from file {fmt(tested)})",
                    f"relative {CONVERT_REL}",
                    rel <= CONVERT_REL,
                )
            else:
                check(f"convert_{strategy}", "missing", "", False, "a step did not run")

    # ZeRO memory: 2-GPU peak per GPU vs ddp's, for each model.
    for prefix, label in (("", "paper"), ("wide_", "wide")):
        ddp = by_name.get(f"{prefix}ddp2")
        for short in ("ds2", "ds3"):
            run = by_name.get(f"{prefix}{short}_2")
            if ddp and run:
                saved = ddp["peak_alloc_gib"] - run["peak_alloc_gib"]
                check(
                    f"memory_{label}_{STRATEGY_NAMES[short]}_vs_ddp",
                    f"{run['peak_alloc_gib']:.3f} vs {ddp['peak_alloc_gib']:.3f} GiB "
                    f"(saves {saved:.3f} GiB, {saved / ddp['peak_alloc_gib']:.0%})",
                    "reported",
                    None,
                )

    columns = list(runs[0]) if runs else []
    with open(args.out / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(runs)
    names = sorted(curves)
    steps = sorted({s for c in curves.values() for s in c})
    with open(args.out / "curves.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", *names])
        for s in steps:
            writer.writerow([s, *(curves[n].get(s, "") for n in names)])
    with open(args.out / "checks.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["check", "value", "limit", "pass", "note"])
        writer.writeheader()
        writer.writerows(checks)

    print(markdown(runs, columns))
    print()
    print(markdown(checks, ["check", "value", "limit", "pass"]))
    return 0 if all(c["pass"] != "NO" for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
