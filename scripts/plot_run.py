"""Plot a run's TensorBoard scalars into one PNG: losses, accuracy and the learned blend weights.

    python scripts/plot_run.py logs/quickstart/version_0    # -> results/quickstart_version_0.png

Needs matplotlib (`pip install -e '.[plots]'`). Reads the event files with TensorBoard's own
reader, so what it draws is exactly what `tensorboard --logdir logs` shows.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# blend/encoder.blocks.<layer>.attn.blend.<field>.weight[/<head>]
_BLEND = re.compile(r"blend/.*blocks\.(\d+)\.attn\.blend\.(.+?)\.weight(?:/(\w+))?$")


def read_scalars(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """tag -> (steps, values) of every scalar in the run's event files."""
    events = sorted(run_dir.glob("events.out.tfevents.*"))
    if not events:
        raise SystemExit(f"no TensorBoard event files in {run_dir}")
    scalars: dict[str, tuple[list[int], list[float]]] = {}
    for path in events:
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            points = accumulator.Scalars(tag)
            steps, values = scalars.setdefault(tag, ([], []))
            steps.extend(p.step for p in points)
            values.extend(p.value for p in points)
    return scalars


def plot(scalars: dict[str, tuple[list[int], list[float]]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blend = defaultdict(dict)  # layer -> label -> series
    for tag, series in scalars.items():
        match = _BLEND.match(tag)
        if match:
            layer, field, head = match.groups()
            label = field.replace("far.", "far ") + (f", head {head}" if head else "")
            blend[int(layer)][label] = series
    panels = 2 + len(blend)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4))
    for tag in ("train/loss", "val/loss"):
        if tag in scalars:
            axes[0].plot(*scalars[tag], label=tag, marker="o" if tag.startswith("val") else None)
    axes[0].set(title="loss", xlabel="step")
    for tag in ("train/acc", "val/acc"):
        if tag in scalars:
            axes[1].plot(*scalars[tag], label=tag, marker="o" if tag.startswith("val") else None)
    axes[1].set(title="accuracy", xlabel="step")
    for axis, layer in zip(axes[2:], sorted(blend), strict=True):
        for label, series in sorted(blend[layer].items()):
            axis.plot(*series, label=label)
        axis.set(title=f"blend weights, layer {layer}", xlabel="step")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def default_out(run_dir: Path) -> Path:
    """results/<experiment>_<version>.png for a run folder logs/.../<experiment>/version_<n>."""
    name = run_dir.resolve().name
    if name.startswith("version_"):
        name = f"{run_dir.resolve().parent.name}_{name}"
    return Path(__file__).resolve().parents[1] / "results" / f"{name}.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder holding events.out.tfevents.*")
    parser.add_argument("--out", type=Path, default=None, help="PNG to write")
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    out = args.out or default_out(args.run_dir)
    plot(read_scalars(args.run_dir), out, args.title or str(args.run_dir))


if __name__ == "__main__":
    main()
