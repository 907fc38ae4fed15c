"""CPU benchmark: forward+backward time and peak memory of softmax, band, linear and fmm attention.

    python bench/attention_cpu.py --threads 1      # table, and results/attention_cpu.csv

Variants (inputs q, k, v of shape (batch, heads, seq, head_dim), float32):
    softmax  full attention, torch's scaled_dot_product_attention (the baseline)
    band     near_field(q, k, v, bandwidth)
    linear   far_field(q, k, v, "elu")
    fmm      near_field(..., bandwidth) + far_field(..., "elu") + far_field(..., "elu_flip")
             (the paper's band + 2 kernels, blended with unit weights)

Each (variant, seq) cell runs in a fresh subprocess so that its peak resident memory
(``ru_maxrss``) is its own: "peak MiB" is the peak RSS during the first forward+backward minus
the RSS just before it (inputs already allocated). Time is the fastest of ``--repeats``
forward+backward passes after that first one, as wall-clock time and as this process's CPU time.
On a machine shared with other jobs, wall time includes waiting for a core; with ``--threads 1``
(one thread, so no OpenMP team stalling on a core another process holds) the CPU time is the
work itself and the better measure of scaling. Softmax is skipped above ``--softmax-max-seq`` (time grows as seq^2).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

# Run from a checkout without `pip install -e .`: the package sits next to bench/.
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

VARIANTS = ("softmax", "band", "linear", "fmm")
FIELDS = (
    "variant", "seq", "batch", "heads", "head_dim", "bandwidth", "causal", "threads",
    "ms", "cpu_ms", "peak_mib",
)  # fmt: skip


def _attention(variant: str, bandwidth: int, causal: bool):
    import torch.nn.functional as F

    from fmmformer_pl.attention import far_field, near_field

    if variant == "softmax":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    if variant == "band":
        return lambda q, k, v: near_field(q, k, v, bandwidth, causal=causal)
    if variant == "linear":
        return lambda q, k, v: far_field(q, k, v, "elu", causal=causal)
    if variant == "fmm":
        return lambda q, k, v: (
            near_field(q, k, v, bandwidth, causal=causal)
            + far_field(q, k, v, "elu", causal=causal)
            + far_field(q, k, v, "elu_flip", causal=causal)
        )
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def _worker(args: argparse.Namespace) -> dict:
    """One cell, in this (fresh) process: peak memory of the first pass, then best time."""
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fn = _attention(args.variant, args.bandwidth, args.causal)
    shape = (args.batch, args.heads, args.seq, args.head_dim)
    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(shape)

    def step():
        q.grad = k.grad = v.grad = None
        fn(q, k, v).backward(grad_out)

    # Warm up on a short sequence first so that one-off costs (kernel libraries, thread
    # pools, allocator arenas) do not count as this cell's memory.
    small = [t.detach()[:, :, :256].requires_grad_() for t in (q, k, v)]
    fn(*small).backward(grad_out[:, :, :256])
    del small
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, cpu_times = [], []
    while len(times) < args.repeats and sum(times) < args.max_seconds:
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return {
        "ms": 1e3 * min(times),
        "cpu_ms": 1e3 * min(cpu_times),
        "peak_mib": (peak - before) / 1024,  # ru_maxrss is KiB on Linux
    }


def _run_cell(args: argparse.Namespace, variant: str, seq: int) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", "--variant", variant, "--seq", str(seq),
        "--batch", str(args.batch), "--heads", str(args.heads), "--head-dim", str(args.head_dim),
        "--bandwidth", str(args.bandwidth), "--repeats", str(args.repeats),
        "--max-seconds", str(args.max_seconds), "--threads", str(args.threads),
    ] + (["--causal"] if args.causal else [])  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seqs", default="1024,2048,4096,8192,16384,32768")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--bandwidth", type=int, default=64)
    p.add_argument("--causal", action="store_true", help="causal masks (default bidirectional)")
    p.add_argument("--repeats", type=int, default=5, help="timed passes; the fastest is kept")
    p.add_argument(
        "--max-seconds", type=float, default=10.0, help="stop repeating a cell after this long"
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--softmax-max-seq", type=int, default=16384)
    p.add_argument(
        "--csv", type=Path, default=REPO / "results" / "attention_cpu.csv",
        help="write the table as CSV here",
    )  # fmt: skip
    # Internal: run one cell (used by the parent process for a clean peak-memory reading).
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = _parse(argv)
    if args.worker:
        json.dump(_worker(args), sys.stdout)
        return

    seqs = [int(s) for s in args.seqs.split(",")]
    variants = args.variants.split(",")
    for variant in variants:
        _attention(variant, args.bandwidth, args.causal)  # fail early on a bad name
    rows = []
    print(
        f"batch {args.batch}, heads {args.heads}, head_dim {args.head_dim}, bandwidth "
        f"{args.bandwidth}, {'causal' if args.causal else 'bidirectional'}, float32, "
        f"fwd+bwd, {os.cpu_count()} CPUs, "
        f"{args.threads if args.threads > 0 else 'default'} torch threads"
    )
    print(f"{'variant':>8} {'seq':>7} {'wall ms':>10} {'CPU ms':>10} {'peak MiB':>10}")
    for variant in variants:
        for seq in seqs:
            if variant == "softmax" and seq > args.softmax_max_seq:
                print(f"{variant:>8} {seq:>7} {'skipped':>10}")
                continue
            cell = _run_cell(args, variant, seq)
            rows.append(
                {
                    "variant": variant,
                    "seq": seq,
                    "batch": args.batch,
                    "heads": args.heads,
                    "head_dim": args.head_dim,
                    "bandwidth": args.bandwidth,
                    "causal": args.causal,
                    "threads": args.threads or "default",
                    "ms": round(cell["ms"], 2),
                    "cpu_ms": round(cell["cpu_ms"], 2),
                    "peak_mib": round(cell["peak_mib"], 1),
                }
            )
            print(
                f"{variant:>8} {seq:>7} {cell['ms']:>10.1f} {cell['cpu_ms']:>10.1f} "
                f"{cell['peak_mib']:>10.1f}",
                flush=True,
            )

    cells = {(r["variant"], r["seq"]): r for r in rows}
    for variant in variants:
        if (variant, 2048) in cells and (variant, 16384) in cells:
            short, long = cells[(variant, 2048)], cells[(variant, 16384)]
            print(
                f"{variant}: time(16K) / time(2K) = {long['ms'] / short['ms']:.1f}x wall, "
                f"{long['cpu_ms'] / short['cpu_ms']:.1f}x CPU (linear would be 8x)"
            )
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
