"""Reproduce a table of the paper: train every variant x seed, test each at its best
validation checkpoint, and write a CSV, a markdown table (mean +- std next to the paper) and a
PNG of the validation curves.

    python scripts/reproduce.py lra --task listops --seeds 0 1 2 --parallel 15
    python scripts/reproduce.py lra --task text --data-dir data --variants softmax fmm2_band5
    python scripts/reproduce.py lm --data-dir data/wikitext-103 --parallel 4 -- --trainer.max_steps=2000
    python scripts/reproduce.py report results/reproduce/lra-listops   # tables and plot again
    python scripts/reproduce.py compare results/reproduce/lra-listops results/reproduce/lra-listops-fp32 \\
        --labels "paper config" "fp32" --variants fmm2_band5       # an ablation in one table and plot

Each run is ``python cli.py fit --config configs/<lra/<task>|wikitext103>/<variant>.yaml`` then
``python cli.py test ... --ckpt_path <best checkpoint>``, in its own folder
``<out>/runs/<variant>-seed<seed>/``. Several runs share the machine at once (``--parallel``;
the LRA model is tiny: 15 ListOps runs fit one GPU). Killed or stopped at ``--time-limit``, it
exits non-zero; run the same command again and it resumes every unfinished run from its last
checkpoint and never retrains a finished one (``result.json`` marks a finished run).

ListOps is generated when ``--data-dir`` holds none (our seeded reimplementation of LRA's
generator at LRA's size: 96,000 / 2,000 / 2,000 trees of 500-2,000 tokens, 16 shards, seed 0);
the other tasks read the official files (README, Data).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LRA_TASKS = ("listops", "text", "retrieval", "image", "pathfinder")
LRA_VARIANTS = ("softmax", "linear", "band5", "fmm1_band5", "fmm2_band5")

# The paper's Table 1 (test accuracy, %), for the rows it reports.
PAPER_LRA: dict[str, dict[str, float]] = {
    "softmax": dict(listops=37.10, text=64.17, retrieval=80.71, image=39.06, pathfinder=72.48),
    "linear": dict(listops=18.30, text=64.22, retrieval=81.37, image=38.29, pathfinder=71.17),
    "fmm2_band5": dict(listops=36.74, text=67.84, retrieval=81.88, image=45.10, pathfinder=72.12),
}

# The paper's Table 2 (WikiText-103 test perplexity).
PAPER_LM = {"softmax": 34.29, "linear": 38.40, "fmm2_band20": 36.11}
LM_VARIANTS = ("softmax", "linear", "band5", "band20", "fmm1_band20", "fmm2_band20")

# What a table reports: the validation metric that picks the best checkpoint, and the test one.
METRICS = {
    "lra": dict(val="val/acc", mode="max", test="test/acc", scale=100.0, unit="accuracy (%)"),
    "lm": dict(val="val/ppl", mode="min", test="test/ppl", scale=1.0, unit="perplexity"),
}

LISTOPS_RECIPE = dict(train=96_000, val=2_000, test=2_000, shards=16, seed=0)


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2."""


@dataclass
class Run:
    variant: str
    seed: int
    config: Path
    folder: Path

    @property
    def name(self) -> str:
        return f"{self.variant}-seed{self.seed}"

    @property
    def checkpoints(self) -> Path:
        return self.folder / "version_0" / "checkpoints"

    @property
    def result_file(self) -> Path:
        return self.folder / "result.json"


# ----------------------------------------------------------------------------------- data
def find_or_generate_listops(data_dir: Path, workers: int) -> Path:
    """``data_dir`` if it holds ListOps (the release or generated), else LRA-size ListOps
    generated into ``data_dir/listops-generated``."""
    from data_modules.common.errors import DataNotFoundError
    from data_modules.common.paths import resolve_task_dir
    from data_modules.lra.listops import write_dataset

    files = [f"basic_{s}.tsv" for s in ("train", "val", "test")]
    for candidate in (data_dir, data_dir / "listops-generated"):
        try:
            return resolve_task_dir(candidate, "listops-1000", files)
        except DataNotFoundError:
            continue
    target = data_dir / "listops-generated"
    r = LISTOPS_RECIPE
    print(f"generating LRA-size ListOps into {target} ({workers} processes)", flush=True)
    start = time.perf_counter()
    write_dataset(target, r["train"], r["val"], r["test"], seed=r["seed"], shards=r["shards"],
                  workers=workers)  # fmt: skip
    print(f"generated in {time.perf_counter() - start:.0f} s", flush=True)
    return target


def prepare_cache(config: Path, data_dir: Path, cli_args: list[str]) -> None:
    """Builds the data module's cache once, before the parallel runs would each build it
    (with the ``--data.init_args.KEY=VALUE`` options among ``cli_args``: the cache depends
    on them)."""
    import importlib

    import yaml

    data = yaml.safe_load(config.read_text())["data"]
    module, _, name = data["class_path"].rpartition(".")
    args = dict(data.get("init_args", {}), data_dir=str(data_dir))
    prefix = "--data.init_args."
    for arg in cli_args:
        if arg.startswith(prefix) and "=" in arg:
            key, value = arg[len(prefix) :].split("=", 1)
            args[key] = yaml.safe_load(value)
    getattr(importlib.import_module(module), name)(**args).prepare_data()


# ----------------------------------------------------------------------------------- runs
def overrides(run: Run, data_dir: Path, workers: int) -> Path:
    """A second ``--config`` for the run: its seed, data, logger folder and loader workers."""
    import yaml

    config = {
        "seed_everything": run.seed,
        "trainer": {
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {
                    "save_dir": str(run.folder.parent),
                    "name": run.name,
                    "version": 0,
                },  # fmt: skip
            },
        },
        "data": {"init_args": {"data_dir": str(data_dir), "num_workers": workers}},
    }
    path = run.folder / "overrides.yaml"
    run.folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def best_checkpoint(run: Run) -> Path | None:
    found = sorted(run.checkpoints.glob("best-*.ckpt"))
    return found[-1] if found else None


def checkpoint_step(path: Path) -> int:
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def fit_command(run: Run, over: Path, cli_args: list[str]) -> list[str]:
    command = [sys.executable, str(ROOT / "cli.py"), "fit", "--config", str(run.config),
               "--config", str(over), *cli_args]  # fmt: skip
    last = run.checkpoints / "last.ckpt"
    if last.exists():
        command += ["--ckpt_path", str(last)]
    return command


def test_command(run: Run, best: Path, cli_args: list[str]) -> list[str]:
    logger = ("--trainer.logger=lightning.pytorch.loggers.CSVLogger",
              f"--trainer.logger.save_dir={run.folder}", "--trainer.logger.name=test",
              "--trainer.logger.version=0")  # fmt: skip
    return [sys.executable, str(ROOT / "cli.py"), "test", "--config", str(run.config),
            "--config", str(run.folder / "overrides.yaml"), *cli_args, *logger,
            "--ckpt_path", str(best)]  # fmt: skip


def read_test_metrics(run: Run) -> dict[str, float]:
    path = run.folder / "test" / "version_0" / "metrics.csv"
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {k: float(v) for row in rows for k, v in row.items() if k.startswith("test/") and v}


def read_curve(run: Run, tag: str = "val/acc") -> list[tuple[int, float]]:
    """``(step, value)`` of ``tag`` from every TensorBoard event file of the run (a resumed
    run adds files; a later file's value wins for a step logged twice)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    for events in sorted((run.folder / "version_0").glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        if tag in accumulator.Tags().get("scalars", []):
            for event in accumulator.Scalars(tag):
                points[int(event.step)] = float(event.value)
    return sorted(points.items())


class Scheduler:
    """Runs each run's fit then test as child processes, ``parallel`` at a time."""

    def __init__(self, runs, data_dir, args, max_steps, metric):
        self.pending = [r for r in runs if not r.result_file.exists()]
        self.data_dir, self.args, self.max_steps = data_dir, args, max_steps
        self.metric = metric
        self.active: dict[str, tuple[Run, str, subprocess.Popen, Any, float]] = {}
        self.failed: list[str] = []

    def start(self, run: Run, stage: str) -> None:
        over = overrides(run, self.data_dir, self.args.num_workers)
        if stage == "fit":
            command = fit_command(run, over, self.args.cli_args)
        else:
            command = test_command(run, best_checkpoint(run), self.args.cli_args)
        log = open(run.folder / f"{stage}.log", "a")
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        # Its own process group: a terminal's Ctrl-C reaches this script only, which stops the
        # children in order (each saves its state) instead of all at once.
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                 start_new_session=True)  # fmt: skip
        self.active[run.name] = (run, stage, child, log, time.perf_counter())
        print(f"[{time.strftime('%H:%M:%S')}] {stage:4s} {run.name} (pid {child.pid})", flush=True)

    def finished(self, run: Run, stage: str, code: int, seconds: float) -> None:
        if code != 0:
            self.failed.append(f"{run.name} {stage} exited {code} (see {run.folder}/{stage}.log)")
            return
        if stage == "fit":
            best = best_checkpoint(run)
            # Exit 0 is not proof: a run stopped by a signal may also exit 0. Lightning says
            # this when (and only when) training ran to max_steps.
            log = (run.folder / "fit.log").read_text(errors="replace").rsplit("\n$ ", 1)[-1]
            if best is None or f"`max_steps={self.max_steps}` reached" not in log:
                self.failed.append(f"{run.name} fit ended before step {self.max_steps}")
                return
            fit = {"fit_seconds": seconds, "best_checkpoint": best.name}
            (run.folder / "fit.json").write_text(json.dumps(fit))
            self.pending.insert(0, run)  # its test next
            return
        best = best_checkpoint(run)
        curve = read_curve(run, self.metric["val"])
        sign = 1 if self.metric["mode"] == "max" else -1
        best_step, best_val = (
            max(curve, key=lambda p: (sign * p[1], -p[0])) if curve else (None, None)
        )
        rate = [v for _, v in read_curve(run, "train/tokens_per_sec")]
        fit = json.loads((run.folder / "fit.json").read_text())
        result = {"variant": run.variant, "seed": run.seed, "best_step": checkpoint_step(best),
                  "best_val": best_val, "best_val_step": best_step,
                  "train_tokens_per_s": statistics.median(rate) if rate else None,
                  **read_test_metrics(run), "fit_seconds": fit["fit_seconds"]}  # fmt: skip
        run.result_file.write_text(json.dumps(result, indent=1))
        test = self.metric["test"]
        print(f"  {run.name}: {test} {result.get(test, float('nan')):.4f} "
              f"at step {result['best_step']}", flush=True)  # fmt: skip

    def stop_all(self, why: str) -> None:
        for _run, _stage, child, _log, _ in self.active.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.time() + 60
        for _run, _stage, child, log, _ in self.active.values():
            try:
                child.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                child.kill()
            log.close()
        self.active.clear()
        print(f"stopped ({why}); run the same command again to resume", flush=True)

    def run(self, parallel: int, time_limit: float | None) -> int:
        start = time.time()
        stop = {"why": None}

        def on_signal(signum, _frame):
            stop["why"], stop["signum"] = signal.Signals(signum).name, signum

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.pending or self.active:
                if time_limit is not None and time.time() - start > time_limit:
                    stop["why"] = f"time limit {time_limit:.0f} s"
                if stop["why"]:
                    self.stop_all(stop["why"])
                    return 128 + stop["signum"] if "signum" in stop else 3
                while self.pending and len(self.active) < parallel:
                    run = self.pending.pop(0)
                    self.start(run, "test" if (run.folder / "fit.json").exists() else "fit")
                for name, (run, stage, child, log, t0) in list(self.active.items()):
                    if child.poll() is not None:
                        log.close()
                        del self.active[name]
                        self.finished(run, stage, child.returncode, time.perf_counter() - t0)
                time.sleep(1.0)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        for line in self.failed:
            print(f"failed: {line}", file=sys.stderr)
        return 1 if self.failed else 0


# -------------------------------------------------------------------------------- report
def _spread(values: list[float], each: bool = False) -> str:
    """``mean +- std`` to 2 decimals (std 0 for one value), and each value after it."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    text = f"{statistics.fmean(values):.2f} +- {std:.2f}"
    return text + f" ({', '.join(f'{v:.2f}' for v in values)})" if each else text


def report(out: Path) -> None:
    """results.csv, table.md, curves.csv and val_curves.png from the finished runs."""
    meta = json.loads((out / "reproduce.json").read_text())
    metric = METRICS[meta.get("kind", "lra")]
    runs = [Run(v, s, Path(meta["configs"][v]), out / "runs" / f"{v}-seed{s}")
            for v in meta["variants"] for s in meta["seeds"]]  # fmt: skip
    results = [json.loads(r.result_file.read_text()) for r in runs if r.result_file.exists()]
    if not results:
        print(f"no finished run under {out}/runs yet")
        return
    test, scale = metric["test"], metric["scale"]
    fields = ["variant", "seed", test, test.replace("ppl", "loss").replace("acc", "loss"),
              "best_val", "best_step", "train_tokens_per_s", "fit_seconds"]  # fmt: skip
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results)
    task, unit = meta["task"], metric["unit"]
    lines = [f"| variant | test {unit}, mean +- std (each seed) | seeds | best validation "
             f"{unit} | training tokens/s | paper, test {unit} |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for variant in meta["variants"]:
        rows = sorted((r for r in results if r["variant"] == variant), key=lambda r: r["seed"])
        if not rows:
            continue
        acc = _spread([scale * r[test] for r in rows], each=True)
        val = _spread([scale * r["best_val"] for r in rows])
        rate = [r["train_tokens_per_s"] for r in rows if r.get("train_tokens_per_s")]
        paper = (PAPER_LM.get(variant) if meta.get("kind") == "lm"
                 else PAPER_LRA.get(variant, {}).get(task))  # fmt: skip
        lines.append(f"| {variant} | {acc} | {len(rows)} | {val} | "
                     f"{f'{statistics.fmean(rate):,.0f}' if rate else '—'} | "
                     f"{'—' if paper is None else f'{paper:.2f}'} |")  # fmt: skip
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    # Every run's curve, unfinished ones too (a reproduction in progress can be watched); a
    # run whose event files are not here (results copied without them) keeps its curve.
    kept = read_curves(out)[1] if (out / "curves.csv").exists() else {}
    curves = {r.name: read_curve(r, metric["val"]) or kept.get(r.name, []) for r in runs}
    curves = {name: points for name, points in curves.items() if points}
    with open(out / "curves.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "step", metric["val"]])
        for name, points in curves.items():
            writer.writerows((name, step, value) for step, value in points)
    plot_curves(out)


def _pyplot():
    """matplotlib.pyplot drawing to files, or None (with a message) where it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing (pip install -e '.[plots]'): no PNG written")
        return None
    return plt


def read_curves(out: Path) -> tuple[str, dict[str, list[tuple[int, float]]]]:
    """``out/curves.csv``: the validation metric's name and ``{run: [(step, value), ...]}``."""
    curves: dict[str, list[tuple[int, float]]] = {}
    with open(out / "curves.csv", newline="") as handle:
        reader = csv.reader(handle)
        tag = next(reader)[2]
        for name, step, value in reader:
            curves.setdefault(name, []).append((int(step), float(value)))
    return tag, curves


def plot_curves(out: Path) -> None:
    """val_curves.png from curves.csv (so it can be drawn again where the runs are not)."""
    plt = _pyplot()
    if plt is None:
        return
    meta = json.loads((out / "reproduce.json").read_text())
    tag, curves = read_curves(out)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = dict(
        zip(meta["variants"], plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False)
    )
    labelled = set()
    for name, points in sorted(curves.items()):
        variant = name.rsplit("-seed", 1)[0]
        steps, values = zip(*points, strict=False)
        label = None if variant in labelled else variant
        labelled.add(variant)
        ax.plot(steps, values, color=colours.get(variant), alpha=0.8, lw=1, label=label)
    what = "WikiText-103 decoder" if meta.get("kind") == "lm" else f"LRA {meta['task']}"
    ax.set(xlabel="training step", ylabel=tag,
           title=f"{what}: {tag} per run, seeds {', '.join(map(str, meta['seeds']))}")  # fmt: skip
    if meta.get("kind") == "lm":
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "val_curves.png", dpi=120)
    print(f"wrote {out / 'val_curves.png'}")


def compare(
    outs: list[Path], labels: list[str] | None, to: Path, variants: list[str] | None = None
) -> None:
    """One table and one plot over several reproductions of the same task that differ in
    their ``--`` options (an ablation): ``compare.csv`` (every run), ``compare.md`` (test
    accuracy per setting and variant, mean +- std over seeds) and ``compare.png`` (validation
    curves, one colour per setting)."""
    metas = []
    for out in outs:
        if not (out / "reproduce.json").exists():
            raise UsageError(f"{out} holds no reproduction (no reproduce.json)")
        metas.append(json.loads((out / "reproduce.json").read_text()))
    if len({(m.get("kind", "lra"), m["task"]) for m in metas}) > 1:
        raise UsageError("compare takes reproductions of one task")
    if labels is None:
        labels = [" ".join(m.get("cli_args") or []) or "paper config" for m in metas]
    if len(labels) != len(outs):
        raise UsageError(f"{len(outs)} reproductions but {len(labels)} labels")
    metric = METRICS[metas[0].get("kind", "lra")]
    test, scale, unit = metric["test"], metric["scale"], metric["unit"]
    rows, curves = [], {}
    for out, meta, label in zip(outs, metas, labels, strict=True):
        for variant in meta["variants"]:
            if variants and variant not in variants:
                continue
            for seed in meta["seeds"]:
                run = Run(variant, seed, Path(meta["configs"][variant]),
                          out / "runs" / f"{variant}-seed{seed}")  # fmt: skip
                if run.result_file.exists():
                    rows.append(dict(json.loads(run.result_file.read_text()), setting=label))
        for name, points in read_curves(out)[1].items():
            if not variants or name.rsplit("-seed", 1)[0] in variants:
                curves[label, name] = points
    if not rows:
        raise UsageError("no finished run in these reproductions")
    to.mkdir(parents=True, exist_ok=True)
    fields = ["setting", "variant", "seed", test, "best_val", "best_step"]
    with open(to / "compare.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"| setting | variant | test {unit}, mean +- std (each seed) | best validation "
             f"{unit} |", "|---|---|---|---|"]  # fmt: skip
    for label in labels:
        for variant in dict.fromkeys(r["variant"] for r in rows if r["setting"] == label):
            mine = sorted((r for r in rows if (r["setting"], r["variant"]) == (label, variant)),
                          key=lambda r: r["seed"])  # fmt: skip
            acc = _spread([scale * r[test] for r in mine], each=True)
            val = _spread([scale * r["best_val"] for r in mine])
            lines.append(f"| {label} | {variant} | {acc} | {val} |")
    (to / "compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plt = _pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = dict(zip(labels, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    labelled = set()
    many = len({r["variant"] for r in rows}) > 1
    for (label, name), points in sorted(curves.items()):
        steps, values = zip(*sorted(points), strict=False)
        legend = f"{label}: {name.rsplit('-seed', 1)[0]}" if many else label
        ax.plot(steps, values, color=colours[label], alpha=0.8, lw=1,
                label=None if legend in labelled else legend)  # fmt: skip
        labelled.add(legend)
    ax.set(xlabel="training step", ylabel=metric["val"],
           title=f"{metas[0]['task']}: {metric['val']} per run, by setting")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(to / "compare.png", dpi=120)
    print(f"wrote {to / 'compare.png'}")


# ---------------------------------------------------------------------------------- main
def _common(parser: argparse.ArgumentParser, variants: tuple[str, ...], seeds: list[int]) -> None:
    parser.add_argument("--variants", nargs="+", choices=variants, default=list(variants))
    parser.add_argument("--seeds", nargs="+", type=int, default=seeds)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, help="default results/reproduce/<table>")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument("--num-workers", type=int, default=1, help="loader workers per run")
    parser.add_argument("--time-limit", type=float, help="stop (resumable) after so many seconds")
    parser.add_argument("cli_args", nargs="*", help="after --: more cli.py options for every run")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    lra = commands.add_parser("lra", help="an LRA table: variants x seeds of one task")
    lra.add_argument("--task", choices=LRA_TASKS, default="listops")
    _common(lra, LRA_VARIANTS, [0, 1, 2])
    lm = commands.add_parser("lm", help="the WikiText-103 table (or a corpus in its layout)")
    _common(lm, LM_VARIANTS, [0])
    rep = commands.add_parser("report", help="write the tables and the plot again")
    rep.add_argument("out", type=Path)
    cmp = commands.add_parser("compare", help="one table and plot over several reproductions "
                              "of one task (an ablation)")  # fmt: skip
    cmp.add_argument("outs", type=Path, nargs="+", help="reproduction folders")
    cmp.add_argument("--labels", nargs="+", help="one per folder (default: its -- options)")
    cmp.add_argument("--to", type=Path, default=Path("results/reproduce/compare"))
    cmp.add_argument("--variants", nargs="+", help="only these variants (default: all)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        if args.command == "report":
            if not (args.out / "reproduce.json").exists():
                raise UsageError(f"{args.out} holds no reproduction (no reproduce.json)")
            report(args.out)
            return 0
        if args.command == "compare":
            compare(args.outs, args.labels, args.to, args.variants)
            return 0
        return reproduce(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A reproduction folder's settings after a run with more variants or seeds: the union
    (variants in the table's order, seeds sorted), so its report covers every run in it."""
    order = LRA_VARIANTS if new["kind"] == "lra" else LM_VARIANTS
    chosen = set(old["variants"]) | set(new["variants"])
    return {**new, "variants": [v for v in order if v in chosen],
            "seeds": sorted(set(old["seeds"]) | set(new["seeds"])),
            "configs": {**old["configs"], **new["configs"]}}  # fmt: skip


def reproduce(args: argparse.Namespace) -> int:
    import yaml

    if args.parallel < 1:
        raise UsageError(f"--parallel must be >= 1, got {args.parallel}")
    data_dir = args.data_dir
    if args.command == "lra":
        task, folder = args.task, ROOT / "configs" / "lra" / args.task
        if task == "listops":
            data_dir = find_or_generate_listops(data_dir, min(os.cpu_count() or 1, 16))
    else:
        task, folder = "wikitext103", ROOT / "configs" / "wikitext103"
    if "--data.init_args.generate=true" in args.cli_args:  # the data module makes it
        data_dir.mkdir(parents=True, exist_ok=True)
    if not data_dir.exists():
        raise UsageError(f"{data_dir} does not exist: put the {task} data there (README, Data)")
    out = args.out or Path("results/reproduce") / (
        f"lra-{task}" if args.command == "lra" else f"lm-{data_dir.name}"
    )
    configs = {v: folder / f"{v}.yaml" for v in args.variants}
    out.mkdir(parents=True, exist_ok=True)
    meta = {"kind": args.command, "task": task, "variants": args.variants, "seeds": args.seeds,
            "configs": {v: str(p) for v, p in configs.items()}, "data_dir": str(data_dir),
            "cli_args": args.cli_args}  # fmt: skip
    previous = out / "reproduce.json"
    if previous.exists():
        old = json.loads(previous.read_text())
        if (old["task"], old.get("cli_args")) != (meta["task"], meta["cli_args"]):
            raise UsageError(f"{out} holds a reproduction with other settings; use another --out")
        meta = merged(old, meta)  # more variants or seeds: the table reports them all
    previous.write_text(json.dumps(meta, indent=1))
    prepare_cache(configs[args.variants[0]], data_dir, args.cli_args)
    steps = yaml.safe_load(configs[args.variants[0]].read_text())["trainer"]["max_steps"]
    for arg in args.cli_args:  # a --trainer.max_steps among the extra options wins
        if arg.startswith("--trainer.max_steps="):
            steps = int(arg.split("=", 1)[1])
    runs = [Run(v, s, configs[v], out / "runs" / f"{v}-seed{s}")
            for s in args.seeds for v in args.variants]  # fmt: skip
    todo = sum(not r.result_file.exists() for r in runs)
    print(f"{len(runs)} runs, {len(runs) - todo} finished before; {args.parallel} at a time; "
          f"{steps} steps each; results in {out}", flush=True)  # fmt: skip
    scheduler = Scheduler(runs, data_dir, args, steps, METRICS[args.command])
    code = scheduler.run(args.parallel, args.time_limit)
    report(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
