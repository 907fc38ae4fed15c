"""Long-context training of the WikiText-103 decoder: tokens/s and peak memory against context.

    python bench/long_context.py                       # the table (GPU), -> results/long_context.*
    python bench/long_context.py --models paper --kinds fmm2_band20 --contexts 65536 --steps 5
    python bench/long_context.py --loss-curve          # fmm2 at 64K tokens, a few hundred steps

Every point trains with the same tokens per step (``--tokens``, 65,536): batch = tokens /
context. One step is what ``python cli.py fit`` runs: forward, adaptive-softmax loss, backward,
Adam step, under bf16 autocast, with the model's forward compiled (``--compile model``: as
``LanguageModelTask(compile=True)``; ``blocks`` compiles each block, one compile serving all
16, much quicker to build; ``none``: eager), with dynamic shapes so that one compile serves
every context of a model and kind (``--static-shapes``: torch's default, a recompile for the
second shape). The memory options (``--memory on``, the default)
checkpoint every block's activations and run the loss in chunks of ``--loss-chunk`` tokens
(DecoderConfig.checkpoint_blocks / loss_chunk_size); ``--memory both`` also runs without them.

Models, attention kinds and the synthetic Zipf tokens: bench/lm_setups.py. Timing: ``--warmup``
steps (compilation included, reported as ``warmup_s``), then the median of ``--steps`` steps;
peak memory is ``torch.cuda.max_memory_allocated`` over the timed steps. A point that runs out
of memory is reported as OOM and the run goes on. Writes ``long_context.csv``/``.md``/``.png``
(or ``long_context_loss.csv``/``.png``) into ``--out-dir``. ``--device cpu`` with ``--models
tiny`` runs the whole script on a CPU (a smoke test; no memory figures there).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lm_setups import (  # noqa: E402
    KINDS,
    MODELS,
    REPO,
    VOCAB,
    build,
    measured,
    sync,
    write_csv,
    zipf_entropy,
    zipf_ids,
)

CUTOFFS = [20000, 40000, 200000]
FIELDS = (
    "model", "kind", "memory", "context", "batch", "params", "step_ms", "tokens_per_s",
    "peak_gib", "warmup_s", "loss", "note",
)  # fmt: skip


def make_step(model, opt, device, compile_mode, backend="inductor", dynamic=None):
    """One training step on ``(input, target)`` ids; returns the loss."""
    if compile_mode == "model":
        model.compile(backend=backend, dynamic=dynamic)
    elif compile_mode == "blocks":
        for block in model.blocks:
            block.compile(backend=backend, dynamic=dynamic)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def step(ids):
        with autocast:
            loss = model.nll(ids[:, :-1], ids[:, 1:]).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def memory_options(args, on: bool) -> dict:
    if not on:
        return {}
    return dict(checkpoint_blocks=args.checkpoint_blocks, loss_chunk_size=args.loss_chunk)


def run_point(args, model_name, kind, memory, context, device):
    batch = max(1, args.tokens // context)
    row = dict(model=model_name, kind=kind, memory=memory, context=context, batch=batch, note="")
    with measured(row, device):
        torch.manual_seed(0)
        model = build(
            model_name, kind, context, args.vocab_size, args.cutoffs,
            **memory_options(args, memory == "on"),
        ).to(device).train()  # fmt: skip
        row["params"] = sum(p.numel() for p in model.parameters())
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        step = make_step(model, opt, device, args.compile, args.compile_backend, args.dynamic)
        gen = torch.Generator(device=device).manual_seed(0)
        ids = zipf_ids((batch, context + 1), args.vocab_size, device, gen)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            loss = step(ids)
        sync(device)
        row["warmup_s"] = round(time.perf_counter() - t0, 1)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            loss = step(ids)
            sync(device)
            times.append(time.perf_counter() - t0)
        ms = statistics.median(times) * 1e3
        row.update(
            step_ms=round(ms, 2),
            tokens_per_s=round(batch * context / ms * 1e3),
            loss=round(float(loss), 3),
        )
        if device.type == "cuda":
            row["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if not math.isfinite(float(loss)):
            row["note"] = "non-finite loss"
    return row


def write_table(rows, out_dir: Path, device_name: str) -> None:
    write_csv(rows, FIELDS, out_dir / "long_context.csv")
    lines = [
        f"Training step of the WikiText-103 decoder, same tokens per step at every context "
        f"({device_name}):",
        "",
        "| model | kind | memory options | context x batch | tokens/s | peak GiB | note |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for r in rows:
        tps = f"{r['tokens_per_s']:,}" if r.get("tokens_per_s") else "-"
        lines.append(
            f"| {r['model']} | {r['kind']} | {r['memory']} | {r['context']:,} x {r['batch']} "
            f"| {tps} | {r.get('peak_gib', '-')} | {r.get('note', '')} |"
        )
    (out_dir / "long_context.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows, out_dir / "long_context.png")


def _plot(rows, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    series = sorted({(r["model"], r["kind"], r["memory"]) for r in rows})
    for key in series:
        pts = [r for r in rows if (r["model"], r["kind"], r["memory"]) == key]
        label = f"{key[0]} {key[1]}" + (" (no memory options)" if key[2] == "off" else "")
        ok = [r for r in pts if r.get("tokens_per_s")]
        ax_t.plot([r["context"] for r in ok], [r["tokens_per_s"] for r in ok], "o-", label=label)
        mem = [r for r in pts if r.get("peak_gib") not in (None, "")]
        ax_m.plot([r["context"] for r in mem], [r["peak_gib"] for r in mem], "o-", label=label)
    for ax, ylabel in ((ax_t, "training tokens/s"), (ax_m, "peak memory per step (GiB)")):
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)  # a flat line looks flat
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_t.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def loss_curve(args, device) -> list[dict]:
    """Train ``--models[0]`` / ``--kinds[0]`` at ``--contexts[-1]`` for ``--loss-steps`` steps
    on synthetic text that rewards a long context: a Zipf block of ``--period`` tokens
    repeated, so after the first period every token can be copied from ``period`` tokens back
    (far outside the band: only the far field can reach it)."""
    context = args.contexts[-1]
    batch = max(1, args.tokens // context)
    torch.manual_seed(0)
    model = build(
        args.models[0], args.kinds[0], context, args.vocab_size, args.cutoffs,
        **memory_options(args, args.memory != "off"),
    ).to(device).train()  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, fused=device.type == "cuda")
    warm = max(1, args.loss_steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    step = make_step(model, opt, device, args.compile, args.compile_backend, args.dynamic)
    gen = torch.Generator(device=device).manual_seed(0)
    rows = []
    t_start = time.perf_counter()
    for i in range(args.loss_steps):
        period = zipf_ids((batch, args.period), args.vocab_size, device, gen)
        reps = -(-(context + 1) // args.period)
        ids = period.repeat(1, reps)[:, : context + 1]
        t0 = time.perf_counter()
        loss = float(step(ids))
        sched.step()
        rows.append(
            dict(step=i + 1, loss=round(loss, 4), step_s=round(time.perf_counter() - t0, 3))
        )
        if (i + 1) % max(1, args.loss_steps // 20) == 0 or i == 0:
            elapsed = time.perf_counter() - t_start
            print(f"step {i + 1:5d} loss {loss:.3f} ({elapsed:.0f} s)", flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / "long_context_loss.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=("step", "loss", "step_s"))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")
    try:
        import matplotlib
    except ImportError:
        return rows
    matplotlib.use("Agg")
    plot_loss_curve(rows, args, context, batch, args.out_dir / "long_context_loss.png")
    return rows


def plot_loss_curve(rows, args, context: int, batch: int, path: Path) -> None:
    """The training loss per step, with the Zipf entropy: below it, the context is used."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="training loss")
    ax.axhline(zipf_entropy(args.vocab_size), color="grey", ls="--",
               label="Zipf entropy (no use of the context)")  # fmt: skip
    ax.legend(fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats per token)")
    ax.set_title(
        f"{args.models[0]} {args.kinds[0]}, {context:,} x {batch} tokens, period {args.period}",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["paper", "wide"], choices=list(MODELS))
    p.add_argument("--kinds", nargs="+", default=["softmax", "linear", "fmm2_band20"],
                   choices=list(KINDS))  # fmt: skip
    p.add_argument("--contexts", nargs="+", type=int, default=[2048, 8192, 16384, 32768, 65536])
    p.add_argument("--tokens", type=int, default=65536, help="tokens per step at every context")
    p.add_argument("--steps", type=int, default=5, help="timed steps per point")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
    p.add_argument("--compile", default="blocks", choices=["model", "blocks", "none"])
    p.add_argument("--compile-backend", default="inductor", help=argparse.SUPPRESS)  # tests
    p.add_argument("--static-shapes", dest="dynamic", action="store_const", const=None,
                   default=True, help="compile per context (default: one dynamic-shape "
                   "compile serves every context of a model and kind)")  # fmt: skip
    p.add_argument("--memory", default="on", choices=["on", "off", "both"])
    p.add_argument("--checkpoint-blocks", default="all", help="DecoderConfig.checkpoint_blocks")
    p.add_argument("--loss-chunk", type=int, default=8192, help="DecoderConfig.loss_chunk_size")
    p.add_argument("--vocab-size", type=int, default=VOCAB)
    p.add_argument("--cutoffs", type=int, nargs="+", default=CUTOFFS)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out-dir", type=Path, default=REPO / "results")
    curve = p.add_argument_group("--loss-curve")
    curve.add_argument("--loss-curve", action="store_true",
                       help="train models[0] / kinds[0] at the last context instead")  # fmt: skip
    curve.add_argument("--loss-steps", type=int, default=300)
    curve.add_argument("--period", type=int, default=4096, help="repeat period of the tokens")
    curve.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args(argv)
    if args.loss_curve and args.kinds == p.get_default("kinds"):
        args.kinds = ["fmm2_band20"]
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("long_context.py needs a CUDA device (or --device cpu)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    if args.loss_curve:
        loss_curve(args, device)
        return
    memories = ["on", "off"] if args.memory == "both" else [args.memory]
    rows = []
    for model_name in args.models:
        for kind in args.kinds:
            for memory in memories:
                torch._dynamo.reset()  # a fresh compile per model and kind
                for context in args.contexts:
                    row = run_point(args, model_name, kind, memory, context, device)
                    rows.append(row)
                    print(
                        f"{model_name:6s} {kind:18s} mem={memory:3s} {context:>7,} x "
                        f"{row['batch']:<3d} {row.get('tokens_per_s', '-')!s:>9} tok/s "
                        f"peak={row.get('peak_gib', '-')!s:>6} GiB "
                        f"warmup={row.get('warmup_s', '-')}s {row['note']}",
                        flush=True,
                    )
    write_table(rows, args.out_dir, name)


if __name__ == "__main__":
    main()
