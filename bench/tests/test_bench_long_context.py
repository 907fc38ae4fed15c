"""bench/long_context.py end to end at tiny size on the CPU (the GPU runs the real sizes), each run as its command line would:
every requested point gets a row with a finite loss, the table and plot files are written."""

from __future__ import annotations

import csv
import importlib
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--models", "tiny", "--vocab-size", "500", "--cutoffs", "50", "100",
        "300"]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny ops: on the shared 2-core CI box threads only add overhead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(script, args, tmp_path):
    """``python bench/<script> ARGS --out-dir tmp_path``, in this process (no second torch
    import)."""
    sys.path.insert(0, str(BENCH))
    try:
        module = importlib.import_module(script.removesuffix(".py"))
    finally:
        sys.path.remove(str(BENCH))
    return module.main([*args, "--out-dir", str(tmp_path)])


def test_long_context_table(tmp_path):
    args = [*TINY, "--kinds", "fmm2_band20", "softmax", "--contexts", "16", "32", "--tokens",
            "64", "--steps", "1", "--warmup", "1", "--compile", "none"]  # fmt: skip
    _run("long_context.py", args, tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "long_context.csv")))
    points = {(r["kind"], r["memory"], r["context"], r["batch"]) for r in rows}
    assert points == {
        (kind, memory, context, batch)
        for kind in ("fmm2_band20", "softmax")
        for memory in ("on",)
        for context, batch in (("16", "4"), ("32", "2"))
    }
    for r in rows:
        assert r["note"] == "" and float(r["tokens_per_s"]) > 0 and 0 < float(r["loss"]) < 20
    table = (tmp_path / "long_context.md").read_text()
    assert table.count("| tiny |") == 4
    pytest.importorskip("matplotlib")
    assert (tmp_path / "long_context.png").stat().st_size > 0


def test_long_context_loss_curve(tmp_path):
    args = [*TINY, "--loss-curve", "--loss-steps", "3", "--contexts", "24", "--tokens", "48",
            "--period", "8", "--compile", "none"]  # fmt: skip
    _run("long_context.py", args, tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "long_context_loss.csv")))
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert all(0 < float(r["loss"]) < 20 for r in rows)


def test_generate_throughput(tmp_path):
    """Every point decodes; the FMM state keeps its size whatever the prompt, the softmax
    cache grows with it (and with the batch)."""
    args = [*TINY, "--kinds", "fmm2_band20", "softmax", "--prompts", "8", "40", "--batches",
            "1", "3", "--new-tokens", "3", "--warmup", "1", "--compile", "off"]  # fmt: skip
    _run("generate_throughput.py", args, tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "generate_throughput.csv")))
    assert len(rows) == 8 and all(r["note"] == "" and float(r["tokens_per_s"]) > 0 for r in rows)
    state = {(r["kind"], r["prompt"], r["batch"]): float(r["state_mib"]) for r in rows}
    for batch in ("1", "3"):
        assert state["fmm2_band20", "8", batch] == state["fmm2_band20", "40", batch]
        assert state["softmax", "40", batch] > 2 * state["softmax", "8", batch]
    assert state["softmax", "40", "3"] == pytest.approx(3 * state["softmax", "40", "1"], rel=0.01)
    assert (tmp_path / "generate_throughput.md").read_text().count("| tiny |") == 8


def test_generate_throughput_compiled_step(tmp_path):
    """``--compile both``: the eager and the compiled step, one row each."""
    args = [*TINY, "--kinds", "fmm2_band20", "--prompts", "12", "--batches", "2",
            "--new-tokens", "3", "--warmup", "1", "--compile", "both"]  # fmt: skip
    _run("generate_throughput.py", args, tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "generate_throughput.csv")))
    assert [r["compile"] for r in rows] == ["off", "on"]
    assert all(r["note"] == "" and float(r["tokens_per_s"]) > 0 for r in rows)
    assert rows[0]["state_mib"] == rows[1]["state_mib"]


def test_memory_profile_attributes_saved_tensors(tmp_path):
    """Without the memory options every part keeps tensors for backward; with them the blocks
    keep exactly their inputs (depth x tokens x dim float32) and nothing inside."""
    base = ["--model", "tiny", "--device", "cpu", "--vocab-size", "500", "--cutoffs", "50",
            "100", "300", "--contexts", "16", "32", "--tokens", "64"]  # fmt: skip
    rows = {}
    for name, extra in (("plain", []), ("light", ["--checkpoint-blocks", "all"])):
        assert _run("memory_profile.py", [*base, *extra], tmp_path / name) == 0
        rows[name] = list(csv.DictReader(open(tmp_path / name / "memory_profile.csv")))
    for plain, light in zip(rows["plain"], rows["light"], strict=True):
        for part in ("attention", "ffn", "norms"):
            assert float(plain[part]) > 0 and float(light[part]) == 0
        assert float(plain["blocks (checkpoint inputs)"]) == 0
        inputs = 2 * 64 * 16 * 4 / 2**20  # depth 2, 64 tokens, dim 16, float32
        assert float(light["blocks (checkpoint inputs)"]) == pytest.approx(inputs, abs=0.001)
        assert float(light["saved_total"]) < float(plain["saved_total"]) / 3
    assert _run("memory_profile.py", ["--config", str(tmp_path / "none.yaml"), "--device",
                                      "cpu"], tmp_path) == 2  # fmt: skip
