"""Training throughput on one GPU: tokens/s and peak memory of paper configs, fmm vs softmax vs linear.

    python bench/train_throughput.py                # both tasks, eager; -> results/train_throughput.csv
    python bench/train_throughput.py --tasks retrieval --compile fmm

Synthetic batches (no data needed), the models of ``fmmformer_pl.models`` and one full training
step each (forward, loss, backward, AdamW step) under bf16 autocast, as Lightning's
``bf16-mixed`` runs it:

    retrieval  LRA Retrieval: DualEncoderRetrieval, 2 layers, dim 64, 2 heads x 32, FFN 128,
               two documents of 4,096 byte tokens per example (lengths drawn in [3000, 4096],
               the rest padding), batch 32. Attention schemes: ``lra_listops_fmm_2kernel``
               (band 5 + elu and elu_flip, unnormalised), ``lra_linear``, softmax.
    wikitext   WikiText-103 small: FMMDecoderLM, 16 layers, dim 128, 8 heads x 16, FFN 2,048,
               adaptive softmax (cutoffs 20k/40k/200k, vocabulary 267,735), 256-token windows,
               batch 96. Schemes: ``wt103_fmm_2kernel_band20``, ``wt103_linear``, softmax.

tokens/s counts every position of the batch (padding included): batch x positions / median
step time. ``--compile NAME ...`` also runs those variants through ``torch.compile(model)``
(``--compile-mode reduce-overhead`` lets inductor replay the step as CUDA graphs).
``--profile`` also writes, per run, the CUDA kernels of three steps by GPU time
(``train_profile_<task>_<variant>[_compiled_<mode>].txt``): where the step's time goes.
Writes ``train_throughput.csv`` into ``--out-dir`` and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from cuda_timing import median_ms  # noqa: E402

from fmmformer_pl.attention.blend import paper_scheme  # noqa: E402
from fmmformer_pl.attention.config import AttentionConfig  # noqa: E402
from fmmformer_pl.models import (  # noqa: E402
    DecoderConfig,
    DualEncoderRetrieval,
    EncoderConfig,
    FMMDecoderLM,
)

SCHEMES = {
    "retrieval": {"fmm": "lra_listops_fmm_2kernel", "linear": "lra_linear", "softmax": None},
    "wikitext": {"fmm": "wt103_fmm_2kernel_band20", "linear": "wt103_linear", "softmax": None},
}
FIELDS = (
    "task", "variant", "scheme", "compiled", "batch", "positions", "step_ms", "tokens_per_s",
    "peak_gib", "params", "note",
)  # fmt: skip


def attention_config(task, variant):
    name = SCHEMES[task][variant]
    if name is None:
        return AttentionConfig(kind="softmax", dropout=0.1 if task == "retrieval" else 0.0)
    return paper_scheme(name)


def build(task, variant, args):
    """(model, step inputs, loss function, positions per example)."""
    cfg = attention_config(task, variant)
    gen = torch.Generator(device="cuda").manual_seed(0)
    if task == "retrieval":
        seq, batch = args.retrieval_seq, args.retrieval_batch
        model = DualEncoderRetrieval(257, 2, seq, EncoderConfig(attention=cfg))

        def doc():
            ids = torch.randint(1, 257, (batch, seq), device="cuda", generator=gen)
            lengths = torch.randint(min(3000, seq), seq + 1, (batch,), device="cuda", generator=gen)
            mask = torch.arange(seq, device="cuda")[None, :] >= lengths[:, None]
            return ids.masked_fill(mask, 0), mask

        (x1, m1), (x2, m2) = doc(), doc()
        y = torch.randint(0, 2, (batch,), device="cuda", generator=gen)

        def loss_fn(m):
            return F.cross_entropy(m(x1, m1, x2, m2).float(), y)

        return model, loss_fn, batch, 2 * seq, cfg
    seq, batch = args.wikitext_seq, args.wikitext_batch
    dcfg = DecoderConfig(attention=cfg, adaptive_softmax_cutoffs=[20000, 40000, 200000])
    model = FMMDecoderLM(267735, seq, dcfg)
    ids = torch.randint(0, 267735, (batch, seq + 1), device="cuda", generator=gen)

    def loss_fn(m):
        return m.nll(ids[:, :-1], ids[:, 1:]).mean()

    return model, loss_fn, batch, seq, cfg


def run_one(task, variant, compiled, args):
    row = dict(
        task=task,
        variant=variant,
        scheme=SCHEMES[task][variant] or "softmax",
        compiled=compiled,
        note=f"mode {args.compile_mode or 'default'}" if compiled else "",
    )
    torch.manual_seed(0)
    torch.cuda.empty_cache()
    model, loss_fn, batch, positions, _ = build(task, variant, args)
    model = model.cuda().train()
    row.update(batch=batch, positions=positions, params=sum(p.numel() for p in model.parameters()))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    net = torch.compile(model, mode=args.compile_mode) if compiled else model

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(net)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    try:
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            loss = step()
        torch.cuda.synchronize()
        if not torch.isfinite(loss):
            row["note"] += f" non-finite loss {loss.item()}"
        row["note"] = f"{row['note']} warmup {time.perf_counter() - t0:.1f}s".strip()
        torch.cuda.reset_peak_memory_stats()
        ms = median_ms(step, args.steps)
        if args.profile:
            _profile(step, row, args)
        row.update(
            step_ms=round(ms, 3),
            tokens_per_s=round(batch * positions / ms * 1e3),
            peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
        )
    except torch.OutOfMemoryError:
        row["note"] = "OOM"
    except Exception as err:  # noqa: BLE001 - reported in the table (e.g. a compile failure)
        row["note"] = f"failed: {type(err).__name__}: {str(err)[:300]}"
        traceback.print_exc()
    return row


def _profile(step, row, args):
    """Three steps under torch.profiler: kernels by GPU time, and host against GPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / 3 * 1e3
    events = prof.key_averages()
    # Kernels only (an operator's row repeats its kernels' time), as the table's footer sums.
    cuda = torch.autograd.DeviceType.CUDA
    gpu_us = sum(e.self_device_time_total for e in events if e.device_type == cuda) / 3
    how = f"_compiled_{args.compile_mode or 'default'}" if row["compiled"] else ""
    name = f"train_profile_{row['task']}_{row['variant']}{how}"
    path = args.out_dir / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    table = events.table(sort_by="self_device_time_total", row_limit=args.profile_rows)
    path.write_text(
        f"# {name}: batch {row['batch']} x {row['positions']} positions, three steps\n"
        f"# per step: {wall:.2f} ms wall under the profiler, {gpu_us / 1e3:.2f} ms of GPU "
        f"kernel time (sum over kernels)\n{table}\n"
    )
    row["note"] = (row["note"] + f" gpu {gpu_us / 1e3:.2f} ms/step").strip()
    print(f"wrote {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["retrieval", "wikitext"], choices=list(SCHEMES))
    p.add_argument(
        "--variants",
        nargs="+",
        default=["fmm", "linear", "softmax"],
        choices=["fmm", "linear", "softmax"],
    )
    p.add_argument(
        "--compile",
        nargs="*",
        default=[],
        choices=["fmm", "linear", "softmax"],
        help="variants to also run through torch.compile",
    )
    p.add_argument(
        "--compile-tasks",
        nargs="*",
        default=["retrieval"],
        choices=list(SCHEMES),
        help="tasks whose --compile variants are compiled (the 16-layer decoder "
        "takes minutes to compile)",
    )
    p.add_argument(
        "--compile-mode",
        default=None,
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="torch.compile mode of the --compile runs",
    )
    p.add_argument("--profile", action="store_true", help="also profile three steps per run")
    p.add_argument("--profile-rows", type=int, default=30)
    p.add_argument("--retrieval-seq", type=int, default=4096)
    p.add_argument("--retrieval-batch", type=int, default=32)
    p.add_argument("--wikitext-seq", type=int, default=256)
    p.add_argument("--wikitext-batch", type=int, default=96)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out-dir", type=Path, default=REPO / "results")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("train_throughput.py needs a CUDA device")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    rows = []
    for task in args.tasks:
        for variant in args.variants:
            also = variant in args.compile and task in args.compile_tasks
            for compiled in [False] + ([True] if also else []):
                row = run_one(task, variant, compiled, args)
                rows.append(row)
                print(f"{task:9s} {variant:7s} compiled={compiled!s:5s} step={row.get('step_ms')!s:>9} ms "
                      f"{row.get('tokens_per_s')!s:>10} tok/s peak={row.get('peak_gib')!s:>6} GiB "
                      f"{row['note']}", flush=True)  # fmt: skip
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / "train_throughput.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in FIELDS})
    print(f"wrote {path}")
    tok = {(r["task"], r["variant"], r["compiled"]): r.get("tokens_per_s") for r in rows}
    for task in args.tasks:
        for compiled in (False, True):
            soft = tok.get((task, "softmax", compiled))
            for variant in ("fmm", "linear"):
                mine = tok.get((task, variant, compiled))
                if soft and mine:
                    how = "compiled" if compiled else "eager"
                    print(f"{task}: {variant} / softmax tokens/s ({how}) = {mine / soft:.2f}x")


if __name__ == "__main__":
    main()
