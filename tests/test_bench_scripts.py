"""The GPU benchmark scripts refuse clearly on a machine without CUDA (their numbers come from
the GPU machine; docs/gpu.md has the commands) and parse their options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


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
        ]
    )
    n_values = sum(len(v) for knobs in far_tune.FAR_KNOBS.values() for v in knobs.values())
    n_values += 2 * sum(len(v) for v in far_tune.NEAR_KNOBS.values())
    n_values += sum(len(v) for v in far_tune.BLEND_KNOBS.values())
    assert len(todo) == len(defaults) + n_values


def test_host_python_cpu_runs_without_a_gpu(tmp_path):
    """bench/host_python_cpu.py stubs the kernels out and times our host code on the CPU."""
    pytest.importorskip("triton", reason="needs triton (extra kernels-cpu)")
    run = subprocess.run(
        [sys.executable, str(BENCH / "host_python_cpu.py"), "--steps", "3", "--top", "3"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "us of host per step" in run.stdout
