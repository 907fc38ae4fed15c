"""Writing a generated Pathfinder set in the release's layout, in parallel, atomically.

Layout (as ``lra_release/pathfinder32/curv_contour_length_14/``)::

    <task_dir>/imgs/<k>/sample_<n>.png      # 8-bit grayscale PNG
    <task_dir>/metadata/<k>.npy             # TEXT, one line per image (snakes2.accumulate_meta)
    <task_dir>/pathfinder_generator.json    # the settings (ours; the release has none)

A metadata line: ``imgs/<k> sample_<n>.png <n> <label> <continuity> <contour_length>
<distractor_length> <paddle_length> <paddle_thickness> <margin> <number of paddle contrasts>``.

Image ``i`` (``k = i // per_folder``, ``n = i % per_folder``) is drawn with its own generator,
``SeedSequence(seed, spawn_key=(i,))``, so the files are byte-identical whatever the number of
worker processes. Everything is written into a hidden sibling folder, which is renamed to
``task_dir`` once complete: an interrupted run leaves no half-written set (a stale
``.<name>.tmp-<pid>`` folder of a killed run is removed by the next run).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data_modules.common.locks import file_lock
from data_modules.lra.pathfinder.generate.draw import draw_sample
from data_modules.lra.pathfinder.generate.settings import (
    PathfinderSettings,
)

__all__ = [
    "MANIFEST",
    "Progress",
    "directory_lock",
    "image_rng",
    "manifest_for",
    "write_pathfinder",
]

MANIFEST = "pathfinder_generator.json"
GENERATOR_VERSION = 1
_CHUNK = 50  # images per task handed to a worker


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that draws image ``index`` of the set made with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def manifest_for(settings: PathfinderSettings, count: int, seed: int, per_folder: int) -> dict:
    """What ``pathfinder_generator.json`` holds: everything the files depend on."""
    return {"version": GENERATOR_VERSION, "count": count, "seed": seed,
            "per_folder": per_folder, "settings": settings.to_dict()}  # fmt: skip


def _metadata_line(k: int, n: int, label: int, margin: int, s: PathfinderSettings) -> str:
    return (
        f"imgs/{k} sample_{n}.png {n} {label} {float(s.continuity)} {s.contour_length} "
        f"{s.distractor_length} {s.paddle_length} {float(s.paddle_thickness)} {margin} "
        f"{len(s.paddle_contrasts)}\n"
    )


def _draw_chunk(job: tuple) -> tuple[int, int, list[str]]:
    """Draw and save images ``first .. first + count - 1``; return their metadata lines."""
    stage, settings, seed, per_folder, first, count = job
    lines = []
    for i in range(first, first + count):
        k, n = divmod(i, per_folder)
        sample = draw_sample(settings, image_rng(seed, i))
        Image.fromarray(sample.image, mode="L").save(stage / "imgs" / str(k) / f"sample_{n}.png")
        lines.append(_metadata_line(k, n, sample.label, sample.margin, settings))
    return first, count, lines


@contextlib.contextmanager
def directory_lock(folder: Path, name: str = ".pathfinder_generate.lock") -> Iterator[None]:
    """An exclusive ``flock`` on ``folder/name`` (no-op where ``fcntl`` is missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / name):
        yield


class Progress:
    """A ``progress`` callback that reports through ``report`` at most every ``every`` seconds."""

    def __init__(self, report: Callable[[str], None], every: float = 10.0) -> None:
        self.report, self.every = report, every
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int, count: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.every or done == count:
            return
        self.last = now
        left = (now - self.start) / done * (count - done)
        self.report(f"{done}/{count} images, {now - self.start:.0f} s, about {left:.0f} s left")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_stages(task_dir: Path) -> None:
    for stale in task_dir.parent.glob(f".{task_dir.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _check_replaceable(task_dir: Path) -> None:
    if task_dir.exists() and not (task_dir / MANIFEST).is_file():
        raise FileExistsError(
            f"{task_dir} exists and was not made by this generator (no {MANIFEST}): "
            "refusing to replace it; choose another --out"
        )


def write_pathfinder(
    task_dir: str | Path,
    settings: PathfinderSettings,
    count: int,
    seed: int = 0,
    workers: int = 1,
    per_folder: int = 1000,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Draw ``count`` images and install them as ``task_dir`` (see the module docstring).

    A ``task_dir`` made earlier by this generator is replaced once the new set is complete;
    any other existing ``task_dir`` is an error (``FileExistsError``). ``workers`` > 1 draws in
    that many processes. ``progress(done, count)`` is called as images are finished (see
    :class:`Progress`). Returns the manifest.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if per_folder < 1:
        raise ValueError(f"per_folder must be >= 1, got {per_folder}")
    task_dir = Path(task_dir)
    _check_replaceable(task_dir)
    task_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_stages(task_dir)
    stage = task_dir.parent / f".{task_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    folders = -(-count // per_folder)
    try:
        for k in range(folders):
            (stage / "imgs" / str(k)).mkdir(parents=True)
        (stage / "metadata").mkdir()
        jobs = []
        for k in range(folders):  # chunks never straddle two folders
            end = min((k + 1) * per_folder, count)
            for first in range(k * per_folder, end, _CHUNK):
                jobs.append((stage, settings, seed, per_folder, first, min(_CHUNK, end - first)))
        lines: dict[int, list[str]] = {}
        done = 0
        with contextlib.ExitStack() as stack:
            if workers > 1:
                methods = multiprocessing.get_all_start_methods()
                # fork: workers need not re-import the caller (torch, Lightning) to draw
                context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
                pool = stack.enter_context(context.Pool(min(workers, len(jobs))))
                results: Iterator = pool.imap_unordered(_draw_chunk, jobs)
            else:
                results = map(_draw_chunk, jobs)
            for first, drawn, chunk in results:
                lines[first] = chunk
                done += drawn
                if progress is not None:
                    progress(done, count)
        for k in range(folders):
            text = "".join(line for first in sorted(lines) if first // per_folder == k
                           for line in lines[first])  # fmt: skip
            (stage / "metadata" / f"{k}.npy").write_text(text, encoding="ascii")
        manifest = manifest_for(settings, count, seed, per_folder)
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        _check_replaceable(task_dir)  # again: something may have appeared meanwhile
        old = task_dir.parent / f".{task_dir.name}.old-{os.getpid()}"
        if task_dir.exists():
            os.replace(task_dir, old)
        try:
            os.replace(stage, task_dir)
        except OSError:
            if old.exists():
                os.replace(old, task_dir)  # put the previous set back
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return manifest
