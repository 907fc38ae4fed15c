"""Pathfinder and Path-X: are the two dots connected by a path? Pixels as tokens (LRA).

- :mod:`~data_modules.lra.pathfinder.parse`: the release's layout (metadata lines, PNG pixels,
  the seeded 80/10/10 split) and its bad rows;
- :mod:`~data_modules.lra.pathfinder.generate`: the Pathfinder generator, writing that layout;
- :mod:`~data_modules.lra.pathfinder.datamodule`: :class:`PathfinderDataModule`;
- :mod:`~data_modules.lra.pathfinder.cli` (``python -m data_modules.lra.pathfinder generate``).
"""

from data_modules.lra.pathfinder.cli import main
from data_modules.lra.pathfinder.datamodule import DIFFICULTIES, PathfinderDataModule
from data_modules.lra.pathfinder.parse import (
    decode_png,
    metadata_files,
    parse_metadata_line,
    read_metadata,
    split_rows,
)

__all__ = [
    "DIFFICULTIES",
    "PathfinderDataModule",
    "decode_png",
    "main",
    "metadata_files",
    "parse_metadata_line",
    "read_metadata",
    "split_rows",
]
