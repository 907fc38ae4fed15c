"""The Pathfinder generator on one CPU core: time per image, and positives against negatives.

    python bench/pathfinder_generator.py [--size 32] [--count 2000] [--seed 0]
        [--csv results/pathfinder_generator_32.csv]

Draws ``count`` images in this process (no files), timing each (CPU and wall clock), then
prints per statistic the positives' and negatives' means, their difference in standard
deviations and Welch's z, and for the marker distance the accuracy of the best single
threshold (how far a classifier could get on it alone). Also counts, on each curve's own
pixels, whether the label is read back right (``pathfinder.generate.check``).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_modules.lra.pathfinder.generate.check import components, joins_markers  # noqa: E402
from data_modules.lra.pathfinder.generate.draw import draw_sample  # noqa: E402
from data_modules.lra.pathfinder.generate.settings import lra_settings  # noqa: E402
from data_modules.lra.pathfinder.generate.write import image_rng  # noqa: E402


def best_threshold_accuracy(values: np.ndarray, labels: np.ndarray) -> float:
    """The best accuracy of predicting ``label = values > t`` (or ``<= t``) over thresholds t."""
    sorted_labels = labels[np.argsort(values, kind="stable")]
    positives_below = np.concatenate([[0], np.cumsum(sorted_labels)])  # among the k smallest
    k = np.arange(len(values) + 1)
    right = (k - positives_below) + (labels.sum() - positives_below)  # k smallest called 0
    return float(np.maximum(right, len(values) - right).max() / len(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, choices=(32, 64, 128))
    parser.add_argument("--contour-length", type=int, default=14, choices=(6, 9, 14))
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args(argv)
    settings = lra_settings(args.size, args.contour_length)
    draw_sample(settings, np.random.default_rng(args.seed))  # fill the per-process caches
    cpu, wall = time.process_time(), time.perf_counter()
    samples = [draw_sample(settings, image_rng(args.seed, i), keep_curves=True)
               for i in range(args.count)]  # fmt: skip
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    images = np.stack([s.image for s in samples]).astype(np.float64)
    labels = np.array([s.label for s in samples])
    stats = {
        "ink (mean pixel)": images.mean(axis=(1, 2)),
        "visible ink (> 64) pieces": np.array(
            [components(image > 64).max() for image in images], dtype=np.float64
        ),
        "marker distance": np.array([np.hypot(*np.subtract(*s.markers)) for s in samples]),
    }
    rows = [("images", args.count, "", "", "", ""),
            ("positives", int(labels.sum()), "", "", "", ""),
            ("cpu ms per image", round(cpu / args.count * 1000, 2), "", "", "", ""),
            ("wall ms per image", round(wall / args.count * 1000, 2), "", "", "", "")]  # fmt: skip
    for name, values in stats.items():
        pos, neg = values[labels == 1], values[labels == 0]
        z = (pos.mean() - neg.mean()) / np.sqrt(pos.var() / len(pos) + neg.var() / len(neg))
        rows.append((name, "", round(pos.mean(), 3), round(neg.mean(), 3),
                     round((pos.mean() - neg.mean()) / values.std(), 3), round(z, 2)))  # fmt: skip
    for axis, name in ((2, "row profile"), (1, "column profile")):
        profile = images.mean(axis=axis)
        pos, neg = profile[labels == 1], profile[labels == 0]
        z = (pos.mean(0) - neg.mean(0)) / np.sqrt(pos.var(0) / len(pos) + neg.var(0) / len(neg))
        rows.append((f"{name} (max |z| of {profile.shape[1]})", "", "", "", "",
                     round(float(np.abs(z).max()), 2)))  # fmt: skip
    accuracy = best_threshold_accuracy(stats["marker distance"], labels)
    rows.append(("marker distance: best threshold accuracy", round(accuracy, 4), "", "", "", ""))
    right = sum(
        any(joins_markers(c, s.markers, s.margin + 1) for c in s.curves) == bool(s.label)
        for s in samples
    )
    rows.append(("label read back from each curve's pixels", f"{right}/{args.count}", "", "", "",
                 ""))  # fmt: skip
    header = ("quantity", "value", "positives", "negatives", "diff / sd", "z")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as handle:
            csv.writer(handle).writerows([header, *rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
