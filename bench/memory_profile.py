"""Where a training step's memory goes, against context: bytes kept for backward per part of the
decoder (any device), and the measured peak of a whole step (CUDA). Parts in MiB, the peak in GiB.

    python bench/memory_profile.py --config configs/wikitext103/fmm2_band20.yaml \\
        --contexts 2048 8192 32768 --tokens 32768              # GPU: also the peak per step
    python bench/memory_profile.py --model paper --kind fmm2_band20 --device cpu \\
        --contexts 256 1024 --tokens 1024 --checkpoint-blocks all --loss-chunk 512

The decoder comes from a WikiText-103 YAML (``--config``, its ``model.init_args.decoder``) or
from bench/lm_setups.py (``--model``/``--kind``); ``--checkpoint-blocks`` / ``--loss-chunk``
override its memory options. Every context runs ``--tokens`` tokens (batch = tokens / context)
of Zipf ids through the loss under autocast (bf16 on CUDA, none on the CPU) with
``torch.autograd.graph.saved_tensors_hooks`` counting each tensor autograd keeps (each storage
once) against the module that saved it:

    embedding   token/position embeddings and their dropout
    attention   q/k/v/out projections and the attention itself, all blocks
    ffn         the feed-forward networks, all blocks
    norms       the LayerNorms and residual dropouts of the blocks
    output      the output layer and the loss (adaptive softmax)

Checkpointed blocks keep only their input (counted under ``blocks (checkpoint inputs)``); a
chunked loss keeps only the hidden state it reads. On CUDA, one full step (forward, backward,
Adam) also gives ``peak_gib`` = ``torch.cuda.max_memory_allocated``. Writes
``memory_profile.csv`` and ``.md`` into ``--out-dir``.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lm_setups import (  # noqa: E402
    KINDS,
    MODELS,
    REPO,
    VOCAB,
    decoder_config,
    write_csv,
    zipf_ids,
)

from fmmformer_pl.models import DecoderConfig, FMMDecoderLM  # noqa: E402
from fmmformer_pl.models.config import config_from_dict  # noqa: E402

PARTS = ("embedding", "attention", "ffn", "norms", "blocks (checkpoint inputs)", "output")


def _part(name: str) -> str:
    """The PARTS entry of a module name (``blocks.3.attn.q_proj`` -> attention)."""
    if name.startswith("embed"):
        return "embedding"
    if name.startswith("blocks."):
        rest = name.split(".", 2)[2:]  # after blocks.<i>
        if not rest:
            return "blocks (checkpoint inputs)"
        return {"attn": "attention", "ffn": "ffn"}.get(rest[0].split(".")[0], "norms")
    return "output"


def saved_bytes(model: FMMDecoderLM, ids: torch.Tensor, device) -> dict[str, int]:
    """Bytes autograd keeps for backward after the loss's forward, per part (each storage
    counted once, under the first module that saved it)."""
    stack = ["output"]
    handles = []

    def enter(name):
        return lambda module, inputs: stack.append(name) and None

    def checkpoint_input(module, inputs):
        # torch.utils.checkpoint saves a block's input before the block runs (so under the
        # module that called it): count it as what it is.
        storage = inputs[0].untyped_storage()
        part = owner.get(storage.data_ptr())
        if part is not None:
            totals[part] -= storage.nbytes()
            totals["blocks (checkpoint inputs)"] += storage.nbytes()
            owner[storage.data_ptr()] = "blocks (checkpoint inputs)"

    def leave(module, inputs, output):
        stack.pop()  # (returns None: the output stays)

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(enter(name)))
            handles.append(module.register_forward_hook(leave))
    for i in model.checkpointed:
        handles.append(model.blocks[i].register_forward_pre_hook(checkpoint_input))
    owner: dict[int, str] = {}  # storage -> the part it is counted under
    totals = dict.fromkeys(PARTS, 0)

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in owner and storage.nbytes():
            owner[storage.data_ptr()] = _part(stack[-1])
            totals[owner[storage.data_ptr()]] += storage.nbytes()
        return t

    enabled = device.type == "cuda"
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
                loss = model.nll(ids[:, :-1], ids[:, 1:]).mean()
    finally:
        for h in handles:
            h.remove()
    del loss
    return totals


def peak_step_gib(model: FMMDecoderLM, ids: torch.Tensor, device) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model.nll(ids[:, :-1], ids[:, 1:]).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def load_config(args) -> DecoderConfig:
    if args.config is not None:
        spec = yaml.safe_load(Path(args.config).read_text())
        config = config_from_dict(DecoderConfig, spec["model"]["init_args"]["decoder"])
    else:
        config = decoder_config(args.model, args.kind, args.cutoffs)
    memory = {}
    if args.checkpoint_blocks is not None:
        memory["checkpoint_blocks"] = args.checkpoint_blocks
    if args.loss_chunk is not None:
        memory["loss_chunk_size"] = args.loss_chunk or None
    return config_from_dict(DecoderConfig, {**_fields(config), **memory})


def _fields(config: DecoderConfig) -> dict:
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", help="a WikiText-103 YAML (configs/wikitext103/...)")
    p.add_argument("--model", default="paper", choices=list(MODELS))
    p.add_argument("--kind", default="fmm2_band20", choices=list(KINDS))
    p.add_argument("--contexts", nargs="+", type=int, default=[2048, 8192, 16384, 32768, 65536])
    p.add_argument("--tokens", type=int, default=65536, help="tokens per step at every context")
    p.add_argument("--checkpoint-blocks", help="override DecoderConfig.checkpoint_blocks")
    p.add_argument("--loss-chunk", type=int, help="override loss_chunk_size (0: none)")
    p.add_argument("--vocab-size", type=int, default=VOCAB)
    p.add_argument("--cutoffs", type=int, nargs="+", default=None)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out-dir", type=Path, default=REPO / "results")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("memory_profile.py needs a CUDA device (or --device cpu)")
    try:
        config = load_config(args)
    except (ValueError, TypeError, KeyError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = []
    for context in args.contexts:
        batch = max(1, args.tokens // context)
        row = dict(context=context, batch=batch)
        try:
            torch.manual_seed(0)
            model = FMMDecoderLM(args.vocab_size, context, config).to(device).train()
            gen = torch.Generator(device=device).manual_seed(0)
            ids = zipf_ids((batch, context + 1), args.vocab_size, device, gen)
            parts = saved_bytes(model, ids, device)
            row.update({k: round(v / 2**20, 3) for k, v in parts.items()})
            row["saved_total"] = round(sum(parts.values()) / 2**20, 3)
            if device.type == "cuda":
                row["peak_gib"] = peak_step_gib(model, ids, device)
        except torch.OutOfMemoryError:
            row["note"] = "OOM"
        finally:
            model = ids = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        print(row, flush=True)
    fields = ("context", "batch", *PARTS, "saved_total", "peak_gib", "note")
    write_csv(rows, fields, args.out_dir / "memory_profile.csv")
    title = args.config or f"{args.model} {args.kind}"
    lines = [
        f"MiB kept for backward per part ({title}; checkpoint_blocks={config.checkpoint_blocks}, "
        f"loss_chunk_size={config.loss_chunk_size}), and the peak of a step:",
        "",
        "| " + " | ".join(fields) + " |",
        "|" + "---|" * len(fields),
    ]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in fields) + " |" for r in rows]
    (args.out_dir / "memory_profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
