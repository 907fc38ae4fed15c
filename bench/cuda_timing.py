"""Timing helpers shared by the GPU benchmarks (``attention_gpu.py``, ``attention_profile.py``,
``far_tune.py``, ``train_throughput.py``)."""

from __future__ import annotations

import statistics

import torch


def median_ms(fn, repeats: int) -> float:
    """Median over ``repeats`` calls of ``fn()`` timed with CUDA events (GPU timeline, ms)."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def graphed(fn):
    """``fn`` captured in a CUDA graph (after a warm-up on a side stream); returns the replay.

    A replay launches the captured kernels without any Python: timing it gives the kernels'
    own time, without the host's launch overhead.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay
