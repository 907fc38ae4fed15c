"""Decoding speed after long prompts: FMM's fixed-size state against softmax's KV cache.

    python bench/generate_throughput.py        # GPU, -> results/generate_throughput.{csv,md,png}
    python bench/generate_throughput.py --prompts 1024 65536 --batches 1 --cuda-graph both

For each model, attention kind, prompt length and batch: a prompt of Zipf token ids runs
through ``prefill`` (the forward pass, at batch 1; its state is copied into every row of the
batch), then ``--new-tokens`` tokens are decoded greedily, one ``StaticDecoder.step`` each
(fmmformer_pl/models/generation.py): on the GPU one CUDA-graph replay per token, or eager
steps with ``--cuda-graph off``; ``--compile on`` runs the step through torch.compile first
(``--compile both``, the default, measures both). The softmax model keeps a preallocated KV cache of prompt + new
tokens (SDPA with a length mask); the FMM kinds keep the last ``bandwidth`` keys/values and the
far-field sums, whatever the prompt. Random weights (speed does not depend on them), in
``--dtype`` (bfloat16 by default on the GPU).

Reported: prefill seconds (a second prefill: the first compiles and tunes the kernels for
the length), decoded tokens/s (batch x tokens / time), the state's size and the
peak memory while decoding. A point that runs out of memory is reported as OOM.
Models and kinds: bench/lm_setups.py. ``--device cpu --models tiny`` runs it on a CPU (tests).
"""

from __future__ import annotations

import argparse
import itertools
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
    zipf_ids,
)

from fmmformer_pl.models.generation import StaticDecoder  # noqa: E402

FIELDS = (
    "model", "kind", "prompt", "batch", "cuda_graph", "compile", "prefill_s", "tokens_per_s",
    "ms_per_step", "state_mib", "peak_gib", "note",
)  # fmt: skip


@torch.no_grad()
def run_point(args, model_name, kind, prompt_len, batch, graph, compiled, device, dtype):
    row = dict(model=model_name, kind=kind, prompt=prompt_len, batch=batch, cuda_graph=graph,
               compile=compiled, note="")  # fmt: skip
    with measured(row, device):
        torch.manual_seed(0)
        capacity = prompt_len + args.new_tokens + args.warmup
        model = build(model_name, kind, capacity, args.vocab_size, args.cutoffs)
        model = model.to(device=device, dtype=dtype).eval()
        gen = torch.Generator(device=device).manual_seed(0)
        prompt = zipf_ids((1, prompt_len), args.vocab_size, device, gen)
        model.prefill(prompt)  # untimed: kernel compilation and autotuning for this length
        sync(device)
        t0 = time.perf_counter()
        log_probs, state = model.prefill(prompt)
        sync(device)
        row["prefill_s"] = round(time.perf_counter() - t0, 3)
        if compiled == "on":
            torch._dynamo.reset()  # a new model each point: no stale compiles, no cache limit
        decoder = StaticDecoder(
            model, batch, capacity, cuda_graph=graph == "on", compile=compiled == "on"
        )
        decoder.load(state)
        state = None
        row["state_mib"] = round(
            sum(t.numel() * t.element_size() for t in decoder.state.tensors()) / 2**20, 4
        )
        token = log_probs.argmax(-1).expand(batch).contiguous()
        for _ in range(args.warmup):  # (the compile, when on, runs at the first)
            token = decoder.step(token).argmax(-1)
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        for _ in range(args.new_tokens):
            token = decoder.step(token).argmax(-1)  # stays on the device: no host sync
        sync(device)
        seconds = time.perf_counter() - t0
        row.update(
            tokens_per_s=round(batch * args.new_tokens / seconds),
            ms_per_step=round(seconds / args.new_tokens * 1e3, 3),
        )
        if device.type == "cuda":
            row["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def write_outputs(rows, out_dir: Path, device_name: str) -> None:
    write_csv(rows, FIELDS, out_dir / "generate_throughput.csv")
    lines = [
        f"Decoding after a prompt ({device_name}):",
        "",
        "| model | kind | prompt | batch | CUDA graph | compiled | prefill s | tokens/s "
        "| ms/step | state MiB | peak GiB | note |",
        "|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        tps = f"{r['tokens_per_s']:,}" if r.get("tokens_per_s") else "-"
        lines.append(
            f"| {r['model']} | {r['kind']} | {r['prompt']:,} | {r['batch']} | {r['cuda_graph']} "
            f"| {r['compile']} | {r.get('prefill_s', '-')} | {tps} | {r.get('ms_per_step', '-')} "
            f"| {r.get('state_mib', '-')} | {r.get('peak_gib', '-')} | {r['note']} |"
        )
    (out_dir / "generate_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))

    def key_of(r):
        return r["model"], r["kind"], r["batch"], r["cuda_graph"], r["compile"]

    for key in sorted({key_of(r) for r in rows}):
        pts = [r for r in rows if key_of(r) == key]
        label = f"{key[0]} {key[1]} batch {key[2]}" + ("" if key[3] == "on" else " eager")
        label += " compiled" if key[4] == "on" else ""
        ok = [r for r in pts if r.get("tokens_per_s")]
        ax_t.plot([r["prompt"] for r in ok], [r["tokens_per_s"] for r in ok], "o-", label=label)
        ax_m.plot([r["prompt"] for r in ok], [r["state_mib"] for r in ok], "o-", label=label)
    for ax, ylabel in ((ax_t, "decoded tokens/s"), (ax_m, "decoding state (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("prompt (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_t.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "generate_throughput.png", dpi=120)
    plt.close(fig)
    print(f"wrote {out_dir / 'generate_throughput.png'}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["paper"], choices=list(MODELS))
    p.add_argument("--kinds", nargs="+", default=["fmm2_band20", "softmax"], choices=list(KINDS))
    p.add_argument("--prompts", nargs="+", type=int, default=[1024, 16384, 65536, 262144])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    p.add_argument("--new-tokens", type=int, default=64, help="timed decoding steps")
    p.add_argument("--warmup", type=int, default=4, help="untimed steps first")
    p.add_argument("--cuda-graph", default="on", choices=["on", "off", "both"])
    p.add_argument(
        "--compile",
        default="both",
        choices=["on", "off", "both"],
        help="torch.compile the decoding step (StaticDecoder(compile=True))",
    )
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--vocab-size", type=int, default=VOCAB)
    p.add_argument("--cutoffs", type=int, nargs="+", default=[20000, 40000, 200000])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out-dir", type=Path, default=REPO / "results")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("generate_throughput.py needs a CUDA device (or --device cpu)")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(args.dtype)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    graphs = ["on", "off"] if args.cuda_graph == "both" else [args.cuda_graph]
    compiles = ["off", "on"] if args.compile == "both" else [args.compile]
    if device.type != "cuda":
        graphs = ["off"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}, {dtype}", flush=True)
    rows = []
    for model_name in args.models:
        for kind in args.kinds:
            for prompt_len in args.prompts:
                for batch in args.batches:
                    for graph, compiled in itertools.product(graphs, compiles):
                        row = run_point(args, model_name, kind, prompt_len, batch, graph,
                                        compiled, device, dtype)  # fmt: skip
                        rows.append(row)
                        print(
                            f"{model_name:6s} {kind:18s} prompt {prompt_len:>7,} batch "
                            f"{batch:<3d} graph={graph:3s} compile={compiled:3s} prefill {row.get('prefill_s', '-')}s "
                            f"{row.get('tokens_per_s', '-')!s:>8} tok/s "
                            f"state {row.get('state_mib', '-')} MiB "
                            f"peak {row.get('peak_gib', '-')} GiB {row['note']}",
                            flush=True,
                        )
    write_outputs(rows, args.out_dir, name)


if __name__ == "__main__":
    main()
