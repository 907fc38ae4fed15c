"""GPU benchmark: forward+backward time and peak memory of one attention layer's core, 1K to 1M.

    python bench/attention_gpu.py                           # full run (H200: about 1.5 minutes)
    python bench/attention_gpu.py --seqs 1024 65536 --tune  # quick look plus a launch sweep

Inputs q, k, v ``(batch, heads, seq, head_dim)`` in bf16, laid out as a model makes them (a
transposed view of (batch, seq, heads, head_dim)); batch 1, 8 heads, head_dim 64, band 64.
Variants (what is timed is ``out = f(q, k, v)`` then ``autograd.grad(out, inputs)``):

    softmax            SDPA, FlashAttention backend forced: dense, the baseline
    band_dense_masked  the authors' near field: full (seq x seq) scores masked to the band
    band               near_field (this package's Triton sliding-window kernel)
    band_flash_window  PyTorch's FlashAttention-2 with a window (aten._flash_attention_forward)
    linear             far_field, elu (this package's Triton chunked kernel)
    linear_reference   far_field, backend="reference" (the plain-PyTorch path)
    fmm_r1 / fmm_r2    FMMAttention._attend: near field + 1 or 2 far fields (elu, elu_flip),
                       blended with learnable per-head weights (their gradients included)

Time: median of ``--repeats`` CUDA-event timings after ``--warmup`` runs (fewer repeats where one
run takes over 0.5 s; the CSV says how many). Eager mode: at short lengths the time is the
host's launch overhead, for every variant alike.
Memory: peak allocated during one step minus what was allocated before it (the inputs).
Roofline: ``flops`` counts the useful multiply-adds (x2) of forward and backward; ``bytes``
the least traffic of any implementation: q, k, v, out read or written once forward, and q, k, v,
out, dout, dq, dk, dv once backward (12 tensors). ``bound`` names the larger of flops / 790
TFLOP/s and bytes / 4.2 TB/s (the H200's measured ceilings); ``of_floor`` = that time / the
measured time.

Writes ``attention_gpu.csv`` and ``attention_gpu.png`` (log-log, one panel per masking) into
``--out-dir`` and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from cuda_timing import median_ms  # noqa: E402

from fmmformer_pl.attention import far_field, near_field  # noqa: E402
from fmmformer_pl.attention.config import AttentionConfig  # noqa: E402
from fmmformer_pl.attention.layer import FMMAttention  # noqa: E402
from fmmformer_pl.attention.ops.plan import DEFAULT_PLAN, KernelPlan, Launch  # noqa: E402

PEAK_FLOPS = 790e12  # bf16 dense matmul, measured on the H200 (8192^3)
PEAK_BYTES = 4.2e12  # device-to-device copy, read + write, measured
VARIANTS = (
    "softmax", "band_dense_masked", "band", "band_flash_window", "linear", "linear_reference",
    "fmm_r1", "fmm_r2",
)  # fmt: skip
FIELDS = (
    "variant", "seq", "causal", "ms", "repeats", "peak_extra_mib", "input_mib",
    "flops", "bytes", "tflops", "tbps", "bound", "of_floor", "note",
)  # fmt: skip


def add_short_option(parser):
    """``--short-max-seq``: the short FMM path's longest sequence (``ShortPlan.max_seq``; 0
    turns it off), and ``--short-pdl``: whether its main kernels use programmatic dependent
    launch (``ShortPlan.pdl``), to time both ways on one machine."""
    parser.add_argument(
        "--short-max-seq", type=int, default=None,
        help="ShortPlan.max_seq for this run (0: the general path; default: the plan's)",
    )  # fmt: skip
    parser.add_argument(
        "--short-pdl", type=int, choices=[0, 1], default=None,
        help="ShortPlan.pdl for this run (default: the plan's)",
    )  # fmt: skip


def apply_short_option(args) -> KernelPlan:
    """The kernel plan the command line asks for (the default plan with ``--short-*``
    applied), also kept as ``args.kernel_plan`` for ``bench_one`` and ``step_case``."""
    settings = {"max_seq": args.short_max_seq, "pdl": args.short_pdl}
    short = {
        k: type(getattr(DEFAULT_PLAN.short, k))(v) for k, v in settings.items() if v is not None
    }
    args.kernel_plan = DEFAULT_PLAN.with_(short=short) if short else DEFAULT_PLAN
    return args.kernel_plan


def _plan(args) -> KernelPlan:
    return getattr(args, "kernel_plan", DEFAULT_PLAN)


def band_attention_flash(q, k, v, bandwidth, causal=False, dropout_p=0.0):
    """The near field through PyTorch's FlashAttention-2 with a window (a comparison only).

    ``aten._flash_attention_forward`` takes (batch, seq, heads, head_dim) and a window
    [i - left, i + right]; the band |i - j| < w is left = right = w - 1 (causal: right = 0).
    Differentiable through autograd. None when the build lacks the window arguments or the
    inputs do not suit it (fp16/bf16, head_dim a multiple of 8 up to 256, equal head dims).
    """
    if q.dtype not in (torch.float16, torch.bfloat16) or q.shape[-1] != v.shape[-1]:
        return None
    if q.shape[-1] % 8 != 0 or q.shape[-1] > 256 or q.shape[2] == 0:
        return None
    seq = q.shape[2]
    left = min(int(bandwidth), seq) - 1
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # (batch, seq, heads, head_dim)
    try:
        out = torch.ops.aten._flash_attention_forward(
            qt, kt, vt, None, None, seq, seq, float(dropout_p), bool(causal), False,
            scale=1.0 / math.sqrt(q.shape[-1]), window_size_left=left,
            window_size_right=0 if causal else left,
        )[0]  # fmt: skip
    except (RuntimeError, TypeError):
        return None
    return out.transpose(1, 2)


def make_variant(name, heads, head_dim, band, causal, plan: KernelPlan = DEFAULT_PLAN):
    """(fn(q, k, v) -> out, extra parameters whose gradients the step also computes); the
    kernels run with ``plan``."""
    if name == "softmax":

        def softmax(q, k, v):
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        return softmax, []
    if name == "band_dense_masked":

        def dense_masked(q, k, v):
            seq = q.shape[2]
            i = torch.arange(seq, device=q.device)
            offset = i[None, :] - i[:, None]  # j - i, (seq, seq)
            outside = offset.abs() >= band
            if causal:
                outside |= offset > 0
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)  # (b, h, seq, seq)
            scores = scores.masked_fill(outside, float("-inf"))
            return torch.softmax(scores, dim=-1) @ v

        return dense_masked, []
    if name == "band":
        return (
            lambda q, k, v: near_field(q, k, v, band, causal=causal, backend="cuda", plan=plan)
        ), []
    if name == "band_flash_window":
        return (lambda q, k, v: band_attention_flash(q, k, v, band, causal=causal)), []
    if name == "linear":
        return (
            lambda q, k, v: far_field(q, k, v, "elu", causal=causal, backend="cuda", plan=plan)
        ), []
    if name == "linear_reference":
        return (lambda q, k, v: far_field(q, k, v, "elu", causal=causal, backend="reference")), []
    if name in ("fmm_r1", "fmm_r2"):
        maps = ["elu"] if name == "fmm_r1" else ["elu", "elu_flip"]
        cfg = AttentionConfig(kind="fmm", bandwidth=band, feature_maps=maps, backend="cuda")
        layer = FMMAttention(heads * head_dim, heads, cfg, causal, kernel_plan=plan).cuda()
        params = [p for p in layer.blend.parameters() if p.requires_grad]
        return (lambda q, k, v: layer._attend(q, k, v, None)), params
    raise ValueError(f"unknown variant {name!r}")


def step_case(name, seq, causal, args):
    """(fn, (q, k, v), inputs, grad_out) of one timed step, for the scripts that time it
    another way (``attention_profile.py``, ``eager_timeline.py``): ``make_variant``'s function,
    bf16 q, k, v laid out as a model makes them, the tensors whose gradients the step takes
    (q, k, v and the blend weights) and an output gradient."""
    fn, params = make_variant(name, args.heads, args.head_dim, args.band, causal, _plan(args))
    gen = torch.Generator(device="cuda").manual_seed(seq)

    def make():
        t = torch.randn(1, seq, args.heads, args.head_dim, device="cuda", generator=gen)
        return t.to(torch.bfloat16).transpose(1, 2).requires_grad_(True)

    q, k, v = make(), make(), make()
    return fn, (q, k, v), [q, k, v, *params], torch.randn_like(fn(q, k, v))


def work(name, seq, heads, head_dim, band, causal):
    """(useful flops, floor bytes) of forward + backward."""
    n, h, d = seq, heads, head_dim
    fb = 3.5  # backward ~ 2.5x forward (5 products against 2)
    if name == "softmax":
        flops = 4 * n * n * d * h * (0.5 if causal else 1.0) * fb
    elif name.startswith("band"):
        keys = band if causal else 2 * band - 1
        flops = 4 * n * keys * d * h * fb
    else:
        rank = {"linear": 1, "linear_reference": 1, "fmm_r1": 1, "fmm_r2": 2}[name]
        # forward: state + readout (2 products of seq x d x d); backward: 4 more (12 in all)
        per_field = 12 * n * d * d * h + (12 * n * 32 * d * h if causal else 0)
        flops = rank * per_field
        if name.startswith("fmm"):
            flops += 4 * n * (band if causal else 2 * band - 1) * d * h * fb
    return flops, 12 * n * h * d * 2


def _dense_bytes(seq, heads):
    """Rough peak of the dense-masked band: scores, probabilities and their gradients."""
    return seq * seq * heads * 2 * 5 + seq * seq * 9


def bench_one(name, seq, causal, args):
    heads, head_dim, band = args.heads, args.head_dim, args.band
    row = dict(variant=name, seq=seq, causal=causal, note="")
    if name == "softmax" and seq > args.dense_max_seq:
        row["note"] = f"skipped: seq > {args.dense_max_seq} (quadratic; extrapolate seq^2)"
        return row
    if name == "linear_reference" and seq > args.reference_max_seq:
        row["note"] = f"skipped: seq > {args.reference_max_seq}"
        return row
    if name == "band_dense_masked" and _dense_bytes(seq, heads) > args.dense_masked_max_gb * 1e9:
        row["note"] = f"skipped: ~{_dense_bytes(seq, heads) / 1e9:.0f} GB of (seq x seq) tensors"
        return row
    fn, params = make_variant(name, heads, head_dim, band, causal, _plan(args))
    gen = torch.Generator(device="cuda").manual_seed(seq)

    def make():
        t = torch.randn(1, seq, heads, head_dim, device="cuda", generator=gen)
        return t.to(torch.bfloat16).transpose(1, 2).requires_grad_(True)

    torch.cuda.empty_cache()
    q, k, v = make(), make(), make()
    inputs = [q, k, v, *params]
    row["input_mib"] = round(3 * q.numel() * 2 / 2**20, 1)
    try:
        out = fn(q, k, v)
        if out is None:
            row["note"] = "unsupported"
            return row
        grad_out = torch.randn_like(out)

        def step():
            o = fn(q, k, v)
            return torch.autograd.grad(o, inputs, grad_out)

        step()  # compile / autotune
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        grads = step()
        torch.cuda.synchronize()
        once = time.perf_counter() - t0
        row["peak_extra_mib"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
        del grads
        repeats = args.repeats if once < 0.5 else 3
        for _ in range(args.warmup - 1):
            step()
        row["ms"] = round(median_ms(step, repeats), 4)
        row["repeats"] = repeats
    except torch.OutOfMemoryError:
        row["note"] = "OOM"
    finally:
        torch.cuda.empty_cache()
    if "ms" in row:
        flops, nbytes = work(name, seq, heads, head_dim, band, causal)
        secs = row["ms"] / 1e3
        floor = max(flops / PEAK_FLOPS, nbytes / PEAK_BYTES)
        row.update(
            flops=flops, bytes=nbytes, tflops=round(flops / secs / 1e12, 2),
            tbps=round(nbytes / secs / 1e12, 3),
            bound="compute" if flops / PEAK_FLOPS > nbytes / PEAK_BYTES else "memory",
            of_floor=round(floor / secs, 4),
        )  # fmt: skip
    return row


def _with_launches(plan: KernelPlan, name: str, launch: Launch) -> KernelPlan:
    """``plan`` with every launch of the band ("near") or linear ("far") kernels set."""
    if name == "band":
        return plan.with_(near=dict(fwd=launch, dq=launch, dkv=launch))
    launches = plan.far.launch
    every = {field: launch for field in launches.__dataclass_fields__}
    return plan.with_(far=dict(launch=type(launches)(**every)))


def tune(args):
    """Time band and linear at one length for several launch settings; print the best."""
    seq = args.tune_seq
    base = _plan(args)
    settings = [(4, 2), (8, 2), (8, 3), (4, 3)]
    try:
        for name in ("band", "linear"):
            for causal in (False, True):
                results = []
                for warps, stages in settings:
                    launch = Launch(num_warps=warps, num_stages=stages)
                    args.kernel_plan = _with_launches(base, name, launch)
                    row = bench_one(name, seq, causal, args)
                    results.append((row.get("ms", float("inf")), warps, stages))
                    print(
                        f"tune {name} seq={seq} causal={causal} warps={warps} stages={stages}: "
                        f"{row.get('ms')} ms {row.get('note', '')}",
                        flush=True,
                    )
                best = min(results)
                print(
                    f"tune best {name} causal={causal}: warps={best[1]} stages={best[2]} "
                    f"{best[0]} ms",
                    flush=True,
                )
    finally:
        args.kernel_plan = base


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, causal in zip(axes, (False, True), strict=True):
        for name in VARIANTS:
            pts = [
                (r["seq"], r["ms"])
                for r in rows
                if r["variant"] == name and r["causal"] == causal and r.get("ms")
            ]
            if pts:
                xs, ys = zip(*sorted(pts), strict=True)
                ax.plot(xs, ys, marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_title(
            ("causal" if causal else "bidirectional") + ": fwd+bwd, bf16, 1 x 8 heads x 64, band 64"
        )
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("time (ms, median)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--seqs", type=int, nargs="+", default=[1024, 4096, 16384, 65536, 262144, 1048576]
    )
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument(
        "--modes",
        nargs="+",
        default=["bidirectional", "causal"],
        choices=["bidirectional", "causal"],
    )
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--band", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dense-max-seq", type=int, default=262144)
    p.add_argument("--reference-max-seq", type=int, default=65536)
    p.add_argument("--dense-masked-max-gb", type=float, default=100.0)
    p.add_argument("--tune", action="store_true", help="sweep launch settings first")
    p.add_argument("--tune-seq", type=int, default=65536)
    p.add_argument("--out-dir", type=Path, default=REPO / "results")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--label", default="", help="prefix for the note column (e.g. the commit)")
    p.add_argument(
        "--merge-into",
        type=Path,
        help="an earlier attention_gpu.csv: write its rows with those measured now replaced "
        "(and plot them all)",
    )
    p.add_argument(
        "--backward-thread",
        choices=["autograd", "caller"],
        default="autograd",
        help="caller: run backward on the calling thread "
        "(torch.autograd.set_multithreading_enabled(False), process-wide): less host time",
    )
    add_short_option(p)
    args = p.parse_args(argv)
    apply_short_option(args)
    if args.backward_thread == "caller":
        torch.autograd.set_multithreading_enabled(False)
    if not torch.cuda.is_available():
        raise SystemExit("attention_gpu.py needs a CUDA device")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    if args.tune:
        tune(args)
    rows = []
    for mode in args.modes:
        causal = mode == "causal"
        for seq in args.seqs:
            for name in args.variants:
                row = bench_one(name, seq, causal, args)
                if args.backward_thread == "caller":
                    row["note"] = f"{row['note']} backward on the calling thread".strip()
                rows.append(row)
                print(
                    f"{name:18s} seq={seq:8d} {mode:13s} ms={row.get('ms')!s:>9} "
                    f"peak+={row.get('peak_extra_mib')!s:>9}MiB "
                    f"{row.get('tflops', '')!s:>7}TF/s {row.get('tbps', '')!s:>6}TB/s "
                    f"{row.get('bound', '')} {row.get('of_floor', '')} {row['note']}", flush=True,
                )  # fmt: skip
    if args.label:
        for r in rows:
            r["note"] = f"{args.label}; {r['note']}" if r["note"] else args.label
    args.out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = args.out_dir / "attention_gpu.csv"
    if args.merge_into:
        rows = merge_rows(args.merge_into, rows)
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in FIELDS})
    print(f"wrote {csv_path}")
    _summary(rows)
    if not args.no_plot:
        try:
            plot(rows, args.out_dir / "attention_gpu.png")
        except ImportError:
            print("matplotlib missing: no plot (the CSV has every number)")


def merge_rows(path: Path, rows: list[dict]) -> list[dict]:
    """The rows of an earlier CSV, those measured again replaced by ``rows`` (same variant,
    seq and ``causal``), in the earlier order; new ones appended."""
    with open(path, newline="") as f:
        old = list(csv.DictReader(f))
    for r in old:  # the types bench_one gives (for the plot)
        r["seq"], r["causal"] = int(r["seq"]), r["causal"] == "True"
        r["ms"] = float(r["ms"]) if r["ms"] else ""
    new = {(r["variant"], r["seq"], r["causal"]): r for r in rows}
    merged = [new.pop((r["variant"], r["seq"], r["causal"]), r) for r in old]
    return merged + list(new.values())


def _summary(rows):
    """Speed-up of fmm_r2 over softmax at each length."""
    by = {(r["variant"], r["seq"], r["causal"]): r.get("ms") for r in rows}
    print("\nspeed-up of fmm_r2 (and band) over softmax (SDPA flash):")
    for causal in (False, True):
        for seq in sorted({r["seq"] for r in rows}):
            soft, fmm, band = (by.get((v, seq, causal)) for v in ("softmax", "fmm_r2", "band"))
            if soft and fmm:
                band_txt = f"  band {soft / band:7.1f}x" if band else ""
                print(
                    f"  {'causal' if causal else 'bidir ':6s} seq={seq:8d}: softmax {soft:9.3f} ms"
                    f"  fmm_r2 {fmm:8.3f} ms  -> {soft / fmm:7.1f}x{band_txt}"
                )


if __name__ == "__main__":
    main()
