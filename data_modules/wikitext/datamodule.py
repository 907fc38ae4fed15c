"""The WikiText-103 LightningDataModule: the cache (:mod:`data_modules.wikitext.prepare`) and the
stream batching (:mod:`data_modules.wikitext.dataset`), sharded over the Trainer's processes."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Optional

import lightning as L
import numpy as np
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from data_modules.common.batch import LMBatch
from data_modules.common.cache import CACHE_DIRNAME, CachedArrays
from data_modules.wikitext.dataset import FullContextDataset, LMStreamDataset
from data_modules.wikitext.prepare import (
    SPLITS,
    OnBadRow,
    prepare_corpus,
    read_vocab,
    resolve_wikitext_dir,
)

__all__ = ["WikiText103DataModule"]


class WikiText103DataModule(L.LightningDataModule):
    """WikiText-103 as contiguous token streams (Transformer-XL batching, DDP-aware).

    Args:
        data_dir: ``wikitext-103/`` (holding ``wiki.{train,valid,test}.tokens``) or its parent.
        batch_size: training streams *per process* (global: ``batch_size * world_size``).
        tgt_len: training window length ``T``.
        eval_batch_size: validation/test streams per process (default: ``batch_size``).
        eval_tgt_len: validation/test window length (default: ``tgt_len``).
        sliding_window: evaluate with overlapping windows (adds ``"loss_mask"`` to val/test
            batches); see :mod:`data_modules.wikitext.dataset`.
        eval_stride: how far a sliding window advances (default ``eval_tgt_len // 2``; 1 gives
            every target a full context of ``eval_tgt_len`` at ``eval_tgt_len`` times the cost).
        val_full_context, test_full_context: score that split as the released
            ``eval_sliding_window.py`` does (every target with ``eval_tgt_len`` tokens of
            context, one stream, ``eval_batch_size`` windows per batch; see the dataset module).
            Takes precedence over ``sliding_window`` for that split.
        full_context_batch_size: windows per full-context batch (default ``eval_batch_size``;
            it changes the speed, not the result).
        num_workers: DataLoader workers (0 is right: a batch is one slice of a memory map).
        on_bad_row: ``"error"`` raises :class:`DataFormatError` on an undecodable line (or, with
            no ``<unk>`` in train, a valid/test line with an unknown word); ``"skip"`` drops the
            line and warns with the count.
        cache_dir: where the numericalised cache lives (default: ``<wikitext-103>/cache``).

    ``vocab_size`` may be read right after construction (the CLI links it to the model): the
    first read builds the cache (once; DDP processes wait on a file lock) or loads it.
    Batches: :class:`data_modules.common.batch.LMBatch` (``loss_mask`` for sliding-window and
    full-context evaluation only).
    """

    #: the layout of the batches (data_modules.common.batch)
    batch_layout: ClassVar[type] = LMBatch

    def __init__(
        self,
        data_dir: str = "data/wikitext-103",
        batch_size: int = 96,
        tgt_len: int = 256,
        eval_batch_size: Optional[int] = None,
        eval_tgt_len: Optional[int] = None,
        sliding_window: bool = False,
        eval_stride: Optional[int] = None,
        val_full_context: bool = False,
        test_full_context: bool = False,
        full_context_batch_size: Optional[int] = None,
        num_workers: int = 0,
        on_bad_row: OnBadRow = "error",
        cache_dir: Optional[str] = None,
    ) -> None:
        super().__init__()
        if on_bad_row not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
        for name, value in (
            ("batch_size", batch_size),
            ("tgt_len", tgt_len),
            ("eval_batch_size", eval_batch_size),
            ("eval_tgt_len", eval_tgt_len),
            ("eval_stride", eval_stride),
            ("full_context_batch_size", full_context_batch_size),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.tgt_len = tgt_len
        self.eval_batch_size = eval_batch_size or batch_size
        self.eval_tgt_len = eval_tgt_len or tgt_len
        self.sliding_window = sliding_window
        self.full_context = {"valid": val_full_context, "test": test_full_context}
        self.full_context_batch_size = full_context_batch_size or self.eval_batch_size
        self.eval_stride = eval_stride or max(1, self.eval_tgt_len // 2)
        if self.eval_stride > self.eval_tgt_len:
            raise ValueError(
                f"eval_stride must be <= eval_tgt_len={self.eval_tgt_len}, got {eval_stride}"
            )
        self.num_workers = num_workers
        self.on_bad_row = on_bad_row
        self.cache_dir = cache_dir
        self._cached: Optional[CachedArrays] = None
        self._vocab: Optional[list[str]] = None
        self._tokens: dict[str, np.ndarray] = {}

    # -- preparation --------------------------------------------------------------------------

    def _ensure_cache(self) -> CachedArrays:
        if self._cached is None:
            source = resolve_wikitext_dir(self.data_dir)
            root = Path(self.cache_dir).expanduser() if self.cache_dir else source / CACHE_DIRNAME
            self._cached = prepare_corpus(source, root, self.on_bad_row)
        return self._cached

    def prepare_data(self) -> None:
        """Build the cache if it is missing (Lightning calls this on one process per node)."""
        self._ensure_cache()

    def setup(self, stage: Optional[str] = None) -> None:
        """Memory-map the numericalised splits (building the cache first if it is missing)."""
        cached = self._ensure_cache()
        for split in SPLITS:
            if split not in self._tokens:
                self._tokens[split] = cached.array(split)

    # -- sizes for the model ------------------------------------------------------------------

    @property
    def vocab(self) -> list[str]:
        """The words, id = index (``<eos>`` is 0). Builds or loads the cache on first use."""
        if self._vocab is None:
            self._vocab = read_vocab(self._ensure_cache())
        return self._vocab

    @property
    def vocab_size(self) -> int:
        """Number of words (267,735 on WikiText-103). Builds or loads the cache on first use."""
        return int(self._ensure_cache().meta["vocab_size"])

    @property
    def max_length(self) -> int:
        """Longest window a batch holds, the model's ``max_length`` (linked by the CLI)."""
        return max(self.tgt_len, self.eval_tgt_len)

    @property
    def num_tokens(self) -> dict[str, int]:
        """Tokens per split, ``<eos>`` included."""
        return dict(self._ensure_cache().meta["tokens"])

    @property
    def skipped_lines(self) -> dict[str, int]:
        """Lines dropped per split under ``on_bad_row="skip"`` (all 0 with ``"error"``)."""
        return dict(self._ensure_cache().meta["skipped_lines"])

    # -- loaders ------------------------------------------------------------------------------

    def _process_index(self) -> tuple[int, int]:
        """``(global_rank, world_size)`` from the attached Trainer; ``(0, 1)`` without one."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _loader(self, split: str, batch_size: int, tgt_len: int, stride: Optional[int]):
        if split not in self._tokens:
            self.setup()
        rank, world_size = self._process_index()
        dataset = LMStreamDataset(
            self._tokens[split], batch_size, tgt_len, rank, world_size, stride
        )
        # An IterableDataset: Lightning adds no DistributedSampler (we shard by stream ourselves).
        # Stateful for training only: Lightning checkpoints the train loader's position.
        loader = StatefulDataLoader if split == "train" else DataLoader
        return loader(dataset, batch_size=None, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, self.tgt_len, None)

    def _eval_loader(self, split: str) -> DataLoader:
        if self.full_context[split]:
            if split not in self._tokens:
                self.setup()
            rank, world_size = self._process_index()
            dataset = FullContextDataset(
                self._tokens[split], self.full_context_batch_size, self.eval_tgt_len, rank,
                world_size,
            )  # fmt: skip
            return DataLoader(dataset, batch_size=None, num_workers=self.num_workers)
        stride = self.eval_stride if self.sliding_window else None
        return self._loader(split, self.eval_batch_size, self.eval_tgt_len, stride)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
