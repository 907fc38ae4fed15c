"""The Python cost of one fused FMM step's host code, measured without a GPU.

    python bench/host_python_cpu.py [--causal] [--seq 128] [--steps 300]

Every Triton kernel that ``fmmformer_pl.attention.ops`` launches is replaced by a no-op
launcher, and ``fmm_attention_kernel`` (near field + two far-field maps + blend, forward and backward, with
the blend coefficients' autograd) runs on small CPU tensors: what remains is our host code,
torch's autograd and allocations, i.e. what the GPU machine's host pays on top of the kernel
launches themselves (``bench/host_profile.py`` measures those there). Prints microseconds per
step and the cProfile of the functions that take the most time. Needs triton (extra
``kernels-cpu``), no GPU.
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

from attention_gpu import add_short_option, apply_short_option  # noqa: E402

H200_SMS = 132


def _no_op(*args, **kwargs):
    return None


class _NoKernel:
    """Stands in for a compiled kernel: ``launch``'s cache keeps it (it is a CompiledKernel to
    ``isinstance``), and ``compiled[grid](*args)`` does nothing. So repeated calls take
    ``launch``'s cache-hit path, as they do on the GPU."""

    def __getitem__(self, grid):
        return _no_op


class _NoLaunch:
    """Stands in for a JITFunction: ``kernel[grid](*args)`` does nothing and returns a
    ``_NoKernel``, which ``launch`` caches like a compiled kernel."""

    def __init__(self, fn):
        self.arg_names = list(fn.arg_names)
        self.params = fn.params
        self.fn = fn.fn

    def __getitem__(self, grid):
        return lambda *args, **kwargs: _compiled()


def _compiled():
    from triton.compiler import CompiledKernel

    kind = type("_NoCompiledKernel", (_NoKernel, CompiledKernel), {})
    return object.__new__(kind)


def stub_kernels():
    """Replace the kernels in the op modules that launch them (a measurement harness)."""
    import triton

    from fmmformer_pl.attention.ops.blend import op as blend
    from fmmformer_pl.attention.ops.far_field import op as far
    from fmmformer_pl.attention.ops.near_field import op as near
    from fmmformer_pl.attention.ops.short import op as short

    for module in (near, far, blend, short):
        for name in dir(module):
            if isinstance(getattr(module, name), triton.runtime.jit.JITFunction):
                setattr(module, name, _NoLaunch(getattr(module, name)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--causal", action="store_true")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--top", type=int, default=20)
    add_short_option(p)
    args = p.parse_args(argv)
    # Planned as on the H200 (132 SMs): the segments, and which grids take the short path.
    plan = apply_short_option(args).with_(sm_count=H200_SMS)
    stub_kernels()
    from fmmformer_pl.attention.config import AttentionConfig
    from fmmformer_pl.attention.layer import FMMAttention
    from fmmformer_pl.attention.ops.fmm.op import fmm_attention_kernel

    maps = ["elu", "elu_flip"]
    cfg = AttentionConfig(kind="fmm", bandwidth=64, feature_maps=maps)
    layer = FMMAttention(512, 8, cfg, args.causal)
    params = [p for p in layer.blend.parameters() if p.requires_grad]
    q = torch.randn(1, args.seq, 8, 64).transpose(1, 2).requires_grad_(True)  # model layout
    k = torch.randn(1, args.seq, 8, 64).transpose(1, 2).requires_grad_(True)
    v = torch.randn(1, args.seq, 8, 64).transpose(1, 2).requires_grad_(True)

    def step():
        coeffs = layer.blend.coefficients()
        y = fmm_attention_kernel(q, k, v, coeffs, 64, maps, causal=args.causal, plan=plan)
        return torch.autograd.grad(y, [q, k, v, *params], torch.ones_like(y))

    for _ in range(20):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    us = (time.perf_counter() - start) / args.steps * 1e6
    mode = "causal" if args.causal else "bidirectional"
    print(f"fmm r=2 {mode}, seq {args.seq}, kernels stubbed out: {us:.1f} us of host per step")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.steps):
        step()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(args.top)
    print(buf.getvalue())


if __name__ == "__main__":
    main()
