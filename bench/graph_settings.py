"""Settings of the FMM kernels side by side as CUDA-graph replays in one process, with SDPA.

    python bench/graph_settings.py --seq 1024 \
        --setting nopdl '{"short:pdl": false}' --setting seg8 '{"short:state_segments": 8}'

Each setting (``far_tune.py``'s knobs, applied with ``far_tune._apply`` while its step is
captured) and SDPA flash get one fwd+bwd step of ``attention_gpu.py``'s case (bf16, batch 1,
``--heads`` x ``--head-dim``, band ``--band``, bidirectional unless ``--causal``) captured as a
CUDA graph; the graphs are then timed in turn, ``--rounds`` rounds of ``median_ms(replay,
--repeats)``, so a slow moment of the GPU hits every setting alike. Prints the median of the
rounds' medians per setting, then the kernel timeline of one replay of each of the first
``--timelines`` (torch.profiler: start, end and duration of each kernel in µs from the
replay's first kernel; overlapping rows are kernels running side by side). No profiler runs
before the timing: once one has, graph replays measured slower. ``--out``: the medians as CSV.

The captured inputs stay referenced until the end: ``torch.cuda.graph`` empties the caching
allocator before a capture, so a graph whose inputs were freed reads unmapped memory.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import far_tune  # noqa: E402
from attention_gpu import step_case  # noqa: E402
from cuda_timing import graphed, median_ms  # noqa: E402


def capture(name, setting, args, keep):
    """The graph replay of one step of variant ``name`` with ``setting`` applied."""
    snap = far_tune._snapshot()
    try:
        far_tune._apply("short", setting, args.causal)
        fn, (q, k, v), inputs, grad_out = step_case(name, args.seq, args.causal, args)

        def step():
            return torch.autograd.grad(fn(q, k, v), inputs, grad_out)

        step()
        torch.cuda.synchronize()
        replay = graphed(step)
        replay()
        torch.cuda.synchronize()
    finally:
        far_tune._restore(snap)
    keep.append((step, inputs, grad_out))
    return replay


def timeline(replay) -> str:
    """The kernels of the last of three profiled replays, from its first kernel (µs)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            replay()
        torch.cuda.synchronize()
    kernels = sorted(
        (e.time_range.start, e.time_range.end, e.name)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA
    )
    last = kernels[-(len(kernels) // 3) :]
    t0 = last[0][0]
    return "\n".join(f"   {s - t0:7.1f} {e - t0:7.1f} {e - s:6.1f}  {n[:60]}" for s, e, n in last)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--band", type=int, default=64)
    p.add_argument(
        "--setting", nargs=2, action="append", default=[], metavar=("LABEL", "JSON"),
        help="a label and a far_tune setting, e.g. pdl_off '{\"short:pdl\": false}'",
    )  # fmt: skip
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--timelines", type=int, default=3, help="settings whose timeline to print")
    p.add_argument("--out", type=Path, default=REPO / "results" / "graph_settings.csv")
    args = p.parse_args(argv)
    settings = {"default": {}, **{label: json.loads(js) for label, js in args.setting}}
    if not torch.cuda.is_available():
        raise SystemExit("graph_settings.py needs a CUDA device")
    keep = []
    replays = {"softmax": capture("softmax", {}, args, keep)}
    for label, setting in settings.items():
        replays[label] = capture("fmm_r2", setting, args, keep)
    medians = {label: [] for label in replays}
    for _ in range(args.rounds):
        for label, replay in replays.items():
            medians[label].append(median_ms(replay, args.repeats))
    rows = []
    for label, ms in medians.items():
        rows.append(dict(setting=label, median_ms=round(statistics.median(ms), 4),
                         rounds=" ".join(f"{m:.4f}" for m in ms)))  # fmt: skip
        print(f"{label:24s} median {rows[-1]['median_ms']:.4f} ms  rounds {rows[-1]['rounds']}")
    for label in list(replays)[: args.timelines]:
        print(label)
        print(timeline(replays[label]))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
