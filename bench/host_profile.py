"""Where the host (Python) time of one eager attention step goes, on a CUDA machine.

    python bench/host_profile.py                            # -> results/host_profile.txt

Short sequences are host-bound: the GPU waits for Python to launch the kernels. This prints
(1) what one launch costs on this host: an empty aten op, ``torch.empty``, and a Triton kernel
with 40 arguments launched through ``JITFunction.__getitem__`` (Triton's usual path),
through the compiled kernel's own ``run`` (no argument binding) and through our
``ops/common/launch.py`` (a cached compiled kernel behind a key of the arguments); (2) the wall time per eager
step of each variant, with the GPU synchronised once per ``--steps`` steps (host time when
host-bound), with autograd's backward on its device thread (the default) and on the calling
thread; (3) cProfile of the fmm steps: the functions that take the host time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from attention_gpu import add_short_option, apply_short_option, make_variant  # noqa: E402


def _per_call_us(fn, n):
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    host = time.perf_counter() - start
    torch.cuda.synchronize()
    return host / n * 1e6


def launch_costs(n=2000):
    import triton
    import triton.language as tl

    @triton.jit
    def _noop(x_ptr, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, b0, b1, b2, b3, b4, b5, b6, b7,
              b8, b9, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, d0, d1, d2, d3, d4, d5, d6, d7,
              d8, N: tl.constexpr):  # fmt: skip
        if tl.program_id(0) == 0:
            tl.store(x_ptr, a0 + b0 + c0 + d0 + N)

    x = torch.zeros(4, device="cuda", dtype=torch.int32)
    ints = list(range(1, 40))
    kernel = _noop[(8, 8)](x, *ints, N=1)
    out = {}
    out["aten x.add_(1)"] = _per_call_us(lambda: x.add_(1), n)
    out["torch.empty (64K x 512 bf16)"] = _per_call_us(
        lambda: torch.empty(65536, 512, device="cuda", dtype=torch.bfloat16), n
    )
    out["triton jit launch, 40 args"] = _per_call_us(lambda: _noop[(8, 8)](x, *ints, N=1), n)
    runner = kernel[(8, 8, 1)]
    out["triton compiled.run, 40 args"] = _per_call_us(lambda: runner(x, *ints, 1), n)
    from fmmformer_pl.attention.ops.common.launch import launch

    out["ops/common/launch.py launch(), 40 args"] = _per_call_us(
        lambda: launch(_noop, (8, 8), x, *ints, N=1), n
    )
    return out


class _Identity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g


@torch.compiler.disable
def _disabled_noop(x):
    return x


def piece_costs(seq, plan, n=500):
    """Host cost of the pieces of one fmm step (us per call, no GPU synchronisation)."""
    from fmmformer_pl.attention import far_fields, near_field

    q = torch.randn(1, 8, seq, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    x = torch.randn(4, device="cuda", requires_grad=True)
    fn, _ = make_variant("fmm_r2", 8, 64, 64, False, plan)
    out = {}
    out["torch.cuda.is_available()"] = _per_call_us(torch.cuda.is_available, n)
    out["@torch.compiler.disable no-op"] = _per_call_us(lambda: _disabled_noop(x), n)
    out["autograd.Function identity fwd+bwd"] = _per_call_us(
        lambda: torch.autograd.grad(_Identity.apply(x), x, torch.ones_like(x)), n
    )
    with torch.no_grad():
        out["near_field fwd, no grad"] = _per_call_us(
            lambda: near_field(q, q, q, 64, backend="cuda"), n
        )
        out["far_fields r=2 fwd, no grad"] = _per_call_us(
            lambda: far_fields(q, q, q, ["elu", "elu_flip"], backend="cuda"), n
        )
        out["fmm_r2 layer fwd, no grad"] = _per_call_us(lambda: fn(q, q, q), n)
    out["near_field fwd, grad"] = _per_call_us(lambda: near_field(q, q, q, 64, backend="cuda"), n)
    out["fmm_r2 layer fwd, grad"] = _per_call_us(lambda: fn(q, q, q), n)
    return out


def step_fn(name, seq, causal, heads, head_dim, band, plan):
    fn, params = make_variant(name, heads, head_dim, band, causal, plan)
    gen = torch.Generator(device="cuda").manual_seed(seq)

    def make():
        t = torch.randn(1, seq, heads, head_dim, device="cuda", generator=gen)
        return t.to(torch.bfloat16).transpose(1, 2).requires_grad_(True)

    q, k, v = make(), make(), make()
    inputs = [q, k, v, *params]
    grad_out = torch.randn_like(fn(q, k, v))
    return lambda: torch.autograd.grad(fn(q, k, v), inputs, grad_out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--variants", nargs="+", default=["softmax", "band", "linear", "fmm_r2"])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--out", type=Path, default=REPO / "results" / "host_profile.txt")
    add_short_option(p)
    args = p.parse_args(argv)
    plan = apply_short_option(args)
    if not torch.cuda.is_available():
        raise SystemExit("host_profile.py needs a CUDA device")
    lines = [f"# python bench/host_profile.py --seq {args.seq} --steps {args.steps}"]
    if args.short_max_seq is not None:
        lines[0] += f" --short-max-seq {args.short_max_seq}"
    lines.append("## host cost per call (us)")
    for what, us in launch_costs().items():
        lines.append(f"{what:40s} {us:8.1f}")
    for what, us in piece_costs(args.seq, plan).items():
        lines.append(f"{what:40s} {us:8.1f}")
    lines.append(f"## host time per eager fwd+bwd step, seq {args.seq} (us)")
    steps = {}
    for causal in (False, True):
        for name in args.variants:
            step = step_fn(name, args.seq, causal, 8, 64, 64, plan)
            steps[(name, causal)] = step
            us = _per_call_us(step, args.steps)
            lines.append(f"{name:10s} {'causal' if causal else 'bidir':7s} {us:8.1f}")
    # The backward runs on autograd's device thread, which cProfile does not see: run it on
    # this thread for the profile. Its cost: the same steps on the calling thread.
    torch.autograd.set_multithreading_enabled(False)
    lines.append("## the same, backward on the calling thread (set_multithreading_enabled(False))")
    for (name, causal), step in steps.items():
        us = _per_call_us(step, args.steps)
        lines.append(f"{name:10s} {'causal' if causal else 'bidir':7s} {us:8.1f}")
    for name, causal in [(n, c) for n in ("band", "fmm_r2") for c in (False, True)]:
        if (name, causal) not in steps:
            continue
        step = steps[(name, causal)]
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.steps):
            step()
        prof.disable()
        torch.cuda.synchronize()
        for order in ("tottime", "cumulative"):
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats(order).print_stats(args.top)
            mode = "causal" if causal else "bidir"
            lines.append(f"## cProfile {name} {mode}, {args.steps} steps, by {order}")
            lines.append(buf.getvalue())
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
