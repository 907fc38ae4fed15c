"""Where an eager step's time goes beyond its kernels: the GPU's idle gaps and what caused them.

    python bench/eager_timeline.py --seqs 1024 65536        # -> results/eager_timeline.csv

Each step is timed as ``attention_gpu.py`` times it (start event, ``out = f(q, k, v)``,
``autograd.grad``, end event, synchronise), here under torch.profiler with three CPU marks
(step, forward, backward). From the trace, per step (in µs):

    lead_in      step start (CPU) -> first kernel starts: the Python before the first launch
    busy         the union of the step's kernel (and memset/memcpy) intervals
    gap_fwd      idle time between forward kernels
    gap_handoff  last forward kernel ends -> first backward kernel starts, when positive: the
                 GPU ran dry while the host went from the forward into autograd's backward
    gap_bwd      idle time between backward kernels
    span         step start -> last kernel ends (lead_in + busy + the gaps)
    host_fwd / host_bwd   the CPU marks' lengths (host time of the forward / the grad call)
    bwd_launch   backward mark -> first backward launch on the CPU (autograd's hand-off plus
                 the Python before the first backward kernel)

A kernel belongs to the forward or the backward by the CPU time of its launch (the trace's
correlation ids join a kernel to its launch). The profiler adds a few µs of host time per op,
so host-side numbers here are upper bounds; the GPU-side ones are exact. The CSV holds the
median over ``--repeats`` steps per case; ``--detail`` writes, for the step of median span of
each case, every kernel with its launch time on the CPU, its start and end on the GPU (µs from
the step start) and the GPU's idle time before it.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

GPU_CATS = ("kernel", "gpu_memset", "gpu_memcpy")
MARKS = ("timeline:step", "timeline:forward", "timeline:backward")
FIELDS = (
    "variant", "seq", "causal", "backward_thread", "steps", "kernels", "span", "busy", "lead_in",
    "gap_fwd", "gap_handoff", "gap_bwd", "host_fwd", "host_bwd", "bwd_launch", "note",
)  # fmt: skip


def _union(intervals):
    """Total length of a union of (start, end) intervals."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def _idle(intervals):
    """Idle time between the first start and the last end of (start, end) intervals."""
    if not intervals:
        return 0.0
    return max(e for _, e in intervals) - min(s for s, _ in intervals) - _union(intervals)


def step_timelines(events):
    """Per step (in trace order), the timeline figures of the module doc from chrome-trace
    events (the ``traceEvents`` of ``torch.profiler``'s export)."""
    marks = {name: [] for name in MARKS}
    launches, gpu = {}, []
    for e in events:
        if e.get("ph") != "X":
            continue
        cat, args = e.get("cat", ""), e.get("args") or {}
        start, end = float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0))
        if e.get("name") in marks and cat == "user_annotation":
            marks[e["name"]].append((start, end))
        elif cat in GPU_CATS:
            gpu.append((start, end, args.get("correlation")))
        elif "correlation" in args:
            launches[args["correlation"]] = start
    steps, fwds, bwds = (sorted(marks[name]) for name in MARKS)
    if not (len(steps) == len(fwds) == len(bwds)):
        raise ValueError(f"unmatched marks: {len(steps)} steps, {len(fwds)} fwd, {len(bwds)} bwd")
    out = []
    names = {}
    for e in events:
        if e.get("ph") == "X" and e.get("cat", "") in GPU_CATS:
            names[(float(e["ts"]), (e.get("args") or {}).get("correlation"))] = e.get("name", "")
    for i, (s0, _) in enumerate(steps):
        limit = steps[i + 1][0] if i + 1 < len(steps) else float("inf")
        bwd_start, bwd_end = bwds[i]
        fwd, bwd, bwd_launches = [], [], []
        for start, end, corr in gpu:
            launched = launches.get(corr)
            if launched is None or not (s0 <= launched < limit):
                continue
            (bwd if launched >= bwd_start else fwd).append((start, end))
            if launched >= bwd_start:
                bwd_launches.append(launched)
        both = fwd + bwd
        if not both:
            continue
        detail, reach = [], s0
        for start, end, corr in sorted(gpu):
            launched = launches.get(corr)
            if launched is None or not (s0 <= launched < limit):
                continue
            detail.append(
                dict(
                    kernel=names.get((start, corr), "")[:60],
                    phase="backward" if launched >= bwd_start else "forward",
                    launch=round(launched - s0, 1),
                    start=round(start - s0, 1),
                    end=round(end - s0, 1),
                    idle_before=round(max(0.0, start - reach), 1),
                )
            )
            reach = max(reach, end)
        first = min(s for s, _ in both)
        handoff = 0.0
        if fwd and bwd:
            handoff = max(0.0, min(s for s, _ in bwd) - max(e for _, e in fwd))
        out.append(
            dict(
                kernels=len(both),
                span=max(e for _, e in both) - s0,
                busy=_union(both),
                lead_in=first - s0,
                gap_fwd=_idle(fwd),
                gap_handoff=handoff,
                gap_bwd=_idle(bwd),
                host_fwd=fwds[i][1] - fwds[i][0],
                host_bwd=bwd_end - bwd_start,
                bwd_launch=(min(bwd_launches) - bwd_start) if bwd_launches else float("nan"),
                detail=detail,
            )
        )
    return out


def summarise(timelines):
    """Median of each figure over the steps."""
    keys = [k for k in FIELDS if k in timelines[0]]
    return {k: round(statistics.median(t[k] for t in timelines), 1) for k in keys}


def median_step(timelines):
    """The step whose span is the median one."""
    return sorted(timelines, key=lambda t: t["span"])[len(timelines) // 2]


def profile_case(name, seq, causal, args):
    import torch
    from attention_gpu import step_case
    from torch.profiler import ProfilerActivity, profile, record_function

    fn, (q, k, v), inputs, grad_out = step_case(name, seq, causal, args)

    def step():
        with record_function("timeline:step"):
            with record_function("timeline:forward"):
                out = fn(q, k, v)
            with record_function("timeline:backward"):
                return torch.autograd.grad(out, inputs, grad_out)

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(args.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    timelines = step_timelines(events)
    row = dict(variant=name, seq=seq, causal=causal, steps=len(timelines), **summarise(timelines))
    return row, median_step(timelines)["detail"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seqs", type=int, nargs="+", default=[1024, 65536])
    p.add_argument("--variants", nargs="+", default=["softmax", "fmm_r2"])
    p.add_argument("--modes", nargs="+", default=["bidirectional", "causal"])
    p.add_argument("--backward-thread", choices=["autograd", "caller"], default="autograd")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--band", type=int, default=64)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--note", default="")
    p.add_argument("--out", type=Path, default=REPO / "results" / "eager_timeline.csv")
    p.add_argument("--append", action="store_true", help="add rows to an existing --out")
    p.add_argument("--detail", type=Path, help="CSV of the median step's kernels per case")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("eager_timeline.py needs a CUDA device")
    if args.backward_thread == "caller":
        torch.autograd.set_multithreading_enabled(False)
    rows, details = [], []
    for mode in args.modes:
        for seq in args.seqs:
            for name in args.variants:
                row, detail = profile_case(name, seq, mode == "causal", args)
                row.update(backward_thread=args.backward_thread, note=args.note)
                rows.append(row)
                case = dict(variant=name, seq=seq, causal=mode == "causal")
                case.update(backward_thread=args.backward_thread)
                details += [{**case, **d} for d in detail]
                print(
                    " ".join(f"{k}={row[k]}" for k in FIELDS if k in row and k != "note"),
                    flush=True,
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    new = not (args.append and args.out.exists())
    with open(args.out, "w" if new else "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")
    if args.detail and details:
        new = not (args.append and args.detail.exists())
        with open(args.detail, "w" if new else "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(details[0]))
            if new:
                writer.writeheader()
            writer.writerows(details)
        print(f"wrote {args.detail}")


if __name__ == "__main__":
    main()
