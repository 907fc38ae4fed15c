"""Long Range Arena data modules, reading the official releases (see docs/data.md).

Loaded lazily (PEP 562): importing one data module does not import the others (nor PIL, for
the tasks that read no images). To add a data module, add one line to ``_LAZY``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ListOpsDataModule": "data_modules.lra.listops",
    "TextDataModule": "data_modules.lra.text",
    "RetrievalDataModule": "data_modules.lra.retrieval",
    "ImageDataModule": "data_modules.lra.image",
    "PathfinderDataModule": "data_modules.lra.pathfinder",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
