"""Where the time of one attention step goes on the GPU: host launches vs kernels.

    python bench/attention_profile.py --seqs 1024 65536     # -> results/attention_profile.csv

For each variant (``bench/attention_gpu.py``'s names), length and mask: the eager step time
(CUDA events around fwd + bwd, as in ``attention_gpu.py``), the same step replayed from a CUDA
graph (no host work: the GPU time of its kernels and the gaps between them), the number of
kernels one step launches, and the kernels that take the most GPU time (torch.profiler).
eager >> graph means the step is host-bound: the GPU waits for the Python side to launch.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from attention_gpu import add_short_option, apply_short_option, step_case  # noqa: E402
from cuda_timing import graphed, median_ms  # noqa: E402


def time_one(name, seq, causal, args):
    """The eager and graph-replay times of one case, and its profile function."""
    fn, (q, k, v), inputs, grad_out = step_case(name, seq, causal, args)

    def step():
        return torch.autograd.grad(fn(q, k, v), inputs, grad_out)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    eager = median_ms(step, args.repeats)

    graph_ms, note = float("nan"), ""
    try:
        replay = graphed(step)
        replay()
        torch.cuda.synchronize()
        graph_ms = median_ms(replay, args.repeats)
    except Exception as err:  # report, do not stop the sweep
        note = f"graph capture failed: {type(err).__name__}: {str(err)[:120]}"
    row = dict(variant=name, seq=seq, causal=causal, eager_ms=round(eager, 4))
    return {**row, "graph_ms": round(graph_ms, 4), "note": note}, step


def profile_one(step, args):
    """The kernels of one eager step (torch.profiler): their count, total and top GPU time.
    Run after every timing: on the H200, a case timed after another's profile in the same
    process measured 3-15% slower as graph replays (two runs with the two variants in either
    order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_name: dict[str, float] = {}
    for e in kernels:
        by_name[e.name] = by_name.get(e.name, 0.0) + e.device_time / 1e3  # ms
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[: args.top]
    return dict(
        kernels=len(kernels),
        kernel_ms=round(sum(by_name.values()), 4),
        top=" | ".join(f"{n[:48]} {t:.3f}" for n, t in top),
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seqs", type=int, nargs="+", default=[1024, 65536])
    p.add_argument("--variants", nargs="+", default=["softmax", "band", "linear", "fmm_r2"])
    p.add_argument("--modes", nargs="+", default=["bidirectional", "causal"])
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--band", type=int, default=64)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--out", type=Path, default=REPO / "results" / "attention_profile.csv")
    add_short_option(p)
    args = p.parse_args(argv)
    apply_short_option(args)
    if not torch.cuda.is_available():
        raise SystemExit("attention_profile.py needs a CUDA device")
    timed = [
        time_one(name, seq, mode == "causal", args)
        for mode in args.modes
        for seq in args.seqs
        for name in args.variants
    ]
    rows = []
    for row, step in timed:
        row = {**row, **profile_one(step, args)}
        note = row.pop("note")
        rows.append({**row, "note": note})
        mode = "causal" if row["causal"] else "bidirectional"
        print(
            f"{row['variant']:8s} {mode:13s} seq={row['seq']:7d} eager {row['eager_ms']:8.3f} ms  "
            f"graph {row['graph_ms']:8.3f} ms  kernels {row['kernels']:3d} "
            f"(sum {row['kernel_ms']:.3f} ms) {note}\n    {row['top']}",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
