#!/usr/bin/env python
"""DeepSpeed on one GPU, checked end to end through ``cli.py``; one CSV row per check.

    python scripts/deepspeed_check.py [--out results/deepspeed_check] [--steps 20]

1. ZeRO-2 and ZeRO-3 (bf16): the ListOps paper config (``fmm1_band5``) fits ``--steps`` steps
   on generated LRA-length ListOps. A second run of the same command is stopped with SIGTERM
   after a few steps (it must exit 143 and print the resume command, its checkpoint a DeepSpeed
   folder), then resumed with that command to the same last step. Both final checkpoints are
   converted with ``scripts/convert_deepspeed_checkpoint.py`` and their weights compared; the
   converted file of the uninterrupted run goes through ``cli.py test``.
2. Peak memory of a ~100M-parameter model (the WikiText-103 decoder widened to dim 768, 12
   layers, 12 heads, FFN 3,072, on a generated corpus of 20,000 words): plain bf16 against
   ZeRO-3 with parameters and optimizer state offloaded to the CPU, a few steps each
   (``train/peak_memory_gib``, i.e. ``torch.cuda.max_memory_allocated``, as logged).

Writes ``OUT/deepspeed_check.csv`` (check, result, value, detail) and each run's console log
and logs under OUT. Exit status 0 when every check passed. Needs a CUDA GPU and ``deepspeed``;
``--cpu`` runs the same steps on the CPU with plain DDP-free training (strategy ``auto``,
float32, a smaller model) to test the script itself: no DeepSpeed, no conversion, memory 0.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LISTOPS = ROOT / "configs" / "lra" / "listops" / "fmm1_band5.yaml"
WIKITEXT = ROOT / "configs" / "wikitext103" / "fmm1_band20.yaml"
STRATEGIES = ROOT / "configs" / "strategies"


class Checks:
    def __init__(self, out: Path) -> None:
        self.out, self.rows, self.failed = out, [], 0

    def add(self, check: str, ok: bool, value: object = "", detail: str = "") -> None:
        self.rows.append({"check": check, "result": "pass" if ok else "FAIL", "value": value,
                          "detail": detail})  # fmt: skip
        self.failed += not ok
        print(f"[{'pass' if ok else 'FAIL'}] {check}: {value} {detail}".rstrip(), flush=True)

    def write(self) -> Path:
        path = self.out / "deepspeed_check.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, ["check", "result", "value", "detail"])
            writer.writeheader()
            writer.writerows(self.rows)
        return path


def cli(args: list[str], log: Path, env: dict, timeout: int = 1200) -> subprocess.CompletedProcess:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, env=env,
                              stdout=handle, stderr=subprocess.STDOUT, timeout=timeout)  # fmt: skip


def stop_with_sigterm(args: list[str], log: Path, env: dict, at_step: int) -> tuple[int, str]:
    """Runs cli.py, sends SIGTERM once its progress passes ``at_step``; (exit status, output)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    lines = []
    for line in child.stdout:
        lines.append(line)
        match = re.search(r" step (\d+)/", line)
        if match and int(match[1]) >= at_step:
            child.send_signal(signal.SIGTERM)
            break
    rest, _ = child.communicate(timeout=600)
    text = "".join(lines) + rest
    log.write_text(text)
    return child.returncode, text


def final_checkpoint(logs: Path, steps: int) -> Path | None:
    found = sorted(logs.rglob(f"periodic-step={steps}.ckpt"))
    return found[0] if found else None


def load_weights(path: Path, out: Path, env: dict, use_deepspeed: bool):
    import torch

    if use_deepspeed:
        converted = out / (path.parent.parent.name + "-" + path.name.replace(".ckpt", "") + ".pt")
        subprocess.run([sys.executable, str(ROOT / "scripts" / "convert_deepspeed_checkpoint.py"),
                        str(path), str(converted), "--force"], check=True, env=env)  # fmt: skip
        path = converted
    return path, torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def write_corpus(folder: Path, words: int = 20_000, tokens: int = 400_000) -> None:
    import random

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(words)]
    for split, count in (("train", tokens), ("valid", tokens // 20), ("test", tokens // 20)):
        body = " ".join(rng.choice(vocabulary) for _ in range(count))
        text = f" \n = Title = \n \n {' '.join(vocabulary)} \n {body} \n"
        (folder / f"wiki.{split}.tokens").write_text(text)


def peak_memory(logs: Path) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    peaks = [0.0]
    for events in logs.rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events.parent))
        accumulator.Reload()
        if "train/peak_memory_gib" in accumulator.Tags()["scalars"]:
            peaks += [e.value for e in accumulator.Scalars("train/peak_memory_gib")]
    return max(peaks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "deepspeed_check")
    parser.add_argument("--steps", type=int, default=20, help="steps of each ListOps run (20)")
    parser.add_argument("--memory-steps", type=int, default=6, help="steps of each memory run")
    parser.add_argument("--cpu", action="store_true", help="test the script on the CPU")
    parser.add_argument("--only", choices=["resume", "memory"], help="run one part only")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    checks = Checks(out)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    use_deepspeed = not args.cpu
    if use_deepspeed:
        import importlib.util

        import torch

        if not torch.cuda.is_available() or importlib.util.find_spec("deepspeed") is None:
            print(
                "error: needs a CUDA GPU and deepspeed (or --cpu to test the script)",
                file=sys.stderr,
            )
            return 2

    steps, half = args.steps, max(2, args.steps // 2)
    data = out / "listops"
    if not (data / "basic_train.tsv").is_file():
        length = ("20", "60") if args.cpu else ("500", "2000")  # LRA: 500 < length < 2000
        subprocess.run([sys.executable, "-m", "data_modules.lra.listops", "generate", "--out",
                        str(data), "--train", str(32 * steps), "--val", "64", "--test", "64",
                        "--min-length", length[0], "--max-length", length[1]], cwd=ROOT, env=env,
                       check=True)  # fmt: skip
    small = ["--model.init_args.encoder.dim", "16", "--model.init_args.encoder.ffn_dim", "32",
             "--data.init_args.max_length", "64", "--trainer.accelerator", "cpu",
             "--data.init_args.num_workers", "0"] if args.cpu else []  # fmt: skip

    for stage in (2, 3) if args.only != "memory" else ():
        strategy = (
            [] if args.cpu else ["--config", str(STRATEGIES / f"deepspeed_stage{stage}.yaml")]
        )
        common = ["--config", str(LISTOPS), *strategy, "--data.init_args.data_dir", str(data),
                  "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(half),
                  "--trainer.limit_val_batches", "2", "--trainer.num_sanity_val_steps", "0",
                  "--trainer.log_every_n_steps", "1", "--seed_everything", "7",
                  "--model.init_args.optim.total_steps", str(steps),
                  "--model.init_args.optim.warmup_steps", "2",
                  "--model.init_args.encoder.dropout", "0",
                  "--model.init_args.encoder.attention.dropout", "0",
                  "--periodic_checkpoint.steps", str(half), *small]  # fmt: skip
        name = f"zero{stage}"
        straight_logs, resumed_logs = out / name / "straight", out / name / "resumed"
        began = time.time()
        result = cli(["fit", *common, "--trainer.logger.init_args.save_dir", str(straight_logs)],
                     out / name / "straight.log", env)  # fmt: skip
        straight = final_checkpoint(straight_logs, steps)
        checks.add(f"{name} fit {steps} steps", result.returncode == 0 and straight is not None,
                   f"exit {result.returncode}", f"{time.time() - began:.0f} s")  # fmt: skip
        if straight is None:
            continue

        # Stopped by SIGTERM a few steps in, then resumed with the command it printed.
        code, text = stop_with_sigterm(
            ["fit", *common, "--trainer.logger.init_args.save_dir", str(resumed_logs)],
            out / name / "stopped.log",
            env,
            at_step=3,
        )
        line = next((x for x in text.splitlines() if "stopped by SIGTERM" in x), "")
        checks.add(f"{name} SIGTERM stop", code == 143 and "resume: " in line, f"exit {code}",
                   line.split(";")[0])  # fmt: skip
        if "resume: " not in line:
            continue
        command = shlex.split(line.split("resume: ", 1)[1])[2:]  # after "python cli.py"
        result = cli(command, out / name / "resumed.log", env)
        resumed = final_checkpoint(resumed_logs, steps)
        checks.add(f"{name} resumed to step {steps}", result.returncode == 0 and resumed is not None,
                   f"exit {result.returncode}")  # fmt: skip
        if resumed is None:
            continue

        converted, reference = load_weights(straight, out, env, use_deepspeed)
        _, weights = load_weights(resumed, out, env, use_deepspeed)
        diff = max(
            float((reference[k].float() - weights[k].float()).abs().max()) for k in reference
        )
        # One GPU, same seed, same data order: equal up to the kernels' atomics.
        checks.add(f"{name} resumed weights vs uninterrupted", diff <= 1e-3, f"{diff:.3g}",
                   "max |difference| over all weights")  # fmt: skip
        test_args = ["test", "--config", str(LISTOPS), "--data.init_args.data_dir", str(data),
                     "--ckpt_path", str(converted), "--weights_only", "false",
                     "--trainer.limit_test_batches", "2",
                     "--trainer.logger.init_args.save_dir", str(out / name / "test"), *small]  # fmt: skip
        if not args.cpu:
            test_args += ["--config", str(STRATEGIES / "bf16.yaml")]
        result = cli(test_args, out / name / "test.log", env)
        accuracy = re.search(r"test/acc\s*│\s*([0-9.]+)", (out / name / "test.log").read_text())
        checks.add(f"{name} converted checkpoint tests", result.returncode == 0 and bool(accuracy),
                   accuracy[1] if accuracy else "", str(converted.name))  # fmt: skip

    # Peak memory, ~100M parameters: plain bf16 against ZeRO-3 with CPU offload.
    corpus = out / "wikitext" / "wikitext-103"
    if not (corpus / "wiki.train.tokens").is_file():
        write_corpus(corpus)
    wide = ["--model.init_args.decoder.dim", "768", "--model.init_args.decoder.depth", "12",
            "--model.init_args.decoder.num_heads", "12", "--model.init_args.decoder.ffn_dim",
            "3072", "--model.init_args.decoder.adaptive_softmax_cutoffs", "[]",
            "--data.init_args.batch_size", "8"]  # fmt: skip
    if args.cpu:
        wide = ["--model.init_args.decoder.dim", "32", "--model.init_args.decoder.depth", "2",
                "--model.init_args.decoder.num_heads", "2", "--model.init_args.decoder.ffn_dim",
                "64", "--model.init_args.decoder.adaptive_softmax_cutoffs", "[]",
                "--data.init_args.batch_size", "2", "--data.init_args.tgt_len", "32",
                "--trainer.accelerator", "cpu"]  # fmt: skip
    offload = out / "zero3_offload.yaml"
    offload.write_text(
        "trainer:\n  precision: bf16-mixed\n  strategy:\n"
        "    class_path: lightning.pytorch.strategies.DeepSpeedStrategy\n    init_args:\n"
        "      config:\n        zero_optimization:\n          stage: 3\n"
        "          offload_optimizer: {device: cpu, pin_memory: true}\n"
        "          offload_param: {device: cpu, pin_memory: true}\n"
        # Our tasks build torch's AdamW; DeepSpeed otherwise insists on its compiled CPU Adam.
        "        zero_force_ds_cpu_optimizer: false\n        zero_allow_untested_optimizer: true\n"
    )  # fmt: skip
    runs = {
        "bf16": ["--config", str(STRATEGIES / "bf16.yaml")],
        "zero3_offload": ["--config", str(offload)],
    }
    if args.cpu:
        runs = {"fp32": [], "fp32_again": []}
    peaks = {}
    for name, strategy in runs.items() if args.only != "resume" else ():
        logs = out / "memory" / name
        result = cli(["fit", "--config", str(WIKITEXT), *strategy, "--data.init_args.data_dir",
                      str(corpus.parent), *wide, "--trainer.max_steps", str(args.memory_steps),
                      "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1",
                      "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false",
                      "--trainer.logger.init_args.save_dir", str(logs)],
                     out / "memory" / f"{name}.log", env)  # fmt: skip
        text = (out / "memory" / f"{name}.log").read_text()
        params = re.search(r"Total params[:\s│]*([0-9.]+ [KMB]?)", text)
        peaks[name] = peak_memory(logs)
        checks.add(f"memory {name}", result.returncode == 0, f"{peaks[name]:.2f} GiB",
                   f"parameters {params[1] if params else '?'}")  # fmt: skip
    if not args.cpu and all(peaks.values()):
        ratio = peaks["zero3_offload"] / peaks["bf16"]
        checks.add("memory zero3_offload / bf16", ratio < 1, f"{ratio:.2f}")

    path = checks.write()
    print(f"{len(checks.rows) - checks.failed}/{len(checks.rows)} checks passed; {path}")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
