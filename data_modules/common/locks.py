"""An exclusive file lock, shared by the cache and the data generators."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

try:  # POSIX only; elsewhere callers rely on atomic renames alone.
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None  # type: ignore[assignment]

__all__ = ["file_lock"]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive ``flock`` on ``path`` (created if missing; its folder must exist).
    A no-op where ``fcntl`` is missing."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
