"""Draw a grid of generated Pathfinder-32 and Path-X (128) images, positives and negatives.

    python scripts/pathfinder_examples.py [--out FILE] [--seed 0]   # results/pathfinder_examples.png

Rows: Pathfinder-32 label 1, label 0 (shown 4x larger, nearest neighbour, so each pixel stays
visible), Path-X label 1, label 0 (native size). Images are the generator's output as written
to disk, nothing retouched. Needs only Pillow.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_modules.lra.pathfinder.generate.draw import draw_sample  # noqa: E402
from data_modules.lra.pathfinder.generate.settings import lra_settings  # noqa: E402
from data_modules.lra.pathfinder.generate.write import image_rng  # noqa: E402

TILE, GAP, CAPTION, PER_ROW = 128, 6, 150, 4


def first_of_each_label(size: int, seed: int, per_label: int) -> dict[int, list[Image.Image]]:
    """The first ``per_label`` images of each label of the set made with ``seed``."""
    settings = lra_settings(size, 14)
    found: dict[int, list[Image.Image]] = {0: [], 1: []}
    index = 0
    while min(len(v) for v in found.values()) < per_label:
        sample = draw_sample(settings, image_rng(seed, index))
        if len(found[sample.label]) < per_label:
            image = Image.fromarray(sample.image, mode="L")
            found[sample.label].append(image.resize((TILE, TILE), Image.Resampling.NEAREST))
        index += 1
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/pathfinder_examples.png"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = []
    for size, name in ((32, "Pathfinder-32"), (128, "Path-X (128)")):
        found = first_of_each_label(size, args.seed, PER_ROW)
        rows += [(f"{name}\nlabel 1\n(connected)", found[1]), (f"{name}\nlabel 0", found[0])]
    width = CAPTION + PER_ROW * (TILE + GAP)
    height = len(rows) * (TILE + GAP) + GAP
    canvas = Image.new("L", (width, height), 96)
    draw = ImageDraw.Draw(canvas)
    for r, (caption, images) in enumerate(rows):
        top = GAP + r * (TILE + GAP)
        draw.multiline_text((8, top + TILE // 2 - 20), caption, fill=255)
        for c, image in enumerate(images):
            canvas.paste(image, (CAPTION + c * (TILE + GAP), top))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)
    print(f"wrote {args.out} ({width}x{height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
