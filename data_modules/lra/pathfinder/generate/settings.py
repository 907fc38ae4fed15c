"""The settings of the Pathfinder generator, and LRA's values for each image size and difficulty.

Where each value comes from (see docs/pathfinder_generator.md for the full table):

* ``drewlinsley/pathfinder`` ``snakes2_wrapper.py``: the ``Args`` defaults (paddle length 5,
  retries 4 / 2, paddle contrasts ``[1.0]``) and the body of the script (``use_single_paddles =
  False``; ``distractor_length = contour_length / 3`` in Python 2, i.e. floor division; the
  number of distractor snakes computed once, before the loop over contour lengths 9 and 14, so
  every difficulty keeps it; contour length 6 for ``curv_baseline``).
* ``google-research/long-range-arena`` ``lra_benchmarks/data/pathfinder.py``: the docstrings of
  ``Pathfinder32`` / ``Pathfinder64`` / ``Pathfinder128`` list the values LRA changed for each
  size. Each size is *drawn* at its own size (``window_size = [32, 32]``, ...), with a 2x
  supersampled pen (``antialias_scale = 2``); nothing is resized after drawing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = [
    "DIFFICULTY_CONTOUR_LENGTH",
    "SIZES",
    "PathfinderSettings",
    "difficulty_name",
    "lra_settings",
]

# LRA's three difficulties: the folder name and the target curves' length in paddles.
DIFFICULTY_CONTOUR_LENGTH = {
    "curv_baseline": 6,
    "curv_contour_length_9": 9,
    "curv_contour_length_14": 14,
}
SIZES = (32, 64, 128)


@dataclass(frozen=True)
class PathfinderSettings:
    """Everything that decides how one image is drawn (lengths in pixels, angles in degrees).

    Attributes:
        size: the image is ``size`` x ``size`` pixels (``window_size``).
        contour_length: paddles in each of the two target curves.
        distractor_length: paddles in each distractor curve.
        num_distractors: distractor curves attempted (``num_distractor_snakes``); one that
            cannot be placed after ``max_snake_retries + 1`` tries is left out.
        paddle_length: length of a paddle (one dash).
        paddle_thickness: pen width; ``paddle_thickness * antialias_scale`` must be whole.
        paddle_margins: one is drawn per image; consecutive paddles of a curve are about
            ``2 * margin`` apart, and other paddles keep about that clearance.
        continuity: how sharply a curve may turn: a turn of ``a`` radians is weighted by
            ``cos(min(a * continuity, pi / 2)) ** 2``.
        padding: width of the border no paddle may enter.
        seed_distance: distance between the first paddles of the two target curves; the first
            one starts at least ``2 * seed_distance`` from every edge.
        marker_radius: radius of the two markers (dots).
        antialias_scale: paddles and markers are drawn this many times larger, then reduced
            with a Lanczos filter.
        snake_contrasts: a target curve's brightness is one of these times a paddle contrast;
            distractor paddles take one of these directly.
        paddle_contrasts: per-paddle factor of target paddles.
        max_snake_retries: extra tries for a distractor curve.
        max_paddle_retries: extra tries for a paddle.
        stop_with_availability: distractors stop once less than this fraction of the image
            is free.
    """

    size: int = 32
    contour_length: int = 14
    distractor_length: int = 4
    num_distractors: int = 5
    paddle_length: int = 2
    paddle_thickness: float = 0.5
    paddle_margins: tuple[int, ...] = (1,)
    continuity: float = 1.0
    padding: int = 1
    seed_distance: int = 7
    marker_radius: float = 1.5
    antialias_scale: int = 2
    snake_contrasts: tuple[float, ...] = (2.0,)
    paddle_contrasts: tuple[float, ...] = (0.75,)
    max_snake_retries: int = 4
    max_paddle_retries: int = 2
    stop_with_availability: float = 0.01

    def __post_init__(self) -> None:
        checks = {
            "size must be >= 8": self.size >= 8,
            "contour_length must be >= 1": self.contour_length >= 1,
            "distractor_length must be >= 1": self.distractor_length >= 1,
            "num_distractors must be >= 0": self.num_distractors >= 0,
            "paddle_length must be >= 1": self.paddle_length >= 1,
            "paddle_thickness must be > 0": self.paddle_thickness > 0,
            "paddle_thickness * antialias_scale must be a whole number": float(
                self.paddle_thickness * self.antialias_scale
            ).is_integer(),
            "paddle_margins must be a non-empty list of integers >= 1": bool(self.paddle_margins)
            and all(isinstance(m, int) and m >= 1 for m in self.paddle_margins),
            "continuity must be > 0": self.continuity > 0,
            "padding must be >= 0": self.padding >= 0,
            "seed_distance must be >= 1 and leave room in the image": 1
            <= self.seed_distance
            < self.size / 4,
            "marker_radius must be > 0": self.marker_radius > 0,
            "antialias_scale must be >= 1": self.antialias_scale >= 1,
            "snake_contrasts and paddle_contrasts must be non-empty and > 0": bool(
                self.snake_contrasts and self.paddle_contrasts
            )
            and min(*self.snake_contrasts, *self.paddle_contrasts) > 0,
            "retries must be >= 0": min(self.max_snake_retries, self.max_paddle_retries) >= 0,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("; ".join(failed) + f" (got {self})")

    def to_dict(self) -> dict:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


# What LRA changed per size (lra_benchmarks/data/pathfinder.py, the builders' docstrings), on top
# of snakes2_wrapper.py's Args defaults. ``distractor_budget`` is the numerator of
# ``num_distractor_snakes = <budget> // distractor_length``, evaluated once with contour length 14.
_LRA_BY_SIZE: dict[int, dict] = {
    32: dict(padding=1, paddle_margins=(1,), paddle_length=2, marker_radius=1.5,
             paddle_thickness=0.5, antialias_scale=2, seed_distance=7, continuity=1.0,
             distractor_budget=20, snake_contrasts=(2.0,), paddle_contrasts=(0.75,)),
    64: dict(padding=1, paddle_margins=(1,), paddle_length=5, marker_radius=2.5,
             paddle_thickness=1.0, antialias_scale=2, seed_distance=12, continuity=1.8,
             distractor_budget=22, snake_contrasts=(0.8,), paddle_contrasts=(1.0,)),
    128: dict(padding=1, paddle_margins=(2, 3), paddle_length=5, marker_radius=3.0,
              paddle_thickness=1.5, antialias_scale=2, seed_distance=20, continuity=1.8,
              distractor_budget=35, snake_contrasts=(0.9,), paddle_contrasts=(1.0,)),
}  # fmt: skip


def lra_settings(size: int = 32, contour_length: int = 14, **overrides) -> PathfinderSettings:
    """LRA's settings for a ``size`` x ``size`` Pathfinder with target curves of ``contour_length``.

    ``distractor_length = contour_length // 3``; the number of distractor curves is the one the
    LRA script computed for contour length 14 (``budget // (14 // 3)``), kept for every
    difficulty as ``snakes2_wrapper.py`` keeps it. ``overrides`` replace any field.
    """
    if size not in _LRA_BY_SIZE:
        raise ValueError(f"size must be one of {SIZES}, got {size}")
    values = dict(_LRA_BY_SIZE[size])
    budget = values.pop("distractor_budget")
    values.update(
        size=size,
        contour_length=contour_length,
        distractor_length=max(contour_length // 3, 1),
        num_distractors=budget // (14 // 3),
    )
    values.update(overrides)
    return PathfinderSettings(**values)


def difficulty_name(contour_length: int) -> str:
    """The release's folder name for target curves of ``contour_length`` paddles."""
    return "curv_baseline" if contour_length == 6 else f"curv_contour_length_{contour_length}"
