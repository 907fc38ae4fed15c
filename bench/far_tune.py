"""Launch-plan sweep of the GPU kernels: far field (r = 2), near field, blend; fwd+bwd, one length.

    python bench/far_tune.py --graph        # H200: about 3 minutes; -> results/kernel_tune.csv

What is timed: ``far_fields(q, k, v, ["elu", "elu_flip"])`` (both masks) and ``near_field``
(band 64) and the blend of three fields forward + backward, bf16, batch 1, 8 heads, head_dim
64, seq ``--seq``, median of ``--repeats`` CUDA-event timings. Each setting changes one knob
of the default ``KernelPlan`` (``fmmformer_pl/attention/ops/plan.py``: the far field's
chunking and launches, the near field's tiles and launches, the blend's tile and tiles per
program), built as a new plan and handed to the op; at the end the per-knob winners are
combined and timed again, and the script prints the settings to write into the plan's
defaults. Triton compiles every setting once; ``--workers`` processes compile
them in parallel first (into Triton's on-disk cache), so the timing loop only loads kernels.

``--batch/--heads/--dim/--band/--dropout/--padded`` change the shape timed (e.g. the LRA
Retrieval model's attention: ``--seq 4096 --batch 64 --heads 2 --dim 32 --band 5 --dropout 0.1
--padded --fields near``; padding masks the last eighth of every row).

``--fields layer``: the fused FMM layer (fmm r = 2, band 64: ``FMMAttention`` on CUDA, the
blend weights' gradients included) with ``FusedPlan``'s per-mode switches flipped for the
mode timed (``far_forms_blend``, ``near_forms_blend``, ``dc_in_state_pass``).

``--fields short``: the same layer, bidirectional, through the short-path kernels of short
sequences (``ops/short``): its length limit (0: the general path), programs per SM and
launch settings (``ShortPlan``).

``--graph`` times replays of a CUDA graph of the step instead: the kernels' own time, without
the host's launch overhead (which dominates eager timings below ~64K tokens on our machine).
Writes one CSV row per (field, mode, setting): ms, and the setting as JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import sys
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fmmformer_pl.attention import far_fields, near_field  # noqa: E402
from fmmformer_pl.attention.ops.plan import DEFAULT_PLAN, KernelPlan  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from attention_gpu import make_variant  # noqa: E402
from cuda_timing import graphed, median_ms  # noqa: E402

FAR_MAPS = ["elu", "elu_flip"]
BAND = 64

# Knob -> values tried (one at a time, the others at their defaults). "launch:<kernels>"
# knobs set num_warps / num_stages / maxnreg of those kernels together.
FAR_KNOBS = {
    "bidirectional": {
        "plan:chunk_bidir": [32, 64, 128],
        "plan:state_chunk": [16, 32, 64],
        "plan:main_chunks_bidir": [1, 2, 4, 8],
        "plan:maps_per_call_bidir": [1, 2],
        "plan:programs_per_sm": [2, 4, 8, 16],
        "warps:state_fwd,state_bwd": [4, 8],
        "stages:state_fwd,state_bwd": [2, 3, 4],
        "warps:fwd_bidir,bwd_bidir": [4, 8],
        "stages:state_fwd,state_bwd,fwd_bidir,bwd_bidir": [1, 2, 3],
        "maxnreg:state_fwd,state_bwd,fwd_bidir,bwd_bidir": [None, 128],
    },
    "causal": {
        "plan:chunk_causal": [16, 32, 64],
        "plan:state_chunk": [16, 32, 64],
        "plan:programs_per_sm": [2, 3, 4, 8, 16, 32],
        "plan:min_segment_chunks": [1, 2, 4, 16],
        "plan:single_segment_chunks": [0, 4, 16],
        "plan:maps_per_call_causal": [1, 2],
        "plan:pair_maps_causal": [
            [],
            ["fwd"],
            ["dq"],
            ["dkv"],
            ["fwd", "dq"],
            ["dq", "dkv"],
            ["fwd", "dq", "dkv"],
        ],
        "warps:fwd_pair,dq_pair,dkv_pair": [4, 8],
        "stages:fwd_pair,dq_pair,dkv_pair": [1, 2, 3],
        "warps:state_fwd_causal,state_bwd_causal": [4, 8],
        "warps:fwd,dq,dkv": [4, 8],
        "stages:state_fwd_causal,state_bwd_causal,fwd,dq,dkv": [1, 2, 3],
        "maxnreg:state_fwd_causal,state_bwd_causal,fwd,dq,dkv": [None, 128, 168],
    },
}
BLEND_KNOBS = {
    "tiles": [1, 2, 4, 8, 16],
    "block_t": [32, 64, 128],
    "warps:fwd,bwd": [2, 4, 8],
}
NEAR_KNOBS = {
    "blocks": [(64, 64), (128, 64), (64, 32), (128, 32), (32, 32), (128, 128)],
    # NearPlan.narrow_tiles: ((widest band, tile), ...) for narrow bands; () turns them off.
    "narrow": [(), ((16, 16),), ((32, 16),), ((16, 32),), ((32, 32),), ((16, 16), (32, 32))],
    "warps:fwd,dq,dkv": [4, 8],
    "stages:fwd,dq,dkv": [1, 2, 3],
}


LAYER_KNOBS = {
    "switch:far_forms_blend": [True, False],
    "switch:near_forms_blend": [True, False],
    "switch:dc_in_state_pass": [True, False],
}
# The short-path layer of short bidirectional sequences (ops/short): "short:" knobs set
# ShortPlan's fields (max_seq 0: the general path, 1 << 20: the short path at any length and
# grid), the launch knobs its kernels' launch settings.
SHORT_KNOBS = {
    "short:max_seq": [0, 1 << 20],
    "short:max_blocks_per_sm": [1 << 20],
    "short:programs_per_sm": [1, 2, 4, 8, 16],
    "short:state_step": [32, 64, 128, 256],
    "short:state_segments": [0, 2, 4, 8, 16],
    "short:pdl": [False, True],
    "warps:state,rstate": [4, 8],
    # The backward at 8 warps faults at head_dim 32, band 5, and a fault poisons the
    # process's CUDA context for every later setting.
    "warps:fwd,bwd": [2, 4],
    "warps:fwd": [2, 4, 8],
    "warps:bwd": [2, 4],
    "stages:fwd,bwd": [1, 2, 3],
}


_LAUNCH_KEYS = {"warps": "num_warps", "stages": "num_stages", "maxnreg": "maxnreg"}
_FIELD_PART = {"far": "far", "near": "near", "blend": "blend", "short": "short"}


def _with_launch(part, names, key, value):
    """``part`` (a frozen plan part) with ``key`` of the launches ``names`` set to value."""
    launches = part.launch if hasattr(part, "launch") else part
    updates = {name: replace(getattr(launches, name), **{key: value}) for name in names}
    launches = replace(launches, **updates)
    return replace(part, launch=launches) if hasattr(part, "launch") else launches


def plan_for(field, setting, causal=False, base: KernelPlan = DEFAULT_PLAN) -> KernelPlan:
    """The plan with the knobs of ``setting`` ({knob: value}) set (a ``switch:`` for the mode
    timed)."""
    plan = base
    for knob, value in setting.items():
        if knob.startswith("short:"):
            plan = plan.with_(short={knob.split(":")[1]: value})
        elif knob.startswith("switch:"):
            name = knob.split(":")[1]
            old = getattr(plan.fused, name)
            mode = "causal" if causal else "bidirectional"
            plan = plan.with_(fused={name: replace(old, **{mode: value})})
        elif knob == "blocks":
            plan = plan.with_(near=dict(block_m=value[0], block_n=value[1]))
        elif knob == "narrow":
            plan = plan.with_(near=dict(narrow_tiles=tuple(tuple(pair) for pair in value)))
        elif knob == "tiles":
            plan = plan.with_(blend=dict(bwd_tiles=value))
        elif knob == "block_t":
            plan = plan.with_(blend=dict(block_t=value))
        else:
            kind, names = knob.split(":")
            if kind == "plan":
                plan = plan.with_(far={_far_name(names): _far_value(plan.far, names, value)})
                continue
            part = getattr(plan, _FIELD_PART[field])
            part = _with_launch(part, names.split(","), _LAUNCH_KEYS[kind], value)
            plan = replace(plan, **{_FIELD_PART[field]: part})
    return plan


def _far_name(name):
    for base in ("chunk", "maps_per_call"):
        if name in (f"{base}_causal", f"{base}_bidir"):
            return base
    return name


def _far_value(far, name, value):
    """A ``FarPlan`` field's new value: a ByMode half for the per-mode ones."""
    base = _far_name(name)
    if base != name:
        half = "causal" if name.endswith("_causal") else "bidirectional"
        return replace(getattr(far, base), **{half: value})
    return tuple(value) if name == "pair_maps_causal" else value


# What is timed besides the length: batch, heads, head_dim, band, attention dropout, padding.
DEFAULT_SHAPE = dict(batch=1, heads=8, dim=64, band=BAND, dropout=0.0, padded=False)


def _inputs(seq, shape):
    gen = torch.Generator(device="cuda").manual_seed(0)
    batch, heads, dim = shape["batch"], shape["heads"], shape["dim"]

    def make():
        t = torch.randn(batch, seq, heads, dim, device="cuda", generator=gen)
        return t.to(torch.bfloat16).transpose(1, 2).requires_grad_(True)

    mask = None
    if shape["padded"]:
        mask = torch.zeros(batch, seq, dtype=torch.bool, device="cuda")
        mask[:, seq - seq // 8 :] = True
    return make(), make(), make(), mask


def _step_fn(field, causal, q, k, v, mask=None, shape=DEFAULT_SHAPE, plan=DEFAULT_PLAN):
    if field in ("layer", "short"):
        fn, params = make_variant(
            "fmm_r2", q.shape[1], q.shape[-1], shape["band"], causal, plan=plan
        )
        inputs = (q, k, v, *params)

        def run():
            y = fn(q, k, v)
            return torch.autograd.grad(y, inputs, torch.ones_like(y))

    elif field == "blend":
        from fmmformer_pl.attention.ops.blend.op import blend_kernel

        heads, dim = q.shape[1], q.shape[-1]
        coeffs = torch.rand(3, heads, dim, device=q.device, requires_grad=True)

        def run():
            y = blend_kernel([q, k, v], coeffs, plan=plan)
            return torch.autograd.grad(y, (q, k, v, coeffs), torch.ones_like(y))

    elif field == "far":

        def run():
            outs = far_fields(
                q, k, v, FAR_MAPS, causal=causal, key_padding_mask=mask, backend="cuda", plan=plan
            )
            return torch.autograd.grad(outs, (q, k, v), [torch.ones_like(o) for o in outs])

    else:

        def run():
            out = near_field(
                q, k, v, shape["band"], causal=causal, key_padding_mask=mask,
                dropout_p=shape["dropout"], backend="cuda", plan=plan,
            )  # fmt: skip
            return torch.autograd.grad(out, (q, k, v), torch.ones_like(out))

    return run


def time_setting(field, causal, setting, seq, repeats, graph=False, shape=DEFAULT_SHAPE):
    try:
        plan = plan_for(field, setting, causal)
        q, k, v, mask = _inputs(seq, shape)
        run = _step_fn(field, causal, q, k, v, mask, shape, plan)
        run()
        if graph:
            run = graphed(run)
        torch.cuda.synchronize()
        return median_ms(run, repeats), ""
    except Exception as err:  # a setting that does not compile or launch is reported, not fatal
        return float("nan"), f"{type(err).__name__}: {str(err)[:200]}"


def settings():
    """(field, mode, setting) triples: the default, then each knob's values one at a time."""
    out = []
    for mode, knobs in FAR_KNOBS.items():
        out.append(("far", mode, {}))
        out += [("far", mode, {knob: v}) for knob, values in knobs.items() for v in values]
    for mode in ("bidirectional", "causal"):
        out.append(("near", mode, {}))
        out += [("near", mode, {knob: v}) for knob, values in NEAR_KNOBS.items() for v in values]
    for mode in ("bidirectional", "causal"):
        out.append(("layer", mode, {}))
        out += [("layer", mode, {knob: v}) for knob, values in LAYER_KNOBS.items() for v in values]
        # Where the far kernels do not blend: the near kernel or the blend kernel.
        no_far = {"switch:far_forms_blend": False}
        out += [("layer", mode, {**no_far, "switch:near_forms_blend": v}) for v in (True, False)]
    out.append(("short", "bidirectional", {}))
    out += [("short", "bidirectional", {k: v}) for k, values in SHORT_KNOBS.items() for v in values]
    # The blend has no mask: one mode.
    out.append(("blend", "bidirectional", {}))
    out += [("blend", "bidirectional", {k: v}) for k, values in BLEND_KNOBS.items() for v in values]
    return out


def _warm(job):
    """Worker: compile (and run once) each setting of the batch (same length: Triton
    specialises integer arguments on divisibility, so a shorter one could compile others)."""
    batch, seq, shape = job
    for field, mode, setting in batch:
        time_setting(field, mode == "causal", setting, seq, 1, shape=shape)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seq", type=int, default=65536)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--workers", type=int, default=12, help="parallel compile processes (0: none)")
    p.add_argument(
        "--fields",
        nargs="+",
        default=["far", "near"],
        choices=["far", "near", "blend", "layer", "short"],
    )
    p.add_argument("--only", nargs="*", default=[], help="only knobs containing these strings")
    p.add_argument(
        "--graph",
        action="store_true",
        help="time CUDA-graph replays (GPU time only; eager timings include host launches)",
    )
    p.add_argument("--out", type=Path, default=REPO / "results" / "kernel_tune.csv")
    p.add_argument(
        "--modes",
        nargs="+",
        default=["bidirectional", "causal"],
        choices=["bidirectional", "causal"],
    )
    for name, value in DEFAULT_SHAPE.items():
        if isinstance(value, bool):
            p.add_argument(f"--{name}", action="store_true")
        else:
            p.add_argument(f"--{name}", type=type(value), default=value)
    args = p.parse_args(argv)
    shape = {name: getattr(args, name) for name in DEFAULT_SHAPE}
    if not torch.cuda.is_available():
        raise SystemExit("far_tune.py needs a CUDA device")
    todo = [
        (field, mode, setting)
        for field, mode, setting in settings()
        if field in args.fields
        and mode in args.modes
        and (not setting or not args.only or any(o in k for k in setting for o in args.only))
    ]
    if args.workers > 0:
        ctx = mp.get_context("spawn")
        batches = [todo[i :: args.workers] for i in range(args.workers)]
        with ctx.Pool(args.workers) as pool:
            pool.map(_warm, [(b, args.seq, shape) for b in batches])
        print(f"compiled {len(todo)} settings in {args.workers} processes", flush=True)
    rows, best = [], {}
    for field, mode, setting in todo:
        ms, err = time_setting(
            field, mode == "causal", setting, args.seq, args.repeats, args.graph, shape
        )
        rows.append(dict(field=field, mode=mode, setting=json.dumps(setting), ms=ms, error=err))
        print(f"{field:4s} {mode:13s} {json.dumps(setting):60s} {ms:8.3f} ms {err}", flush=True)
        for knob, value in setting.items():
            key = (field, mode, knob)
            if ms == ms and (key not in best or ms < best[key][0]):
                best[key] = (ms, value)
    # Combine each knob's winner (only knobs that beat the default by over 2%).
    for field, mode in {(f, m) for f, m, _ in todo}:
        default = next(
            r["ms"] for r in rows if (r["field"], r["mode"], r["setting"]) == (field, mode, "{}")
        )
        combo = {
            knob: value
            for (f, m, knob), (ms, value) in best.items()
            if (f, m) == (field, mode) and ms < 0.98 * default
        }
        if combo:
            ms, err = time_setting(
                field, mode == "causal", combo, args.seq, args.repeats, args.graph, shape
            )
            rows.append(
                dict(
                    field=field,
                    mode=mode,
                    setting="combined " + json.dumps(combo),
                    ms=ms,
                    error=err,
                )
            )
            print(
                f"{field:4s} {mode:13s} combined {json.dumps(combo)} {ms:8.3f} ms (default {default:.3f}) {err}",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["field", "mode", "setting", "ms", "error"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
