"""The far-field kernels as the H200 runs them, compiled on a machine without a GPU: registers,
spills, shared memory and the instructions of each kernel's main loop (per chunk).

    python bench/kernel_sass.py                 # any machine, ~1 minute; -> results/kernel_sass.csv
    python bench/kernel_sass.py --field near    # the near field's
    python bench/kernel_sass.py --released      # the LM configs' far field (phi / sum phi, eps)

``--field near``: the near field's kernels (band 64: the forward, then dq and dk/dv);
``loop`` is then its longest loop, one key or query tile.

How: ``far_forward`` / ``far_backward`` run on CPU tensors of the benchmark's shape (bf16,
batch 1, 8 heads, head_dim 64, feature maps elu + 1 and elu(-x) + 1, seq ``--seq``) with every
kernel launch intercepted; each launch's arguments then go through Triton's own argument
specialisation and ``triton.compile`` for sm_90a (the H200), and Triton's bundled
``ptxas``/``nvdisasm`` give registers, spills and the SASS. The plan uses the H200's 132 SMs.

Why: the causal far-field kernels are latency-bound at two 4-warp programs per SM (Nsight
Compute's SpeedOfLight, Occupancy and WarpStateStats sections of a 64K causal step), so their
time follows the instructions each warp issues per chunk and the registers that cap the
programs per SM. Both can be read off the compiled code
here, before any GPU time is spent. The loop is the kernel's longest backward branch (the walk
over chunks); ``loop`` counts its SASS instructions, issued once per chunk by every warp, by
category: for both feature maps where a causal walk takes them together
(``FarPlan.pair_maps_causal``: the forward and dq walks), else for one (they walk one after
the other).
The far field is compiled as ``far_forward``/``far_backward`` run it alone (without the fused
FMM layer's blend in the forward or dy scaling in the backward).
``instructions`` counts the whole kernel: the bidirectional main kernels do one chunk per
program and have no loop.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends import backends
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import create_function_from_signature

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fmmformer_pl.attention.ops.far_field import op as far  # noqa: E402
from fmmformer_pl.attention.ops.near_field import op as near  # noqa: E402
from fmmformer_pl.attention.ops.plan import DEFAULT_PLAN  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)  # H100/H200
H200_SMS = 132
# Planned for the H200 (its SMs; inline PTX, which the CPU machine's plan leaves out).
PLAN = DEFAULT_PLAN.with_(sm_count=H200_SMS, inline_ptx=True)
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
CATEGORIES = {
    "mma": ("HGMMA", "WARPGROUP", "HMMA"),
    "shared": ("LDS", "STS", "LDSM", "STSM", "BAR", "FENCE", "SYNCS"),
    "global": ("LDG", "STG", "LDGSTS", "LDGDEPBAR", "DEPBAR", "RED", "ATOM"),
    "spill": ("LDL", "STL"),
    "float": ("FMUL", "FADD", "FFMA", "FSEL", "FSETP", "FMNMX", "MUFU", "F2FP", "HSETP2",
              "HADD2", "HMUL2", "HFMA2", "FCHK", "F2F"),
}  # fmt: skip


class _Recorder:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **kw)`` records the call."""

    def __init__(self, name, fn, calls):
        self.name, self.fn, self.calls = name, fn, calls

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append((self.name, self.fn, args, kwargs))

        return launch


@contextlib.contextmanager
def _recording(module, calls):
    """Every ``@triton.jit`` kernel of ``module`` replaced by a ``_Recorder`` into ``calls``."""
    patched = {}
    for name in dir(module):
        obj = getattr(module, name)
        if isinstance(obj, triton.runtime.jit.JITFunction):
            patched[name] = obj
            setattr(module, name, _Recorder(name, obj, calls))
    try:
        yield
    finally:
        for name, obj in patched.items():
            setattr(module, name, obj)


def record_launches(seq: int, causal: bool, heads: int = 8, dim: int = 64, released=False):
    """The (name, kernel, args, kwargs) of every far-field launch of one fwd+bwd; released:
    with the released LM code's feature normalisation and eps 1e-5."""
    calls = []
    with _recording(far, calls):
        q, k, v = (torch.empty(1, heads, seq, dim, dtype=torch.bfloat16) for _ in range(3))
        options = dict(feature_normalize=released, eps=1e-5 if released else 0.0)
        outs, saved = far.far_forward(q, k, v, None, (0, 1), causal, True, PLAN, **options)
        far.far_backward(saved, [torch.empty_like(o) for o in outs])
    return calls


def record_near_launches(seq: int, causal: bool, heads: int = 8, dim: int = 64, band: int = 64):
    """The (name, kernel, args, kwargs) of every near-field launch of one fwd+bwd."""
    calls = []
    with _recording(near, calls):
        q, k, v = (torch.empty(1, heads, seq, dim, dtype=torch.bfloat16) for _ in range(3))
        args = near.NearArgs(band, 0.0, 0)
        out, saved = near.near_forward(q, k, v, None, args, causal, PLAN.near)
        near.near_backward(saved, torch.empty_like(out))
    return calls


def compile_sm90(fn, args, kwargs):
    """``triton.compile`` for sm_90a with the specialisation Triton's launcher would derive."""
    backend = backends["nvidia"].compiler(TARGET)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(
        backend, kwargs, bound, specialization, options
    )
    src = triton.compiler.ASTSource(fn, signature, constexprs, attrs)
    return triton.compile(src, target=TARGET, options=options.__dict__)


def _ptxas_stats(ptx: str) -> tuple[int, int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        Path(path).write_text(ptx)
        out = subprocess.run(
            [BIN / "ptxas", "-v", "--gpu-name", "sm_90a", path, "-o", path + ".o"],
            capture_output=True, text=True, check=True,
        ).stderr  # fmt: skip
    regs = int(re.search(r"Used (\d+) registers", out).group(1))
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    return regs, int(spill.group(1)), int(spill.group(2))


def _sass(cubin: bytes) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        Path(path).write_bytes(cubin)
        out = subprocess.run(
            [BIN / "nvdisasm", "-c", path], capture_output=True, text=True, check=True
        ).stdout
    return out.splitlines()


_OP = re.compile(r"\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")


def count_ops(lines: list[str]) -> int:
    return sum(1 for line in lines if _OP.match(line))


def loop_mix(lines: list[str]) -> collections.Counter:
    """Instruction categories of the longest loop (a backward branch to an earlier label)."""
    labels, best = {}, None
    for i, line in enumerate(lines):
        m = re.match(r"^\s*(\.L_x_\d+):", line)
        if m:
            labels[m.group(1)] = i
        m = re.search(r"BRA `\((\.L_x_\d+)\)", line)
        if m and m.group(1) in labels:
            span = (labels[m.group(1)], i)
            if best is None or span[1] - span[0] > best[1] - best[0]:
                best = span
    mix = collections.Counter()
    for line in lines[best[0] : best[1] + 1] if best else []:
        m = _OP.match(line)
        if not m:
            continue
        op = m.group(1)
        cat = next((c for c, ops in CATEGORIES.items() if op.startswith(ops)), "integer/other")
        mix[cat] += 1
    return mix


def report(seq: int, modes, note: str, field: str = "far", released: bool = False):
    rows = []
    for causal in modes:
        seen = set()
        if field == "far":
            launches = record_launches(seq, causal, released=released)
        else:
            launches = record_near_launches(seq, causal)
        for name, fn, args, kwargs in launches:
            if name in seen:
                continue
            seen.add(name)
            kernel = compile_sm90(fn, args, kwargs)
            regs, spill_st, spill_ld = _ptxas_stats(kernel.asm["ptx"])
            sass = _sass(kernel.asm["cubin"])
            mix = loop_mix(sass)
            rows.append(
                dict(
                    mode="causal" if causal else "bidirectional",
                    kernel=name.strip("_"),
                    warps=kwargs.get("num_warps", 4),
                    registers=regs,
                    spill_store_bytes=spill_st,
                    spill_load_bytes=spill_ld,
                    shared_kb=round(kernel.metadata.shared / 1024, 1),
                    instructions=count_ops(sass),
                    loop=sum(mix.values()),
                    **{c: mix.get(c, 0) for c in (*CATEGORIES, "integer/other")},
                    note=note,
                )
            )
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq", type=int, default=65536)
    p.add_argument("--modes", nargs="+", default=["causal", "bidirectional"])
    p.add_argument("--field", choices=["far", "near"], default="far")
    p.add_argument(
        "--released",
        action="store_true",
        help="far field with the LM configs' feature normalisation and eps",
    )
    p.add_argument("--note", default="", help="a label for the rows (e.g. the commit)")
    p.add_argument(
        "--out", type=Path, default=REPO / "results" / "kernel_sass.csv", help="CSV to append to"
    )
    a = p.parse_args(argv)
    rows = report(a.seq, [m == "causal" for m in a.modes], a.note, a.field, a.released)
    cols = list(rows[0])
    print(" | ".join(cols[:-1]))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols[:-1]))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        new = not a.out.exists()
        with a.out.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            if new:
                w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
