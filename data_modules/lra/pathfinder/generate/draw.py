"""Drawing one Pathfinder image: two target curves, distractor curves and two markers.

The algorithm of ``snakes2.py`` (Linsley et al., 2018; Kim et al., 2020), written afresh:

1. Draw the label (0 or 1, equally likely) and a paddle margin ``m``.
2. **Two target curves.** The first paddle of curve A starts at a free pixel at least
   ``2 * seed_distance`` from every edge, at a whole-degree orientation; the first paddle of
   curve B starts ``seed_distance`` away from it in a whole-degree direction. The two curves then
   grow in turn, one paddle each per step, to ``contour_length`` paddles (see *growing* below).
   If either gets stuck, both are drawn again.
3. **Distractor curves**: ``num_distractors`` curves of ``distractor_length`` paddles, each
   started at a free pixel of the whole image; a curve that gets stuck is drawn again, at most
   ``max_snake_retries`` more times, then left out.
4. **Markers**: one at the free end of curve A or B (the first paddle's start, chosen by a coin);
   the other at the far end of the *same* curve for label 1, of the *other* curve for label 0.
   Both labels thus mark one start and one far end of the two target curves: only whether they
   belong to one curve differs.
5. The image, ``max`` of every drawing, is scaled so its brightest pixel is 255 (``bytescale``).

*Growing* a curve by one paddle: the last paddle ended ``m`` short of its pivot; the next pivot
lies ``paddle_length + 2m`` further along the last orientation, and the next paddle's far end is
drawn among the pixels on the circle of radius ``paddle_length + m`` around it, each weighted by
how little the curve turns (``cos(min(turn * continuity, pi / 2)) ** 2``) and by how free the
pixel is (1 - the occupancy grown by a disk of radius ``m``); the paddle is kept if its margin
zone does not overlap other paddles' (``occupancy + zone < 1.8``), else drawn again (at most
``max_paddle_retries`` more times). A curve is thus a chain of dashes ``paddle_length`` long with
gaps of about ``2m``, and every other paddle keeps roughly that clearance.

Each paddle is drawn ``antialias_scale`` times larger with Pillow's line, reduced with Lanczos;
its margin zone is the large drawing grown by a disk of radius ``m * antialias_scale``, reduced
the same way. Both depend only on the orientation, so they are cached.

Differences from ``snakes2.py`` (none changes the law of the label): a first paddle's free
pixels are found with its zone centred on the pixel (the original looks one pixel down and right
of it, through an off-centre structuring element); a new paddle of a target curve must also
clear the newest paddle of the other target curve, and the last paddle of *both* is marked
occupied before distractors are drawn (the original checks neither, so the growing ends of the
two target curves could cross, and distractors could touch curve A's far end: a negative could
then show the two markers joined); ``use_single_paddles`` (LRA: off) is not implemented.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from data_modules.lra.pathfinder.generate.settings import PathfinderSettings

__all__ = ["Sample", "bytescale", "draw_sample"]

_LANCZOS = Image.Resampling.LANCZOS
_FREE = 0.3  # a pixel whose occupancy is at most this is free (the original's ceil(x - 0.3))
_OVERLAP = 1.8  # a paddle is rejected where occupancy + its zone reaches this


@dataclass
class Sample:
    """One drawn image.

    Attributes:
        image: ``(size, size)`` uint8, black background.
        label: 1 if the two markers are the two ends of one curve, else 0.
        markers: the two marker centres ``((row, col), (row, col))``.
        curves: with ``keep_curves``, each curve's own drawing before scaling, ``(size, size)``
            float32: the two target curves first, then each distractor that was drawn.
        margin: the paddle margin drawn for this image.
    """

    image: np.ndarray
    label: int
    markers: tuple[tuple[int, int], tuple[int, int]]
    margin: int
    curves: list[np.ndarray] = field(default_factory=list)


def bytescale(values: np.ndarray) -> np.ndarray:
    """``values`` mapped linearly onto 0-255 (min to 0, max to 255), rounded: uint8."""
    low, high = float(values.min()), float(values.max())
    scale = 255.0 / (high - low) if high > low else 1.0
    return (np.clip((values - low) * scale, 0, 255) + 0.5).astype(np.uint8)


def _disk_offsets(radius: float) -> np.ndarray:
    """``(k, 2)`` offsets ``(dy, dx)`` with ``dy**2 + dx**2 <= radius**2``."""
    r = int(radius)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    inside = dy**2 + dx**2 <= radius**2
    return np.stack([dy[inside], dx[inside]], axis=1)


def _dilate(source: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``out[y, x] = max(source[y + dy, x + dx])`` over ``offsets``; outside counts as 0."""
    if len(offsets) == 0:
        return source.copy()
    pad = int(np.abs(offsets).max())
    height, width = source.shape
    padded = np.zeros((height + 2 * pad, width + 2 * pad), dtype=source.dtype)
    padded[pad : pad + height, pad : pad + width] = source
    out = np.zeros_like(source)
    for dy, dx in offsets:
        np.maximum(out, padded[pad + dy : pad + dy + height, pad + dx : pad + dx + width], out=out)
    return out


def _translate(point: tuple[int, int], angle: float, distance: float) -> tuple[int, int]:
    """The pixel ``distance`` from ``point`` along ``angle`` (rounded up, as snakes.py does)."""
    return (
        math.ceil(point[0] + distance * math.sin(angle)),
        math.ceil(point[1] + distance * math.cos(angle)),
    )


def _flip(angle: float) -> float:
    return angle + math.pi if angle < 0 else angle - math.pi


@dataclass(frozen=True)
class _Stamp:
    ink: np.ndarray  # (2R+1, 2R+1) float32 in [0, 1], the paddle starting at the centre
    zone: np.ndarray  # same shape: the paddle grown by the margin
    core: np.ndarray  # (k, 2) offsets from the centre where the zone is exactly 1


class _Geometry:
    """What depends only on the settings and the margin, computed once per process.

    Paddle drawings by orientation; the circle of possible next heads around a pivot, with
    their angles, the pixels within ``margin`` of each, and the turn weights by last angle.
    """

    def __init__(self, settings: PathfinderSettings, margin: int) -> None:
        self.size, self.margin, self.continuity = settings.size, margin, settings.continuity
        self.length = settings.paddle_length
        self.aa = settings.antialias_scale
        self.width = round(settings.paddle_thickness * self.aa)
        self.radius = settings.paddle_length + math.ceil(settings.paddle_thickness) + margin
        self.zone_disk = _disk_offsets(margin * self.aa)
        self.stamps: dict[float, _Stamp] = {}
        # The next far end: the pixels hit by points one pixel of arc apart on the circle of
        # radius ``length + margin`` around the pivot, truncated to integers (as snakes.py's
        # ``astype(int)``; coordinates are >= 0 there, so this is the floor). Relative to an
        # integer pivot they never change, nor do their angles seen from the pivot.
        step = settings.paddle_length + margin
        angles = np.deg2rad(np.arange(0, 360, 360 / (2 * step * np.pi)))
        circle = np.stack([step * np.sin(angles), step * np.cos(angles)], axis=1)
        self.heads = np.unique(np.floor(circle).astype(np.int64), axis=0)  # (k, 2)
        self.head_angles = np.arctan2(self.heads[:, 0], self.heads[:, 1])
        # each head with the disk of radius ``margin`` around it: (k, disk, 2)
        self.heads_grown = self.heads[:, None, :] + _disk_offsets(margin)[None, :, :]
        self.candidates: dict[tuple[int, int], tuple | None] = {}
        self.turns: dict[float, np.ndarray] = {}
        self.free: dict[tuple, np.ndarray] = {}

    def stamp(self, angle: float) -> _Stamp:
        stamp = self.stamps.get(angle)
        if stamp is None:
            stamp = self.stamps[angle] = self._draw(angle)
        return stamp

    def around(self, pivot: tuple[int, int]) -> tuple | None:
        """The next heads around ``pivot`` inside the image, or ``None`` if none is.

        Returns ``(which, heads, disks)``: indices into the circle, the heads ``(k, 2)``, and
        for each head the pixels within ``margin`` as indices into the occupancy framed by
        ``margin`` and flattened (``_Painter.framed``).
        """
        if pivot in self.candidates:
            return self.candidates[pivot]
        n, m = self.size, self.margin
        heads = self.heads + pivot
        which = np.flatnonzero(((heads >= 0) & (heads < n)).all(axis=1))
        found = None
        if which.size:
            grown = self.heads_grown[which] + (pivot[0] + m, pivot[1] + m)
            disks = (grown[..., 0] * (n + 2 * m) + grown[..., 1]).astype(np.int32)
            found = (which, heads[which], disks)
        self.candidates[pivot] = found
        return found

    def turn_weights(self, last_angle: float) -> np.ndarray:
        """``cos(min(turn * continuity, pi / 2)) ** 2`` for every head of the circle."""
        weights = self.turns.get(last_angle)
        if weights is None:
            turn = np.abs(self.head_angles - last_angle)
            turn = np.minimum(np.minimum(turn, 2 * np.pi - turn) * self.continuity, np.pi / 2)
            weights = self.turns[last_angle] = np.maximum(np.cos(turn), 0) ** 2
        return weights

    def _draw(self, angle: float) -> _Stamp:
        radius, aa = self.radius, self.aa
        big, centre = 2 * radius * aa + 1, radius * aa
        head = _translate((centre, centre), angle, self.length * aa)
        line = Image.new("L", (big, big), 0)
        ImageDraw.Draw(line).line(
            [(centre, centre), (head[1], head[0])], fill=255, width=self.width
        )
        small = (2 * radius + 1, 2 * radius + 1)
        ink = np.asarray(line.resize(small, _LANCZOS), dtype=np.float32) / 255
        grown = _dilate(np.asarray(line), self.zone_disk)
        zone_u8 = np.asarray(Image.fromarray(grown).resize(small, _LANCZOS))
        zone = zone_u8.astype(np.float32) / 255
        core = np.argwhere(zone_u8 == 255) - radius
        return _Stamp(ink, zone, core)


_GEOMETRY: dict[tuple, _Geometry] = {}  # per process


def _geometry(settings: PathfinderSettings, margin: int) -> _Geometry:
    key = (settings.size, settings.paddle_length, settings.paddle_thickness,
           settings.antialias_scale, settings.continuity, margin)  # fmt: skip
    if key not in _GEOMETRY:
        _GEOMETRY[key] = _Geometry(settings, margin)
    return _GEOMETRY[key]


@dataclass
class _Paddle:
    rows: slice  # where it lies in the image
    cols: slice
    ink: np.ndarray  # its drawing there (before contrast)
    zone: np.ndarray  # its margin zone there
    contrast: float


def _crop(paddle: _Paddle, rows: slice, cols: slice) -> np.ndarray:
    """``paddle``'s zone on the image window ``rows`` x ``cols`` (0 where it does not reach)."""
    out = np.zeros((rows.stop - rows.start, cols.stop - cols.start), dtype=np.float32)
    r0, r1 = max(rows.start, paddle.rows.start), min(rows.stop, paddle.rows.stop)
    c0, c1 = max(cols.start, paddle.cols.start), min(cols.stop, paddle.cols.stop)
    if r0 < r1 and c0 < c1:
        out[r0 - rows.start : r1 - rows.start, c0 - cols.start : c1 - cols.start] = paddle.zone[
            r0 - paddle.rows.start : r1 - paddle.rows.start,
            c0 - paddle.cols.start : c1 - paddle.cols.start,
        ]
    return out


@dataclass
class _Curve:
    pivot: tuple[int, int]
    angle: float
    last: _Paddle
    tip: tuple[int, int]  # the free end of the newest paddle
    paddles: list[_Paddle]  # all of them, drawn once the curve is complete

    def draw(self, size: int) -> np.ndarray:
        """The curve's own drawing, ``(size, size)`` float32."""
        canvas = np.zeros((size, size), dtype=np.float32)
        for p in self.paddles:
            np.maximum(canvas[p.rows, p.cols], p.ink * p.contrast, out=canvas[p.rows, p.cols])
        return canvas


class _Painter:
    """The state of one image being drawn: occupancy and the growing of curves."""

    def __init__(self, settings: PathfinderSettings, margin: int, rng: np.random.Generator):
        self.s, self.margin, self.rng = settings, margin, rng
        self.n = n = settings.size
        self.geo = _geometry(settings, margin)
        # Occupancy: 1 on the border of width ``padding``, then each kept paddle's zone. Kept
        # inside a zero frame of width ``margin`` so that a disk around any pixel can be read
        # without bounds checks (outside the image counts as free, as in cv2.dilate).
        self.framed = np.zeros((n + 2 * margin, n + 2 * margin), dtype=np.float32)
        self.occupied = self.framed[margin : margin + n, margin : margin + n]
        p = settings.padding
        if p:
            self.occupied[:p, :] = self.occupied[-p:, :] = 1
            self.occupied[:, :p] = self.occupied[:, -p:] = 1

    def inside(self, *points: tuple[int, int]) -> bool:
        return all(0 <= y < self.n and 0 <= x < self.n for y, x in points)

    def window(self, start: tuple[int, int]) -> tuple[slice, slice, slice, slice]:
        r, n = self.geo.radius, self.n
        y0, x0 = start[0] - r, start[1] - r
        rows = slice(max(y0, 0), min(y0 + 2 * r + 1, n))
        cols = slice(max(x0, 0), min(x0 + 2 * r + 1, n))
        return (
            rows,
            cols,
            slice(rows.start - y0, rows.stop - y0),
            slice(cols.start - x0, cols.stop - x0),
        )

    def place(self, start: tuple[int, int], angle: float, contrast: float) -> _Paddle:
        """The paddle starting at ``start`` with ``angle``, cut to the image."""
        stamp = self.geo.stamp(angle)
        rows, cols, srows, scols = self.window(start)
        return _Paddle(rows, cols, stamp.ink[srows, scols], stamp.zone[srows, scols], contrast)

    def occupy(self, paddle: _Paddle) -> None:
        view = self.occupied[paddle.rows, paddle.cols]
        np.maximum(view, paddle.zone, out=view)

    def choose(self, options) -> float:
        return options[int(self.rng.integers(len(options)))] if len(options) > 1 else options[0]

    def random_angle(self) -> float:
        return int(self.rng.integers(-180, 180)) * math.pi / 180

    def first_paddle(
        self, blocked: Callable[[], np.ndarray], fixed: str | None = None
    ) -> tuple[tuple[int, int], float, tuple[int, int]] | None:
        """A first paddle whose solid zone avoids ``blocked()``: ``(start, angle, pivot)``.

        ``fixed`` names a ``blocked()`` that is the same in every image (its free pixels are
        then cached by angle).
        """
        length, margin = self.s.paddle_length, self.margin
        mask = None
        for _ in range(self.s.max_paddle_retries + 1):
            angle = self.random_angle()
            free = self.geo.free.get((fixed, angle)) if fixed else None
            if free is None:
                mask = blocked() if mask is None else mask
                free = np.flatnonzero(~_dilate(mask, self.geo.stamp(angle).core))
                if fixed:
                    self.geo.free[(fixed, angle)] = free
            if free.size == 0:
                return None
            start = divmod(int(free[self.rng.integers(free.size)]), self.n)
            head = _translate(start, angle, length)
            pivot = _translate(head, angle + math.pi, length + margin)
            if self.inside(head, pivot):
                return start, angle, pivot
        return None

    def grow(self, curve: _Curve, contrast: float, other: _Paddle | None = None) -> _Curve | None:
        """Add one paddle to ``curve`` (see the module docstring); ``None`` when stuck.

        ``other``: a paddle not yet marked occupied that the new one must not overlap either
        (the newest paddle of the other target curve).
        """
        s, geo = self.s, self.geo
        pivot = _translate(curve.pivot, curve.angle, s.paddle_length + 2 * self.margin)
        candidates = geo.around(pivot)
        if candidates is None:
            return None
        which, heads, disks = candidates
        near = self.framed.ravel()[disks].max(axis=1)
        cumulative = np.cumsum((1 - near) * geo.turn_weights(curve.angle)[which])
        total = float(cumulative[-1])
        if total < 1e-4:
            return None
        for _ in range(s.max_paddle_retries + 1):
            # the first head whose cumulative weight exceeds a uniform draw in [0, total)
            draw = self.rng.random() * total
            index = min(int(np.searchsorted(cumulative, draw, "right")), len(heads) - 1)
            head = (int(heads[index, 0]), int(heads[index, 1]))
            angle = float(geo.head_angles[which[index]])
            stamp = geo.stamp(_flip(angle))
            rows, cols, srows, scols = self.window(head)
            region = self.occupied[rows, cols]
            if other is not None:
                region = np.maximum(region, _crop(other, rows, cols))
            zone = stamp.zone[srows, scols]
            if (region + zone).max() < _OVERLAP:
                break
        else:
            return None
        paddle = _Paddle(rows, cols, stamp.ink[srows, scols], zone, contrast)
        self.occupy(curve.last)
        curve.paddles.append(paddle)
        return _Curve(pivot, angle, paddle, head, curve.paddles)

    def targets(self) -> tuple[list[_Curve], list[tuple[int, int]]] | None:
        """The two target curves and their start tips, or ``None`` when stuck."""
        s, rng = self.s, self.rng
        mus = list(rng.permutation(np.array(s.snake_contrasts * 2)))[:2]
        first = self.first_paddle(
            self._target_blocked, fixed=f"target-{s.seed_distance}-{s.padding}"
        )
        if first is None:
            return None
        start_a, angle_a, pivot_a = first
        paddle_a = self.place(start_a, angle_a, self.choose(s.paddle_contrasts) * mus[0])
        contrast_b = self.choose(s.paddle_contrasts) * mus[1]
        for _ in range(s.max_paddle_retries + 1):
            angle_b = self.random_angle()
            direction = int(rng.integers(0, 360)) * math.pi / 180
            start_b = (
                int(np.round(start_a[0] + s.seed_distance * math.sin(direction))),
                int(np.round(start_a[1] + s.seed_distance * math.cos(direction))),
            )
            head_b = _translate(start_b, angle_b, s.paddle_length)
            pivot_b = _translate(head_b, angle_b + math.pi, s.paddle_length + self.margin)
            if self.inside(head_b, pivot_b):
                break
        else:
            return None
        paddle_b = self.place(start_b, angle_b, contrast_b)
        curves = [
            _Curve(pivot_a, angle_a, paddle_a, start_a, [paddle_a]),
            _Curve(pivot_b, angle_b, paddle_b, start_b, [paddle_b]),
        ]
        for _ in range(s.contour_length - 1):
            contrast = self.choose(s.paddle_contrasts)
            for i in range(2):
                grown = self.grow(curves[i], contrast * mus[i], curves[1 - i].last)
                if grown is None:
                    return None
                curves[i] = grown
        for curve in curves:
            self.occupy(curve.last)
        return curves, [start_a, start_b]

    def _target_blocked(self) -> np.ndarray:
        """Where the first target paddle may not go: occupied, or within ``2 * seed_distance``
        of an edge."""
        band = 2 * self.s.seed_distance
        blocked = self.occupied > _FREE
        blocked[:band, :] = blocked[-band:, :] = True
        blocked[:, :band] = blocked[:, -band:] = True
        return blocked

    def distractor(self) -> _Curve | None:
        """One distractor curve (occupancy updated), or ``None`` when stuck."""
        s = self.s
        if np.mean(self.occupied <= _FREE) < s.stop_with_availability:
            return None
        saved = self.occupied.copy()
        first = self.first_paddle(self._distractor_blocked)
        if first is None:
            return None
        start, angle, pivot = first
        paddle = self.place(start, angle, self.choose(s.snake_contrasts))
        curve = _Curve(pivot, angle, paddle, start, [paddle])
        for _ in range(s.distractor_length - 1):
            grown = self.grow(curve, self.choose(s.snake_contrasts))
            if grown is None:
                self.occupied[...] = saved
                return None
            curve = grown
        self.occupy(curve.last)
        return curve

    def _distractor_blocked(self) -> np.ndarray:
        blocked = self.occupied > _FREE
        blocked[0, :] = blocked[-1, :] = blocked[:, 0] = blocked[:, -1] = True
        return blocked

    def marker(self, centre: tuple[int, int]) -> np.ndarray:
        """A disk of ``marker_radius`` at ``centre``, drawn large and reduced: float32 in [0, 1]."""
        aa, n = self.s.antialias_scale, self.n
        ys = np.arange(n * aa)[:, None] - centre[0] * aa
        xs = np.arange(n * aa)[None, :] - centre[1] * aa
        disk = ((ys**2 + xs**2 <= (self.s.marker_radius * aa) ** 2) * 255).astype(np.uint8)
        return np.asarray(Image.fromarray(disk).resize((n, n), _LANCZOS), dtype=np.float32) / 255


def draw_sample(
    settings: PathfinderSettings, rng: np.random.Generator, keep_curves: bool = False
) -> Sample:
    """Draw one image with ``rng`` (see the module docstring)."""
    label = int(rng.integers(0, 2))
    margin = int(settings.paddle_margins[int(rng.integers(len(settings.paddle_margins)))])
    while True:
        painter = _Painter(settings, margin, rng)
        targets = painter.targets()
        if targets is not None:
            break
    curves, starts = targets
    for _ in range(settings.num_distractors):
        for _ in range(settings.max_snake_retries + 1):
            distractor = painter.distractor()
            if distractor is not None:
                curves.append(distractor)
                break
    drawings = [curve.draw(settings.size) for curve in curves]
    image = np.maximum.reduce(drawings)
    tips = [curves[0].tip, curves[1].tip]
    origin = int(rng.integers(0, 2))
    other = origin if label == 1 else 1 - origin
    markers = (starts[origin], tips[other])
    np.maximum(image, np.maximum(painter.marker(markers[0]), painter.marker(markers[1])), out=image)
    return Sample(bytescale(image), label, markers, margin, drawings if keep_curves else [])
