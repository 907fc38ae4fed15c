"""Shared by every data module: errors, the array cache, path resolution, the classification base."""

from data_modules.common.base import (
    BadRows,
    ClassificationDataModule,
    PadCollate,
    TokenSequenceDataset,
)
from data_modules.common.cache import (
    ArrayCache,
    CachedArrays,
    CacheWriter,
    SequenceWriter,
    cache_key,
)
from data_modules.common.errors import (
    DataError,
    DataFormatError,
    DataNotFoundError,
    SkippedRowsWarning,
)
from data_modules.common.paths import LRA_DOWNLOAD_HINT, resolve_task_dir

__all__ = [
    "LRA_DOWNLOAD_HINT",
    "ArrayCache",
    "BadRows",
    "CacheWriter",
    "CachedArrays",
    "ClassificationDataModule",
    "DataError",
    "DataFormatError",
    "DataNotFoundError",
    "PadCollate",
    "SequenceWriter",
    "SkippedRowsWarning",
    "TokenSequenceDataset",
    "cache_key",
    "resolve_task_dir",
]
