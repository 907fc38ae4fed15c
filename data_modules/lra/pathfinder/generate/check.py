"""Reading a Pathfinder label back from pixels: flood fill over one dashed curve's ink.

A curve is a chain of dashes ``2 * margin`` apart (give or take the rounding of each end to a
pixel). Growing its ink by a disk of radius ``margin + 1`` bridges every gap and joins the whole
curve into one 8-connected component. Two *different* curves may come as close as two dashes of
one curve (the generator only keeps their margin zones apart), so no bridging distance applied
to the finished image can tell "same curve" from "neighbouring curve": the check runs on each
curve's own drawing (``draw_sample(..., keep_curves=True)``), where nothing else can be bridged.
"""

from __future__ import annotations

import numpy as np

__all__ = ["components", "grow", "joins_markers"]


def components(binary: np.ndarray) -> np.ndarray:
    """8-connected component labels of a 2-d ``binary`` (0 = background, then 1, 2, ...)."""
    height, width = binary.shape
    labels = np.zeros(binary.shape, dtype=np.int32)
    current = 0
    for y, x in zip(*np.nonzero(binary), strict=True):
        if labels[y, x]:
            continue
        current += 1
        labels[y, x] = current
        stack = [(y, x)]
        while stack:
            a, b = stack.pop()
            for u in (a - 1, a, a + 1):
                for v in (b - 1, b, b + 1):
                    if 0 <= u < height and 0 <= v < width and binary[u, v] and not labels[u, v]:
                        labels[u, v] = current
                        stack.append((u, v))
    return labels


def grow(binary: np.ndarray, radius: int) -> np.ndarray:
    """``binary`` dilated by a disk of ``radius`` pixels (outside the image counts as empty)."""
    out = binary.astype(bool)
    height, width = binary.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if 0 < dy * dy + dx * dx <= radius * radius:
                shifted = np.zeros_like(out)
                shifted[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = binary[
                    max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
                ]
                out |= shifted
    return out


def joins_markers(curve: np.ndarray, markers: tuple, gap_radius: int) -> bool:
    """Do both markers lie on this curve, in one piece once its dash gaps are bridged?

    A marker is centred on the end pixel of a paddle, where the stroke itself lies: it is on a
    curve where that curve's drawing reaches half its peak there (measured: at least 0.6 on the
    marker's own curve; at most 0.27 on any other curve, whose anti-aliased fringe may pass a
    pixel or two away). Ink, for the flood fill: pixels above a tenth of the curve's peak.
    ``gap_radius`` is ``margin + 1``.
    """
    peak = curve.max()
    (y1, x1), (y2, x2) = markers
    if not (curve[y1, x1] >= 0.5 * peak and curve[y2, x2] >= 0.5 * peak):
        return False
    ink = curve > 0.1 * peak
    labels = components(grow(ink, gap_radius))
    return bool(labels[y1, x1] == labels[y2, x2])
