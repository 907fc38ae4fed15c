"""The GPU benchmark scripts refuse clearly on a machine without CUDA (their numbers come from
the GPU machine; docs/benchmarks.md has the commands) and parse their options."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
@pytest.mark.parametrize(
    "script, args",
    [
        ("attention_gpu.py", ["--seqs", "1024", "--no-plot"]),
        ("attention_profile.py", ["--seqs", "1024", "--variants", "fmm_r2"]),
        ("far_tune.py", ["--graph", "--fields", "far", "--only", "state_chunk"]),
        ("host_profile.py", ["--seq", "1024", "--steps", "5"]),
        (
            "train_throughput.py",
            [
                "--tasks",
                "retrieval",
                "--compile",
                "fmm",
                "--compile-mode",
                "reduce-overhead",
                "--profile",
            ],
        ),
        ("attention_gpu.py", ["--seqs", "1024", "--backward-thread", "caller"]),
        ("eager_timeline.py", ["--seqs", "1024", "--backward-thread", "caller"]),
        ("graph_settings.py", ["--setting", "pdl_off", '{"short:pdl": false}']),
    ],
)
def test_gpu_bench_exits_with_a_message_without_cuda(script, args, tmp_path):
    run = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1
    assert f"{script} needs a CUDA device" in run.stderr


def test_far_tune_settings_cover_every_knob_once():
    sys.path.insert(0, str(BENCH))
    try:
        import far_tune
    finally:
        sys.path.remove(str(BENCH))
    todo = far_tune.settings()
    defaults = [(f, m) for f, m, s in todo if not s]
    assert sorted(defaults) == sorted(
        [
            ("blend", "bidirectional"),
            ("far", "bidirectional"),
            ("far", "causal"),
            ("near", "bidirectional"),
            ("near", "causal"),
            ("layer", "bidirectional"),
            ("layer", "causal"),
            ("short", "bidirectional"),
        ]
    )
    n_values = sum(len(v) for knobs in far_tune.FAR_KNOBS.values() for v in knobs.values())
    n_values += 2 * sum(len(v) for v in far_tune.NEAR_KNOBS.values())
    n_values += sum(len(v) for v in far_tune.BLEND_KNOBS.values())
    # per mode each layer switch both ways, and the near blend both ways with the far one off
    n_values += 2 * (sum(len(v) for v in far_tune.LAYER_KNOBS.values()) + 2)
    n_values += sum(len(v) for v in far_tune.SHORT_KNOBS.values())
    assert len(todo) == len(defaults) + n_values
    assert len({(f, m, str(s)) for f, m, s in todo}) == len(todo)


def test_host_python_cpu_runs_without_a_gpu(tmp_path):
    """bench/host_python_cpu.py stubs the kernels out and times our host code on the CPU."""
    pytest.importorskip("triton", reason="needs triton (extra kernels-cpu)")
    run = subprocess.run(
        [sys.executable, str(BENCH / "host_python_cpu.py"), "--steps", "3", "--top", "3"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "us of host per step" in run.stdout


def test_attention_gpu_merge_replaces_the_rows_measured_again(tmp_path):
    sys.path.insert(0, str(BENCH))
    import attention_gpu

    old = tmp_path / "attention_gpu.csv"
    old.write_text(
        "variant,seq,causal,ms,note\n"
        "softmax,1024,False,0.25,\n"
        "fmm_r2,1024,False,2.1,\n"
        "fmm_r2,1024,True,,OOM\n"
    )
    new = [
        dict(variant="fmm_r2", seq=1024, causal=False, ms=1.5, note="again"),
        dict(variant="fmm_r2", seq=4096, causal=False, ms=1.6, note="new"),
    ]
    rows = attention_gpu.merge_rows(old, new)
    assert [(r["variant"], r["seq"], r["causal"], r["ms"]) for r in rows] == [
        ("softmax", 1024, False, 0.25),
        ("fmm_r2", 1024, False, 1.5),
        ("fmm_r2", 1024, True, ""),
        ("fmm_r2", 4096, False, 1.6),
    ]


def test_kernel_sass_compiles_the_far_kernels_for_the_h200_without_a_gpu(tmp_path):
    """bench/kernel_sass.py: every far-field kernel of a causal and a bidirectional step,
    compiled for sm_90a with Triton's bundled ptxas, with registers and a main loop. A fresh
    process: the interpreter tests set TRITON_INTERPRET in this one."""
    pytest.importorskip("triton")
    out = tmp_path / "sass.csv"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, str(BENCH / "kernel_sass.py"), "--seq", "4096", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    with out.open() as f:
        rows = list(csv.DictReader(f))
    kernels = {(r["mode"], r["kernel"]) for r in rows}
    assert ("causal", "dkv_causal_kernel") in kernels
    assert ("bidirectional", "bwd_bidir_kernel") in kernels
    assert len(rows) == 9
    for r in rows:
        assert 0 < int(r["registers"]) <= 255 and int(r["instructions"]) > 100, r
        if r["mode"] == "causal":  # every causal kernel walks its chunks
            assert int(r["loop"]) > 100 and int(r["mma"]) > 0, r


def _x(name, cat, ts, dur, **args):
    return dict(ph="X", name=name, cat=cat, ts=ts, dur=dur, args=args)


def test_eager_timeline_splits_a_step_into_lead_in_kernels_and_gaps():
    """bench/eager_timeline.py's trace analysis on a hand-made two-step trace (µs)."""
    sys.path.insert(0, str(BENCH))
    from eager_timeline import step_timelines, summarise

    def one_step(t0, handoff):
        # forward mark 0..100, backward mark 100..400 (CPU); kernels launched inside them.
        return [
            _x("timeline:step", "user_annotation", t0, 400),
            _x("timeline:forward", "user_annotation", t0, 100),
            _x("timeline:backward", "user_annotation", t0 + 100, 300),
            _x("timeline:step", "gpu_user_annotation", t0 + 30, 500),  # ignored: GPU side
            _x("cuLaunchKernelEx", "cuda_driver", t0 + 20, 5, correlation=t0 + 1),
            _x("cuLaunchKernelEx", "cuda_driver", t0 + 60, 5, correlation=t0 + 2),
            _x("cudaLaunchKernel", "cuda_runtime", t0 + 100 + handoff, 5, correlation=t0 + 3),
            _x("fwd_a", "kernel", t0 + 30, 50, correlation=t0 + 1),  # 30..80
            _x("fwd_b", "kernel", t0 + 90, 40, correlation=t0 + 2),  # 90..130: 10 idle
            _x("memset", "gpu_memset", t0 + 100 + handoff + 10, 20, correlation=t0 + 3),
        ]

    events = one_step(0, 100) + one_step(1000, 0) + [dict(ph="s", name="flow")]
    first, second = step_timelines(events)
    assert first["kernels"] == 3 and first["lead_in"] == 30
    assert first["gap_fwd"] == 10 and first["busy"] == 110
    assert first["gap_handoff"] == 80  # backward kernel at 210..230, forward done at 130
    assert first["span"] == 230 and first["bwd_launch"] == 100
    assert first["host_fwd"] == 100 and first["host_bwd"] == 300
    assert second["gap_handoff"] == 0  # its backward kernel (110..130) overlaps the forward's
    assert second["busy"] == 90 and second["span"] == 130  # the memset lies inside fwd_b
    assert summarise([first, second])["gap_handoff"] == 40
    assert [(d["kernel"], d["phase"], d["idle_before"]) for d in first["detail"]] == [
        ("fwd_a", "forward", 30),
        ("fwd_b", "forward", 10),
        ("memset", "backward", 80),
    ]
    assert first["detail"][2]["launch"] == 200 and first["detail"][2]["start"] == 210
    with pytest.raises(ValueError, match="unmatched marks"):
        step_timelines(events[1:])


def test_no_bench_or_scaling_script_writes_into_docs_by_default():
    """Measurements go to the ignored results/ folder; docs/ holds guides only."""
    scripts = sorted(BENCH.glob("*.py")) + sorted((BENCH.parent / "scripts").glob("*"))
    offenders = [
        p.name
        for p in scripts
        if p.is_file() and ('"docs"' in p.read_text() or "--out docs" in p.read_text())
    ]
    assert offenders == []
    assert "results/" in (BENCH.parent / ".gitignore").read_text().split()
