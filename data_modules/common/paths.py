"""Find a task's folder whichever level of the Long Range Arena release ``data_dir`` points at.

After ``tar xf lra_release.gz`` most people have ``lra_release/lra_release/<task>/`` and some one
level less; others point straight at the task folder. All of these name the same data::

    data_dir = ".../lra_release"                 # -> .../lra_release/lra_release/<task>
    data_dir = ".../lra_release/lra_release"     # -> .../lra_release/lra_release/<task>
    data_dir = ".../lra_release/lra_release/<task>"
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from data_modules.common.errors import DataNotFoundError

__all__ = ["LRA_DOWNLOAD_HINT", "candidate_dirs", "resolve_task_dir"]

LRA_DOWNLOAD_HINT = (
    "Download the Long Range Arena release from "
    "https://storage.googleapis.com/long-range-arena/lra_release.gz (about 7.7 GB) and unpack it "
    "with `tar xf lra_release.gz`"
)


def candidate_dirs(data_dir: str | Path, task_folder: str) -> list[Path]:
    """The folders that may hold the task's files, most specific first."""
    root = Path(data_dir).expanduser()
    return [
        root,
        root / task_folder,
        root / "lra_release" / task_folder,
        root / "lra_release" / "lra_release" / task_folder,
    ]


def resolve_task_dir(
    data_dir: str | Path,
    task_folder: str,
    required: Sequence[str],
    download_hint: str = LRA_DOWNLOAD_HINT,
) -> Path:
    """Return the first candidate folder (see :func:`candidate_dirs`) holding every ``required`` path.

    Raises :class:`DataNotFoundError` naming the first missing path, looked up in the folder that
    holds the most of ``required`` (or ``<data_dir>/<task_folder>`` if none holds any).
    """
    candidates = candidate_dirs(data_dir, task_folder)
    best, best_count = candidates[1], 0
    for folder in candidates:
        present = sum((folder / name).exists() for name in required)
        if present == len(required):
            return folder
        if present > best_count:
            best, best_count = folder, present
    missing = next(name for name in required if not (best / name).exists())
    layout = (
        f"Pass as data_dir the folder that holds {task_folder}/ (or {task_folder}/ itself); "
        f"it must contain {', '.join(required)}"
    )
    if not Path(data_dir).expanduser().exists():
        layout = f"The data_dir {data_dir} does not exist. " + layout
    raise DataNotFoundError(best / missing, layout, download_hint)
