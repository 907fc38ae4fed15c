"""WikiText-103 batches read from the prepared cache (:mod:`data_modules.wikitext.prepare`).

Batching (``LMOrderedIterator`` of Transformer-XL)::

    S      = batch_size * world_size                    # global number of streams
    n_step = len(tokens) // S                           # tokens per stream (the tail is dropped)
    stream s = tokens[s * n_step : (s + 1) * n_step]    # rank r owns streams r*B ... r*B + B-1
    batch i: input_ids  = streams[:, i*T     : i*T + T]          # (B, T)
             target_ids = streams[:, i*T + 1 : i*T + T + 1]      # inputs shifted by one

so consecutive batches continue each stream (what a recurrent memory needs), every rank sees the
same number of batches, and the last window of a split may be shorter than ``T``.

Sliding-window evaluation (``sliding_window=True``) gives each scored target up to ``T`` tokens of
context: window k ends at ``e_k = min(k * stride + T, n_step - 1)`` and starts at
``max(0, e_k - T)`` (the last window is pulled back to full length), and only the targets not
scored by an earlier window count: the batch carries ``"loss_mask"`` (B, T) bool, True where the
target counts. Every target of a stream is scored exactly once.

Full-context evaluation (``val_full_context`` / ``test_full_context``), as the released
``eval_sliding_window.py`` (Transformer-XL's data iterator with ``sliding_window=True``, batch 1)
scores: the whole split is one stream of n tokens; window w holds inputs ``tokens[w : w+T]``
and targets ``tokens[w+1 : w+T+1]``; window 0 scores all its T targets, every later window
only its last, so every target from the T-th on is predicted from exactly T tokens before it,
and every target is scored once (n - 1 in all, nothing dropped). Windows are independent, so
``eval_batch_size`` consecutive windows make one batch (a final short batch is padded with
windows whose ``loss_mask`` is all False); with DDP, rank r takes windows r*B .. r*B + B-1 of
each group of B * world_size. Cost: n - T + 1 windows of T tokens, T times a plain pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from data_modules.common.batch import INPUT_IDS, LOSS_MASK, TARGET_IDS, LMBatch
from data_modules.common.errors import DataError

__all__ = ["FullContextDataset", "LMStreamDataset", "stream_windows"]


def stream_windows(
    n_step: int, tgt_len: int, stride: Optional[int] = None
) -> list[tuple[int, int, int]]:
    """Windows over a stream of ``n_step`` tokens as ``(begin, end, score_from)`` triples.

    Inputs are ``stream[begin:end]``, targets ``stream[begin+1:end+1]``; targets at window
    positions ``>= score_from`` count. ``stride=None``: consecutive windows of ``tgt_len``
    (the last may be shorter), all targets count. With a stride: see the module docstring.
    """
    n_targets = n_step - 1
    if n_targets < 1:
        return []
    if stride is None:
        return [(b, min(b + tgt_len, n_targets), 0) for b in range(0, n_targets, tgt_len)]
    windows = []
    scored = 0  # targets [0, scored) of the stream are already scored
    k = 0
    while scored < n_targets:
        end = min(k * stride + tgt_len, n_targets)
        begin = max(0, end - tgt_len)
        windows.append((begin, end, scored - begin))
        scored = end
        k += 1
    return windows


class LMStreamDataset(IterableDataset):
    """Batches of one process's streams: yields :class:`LMBatch` dicts (``loss_mask`` only with
    a ``stride``).

    ``tokens`` is the whole split (1-D); ``rank``/``world_size`` pick this process's
    ``batch_size`` streams among ``batch_size * world_size``. Each item is a whole batch (use a
    ``DataLoader`` with ``batch_size=None``); with DataLoader workers, worker ``w`` of ``n``
    produces batches ``w, w+n, ...`` and the loader returns them in order.

    Stateful for ``torchdata``'s ``StatefulDataLoader`` (which calls ``state_dict`` in the
    process, main or worker, that iterates): the state is the next window index, so a run
    resumed from a mid-epoch checkpoint continues with the window it would have read next.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        tgt_len: int,
        rank: int = 0,
        world_size: int = 1,
        stride: Optional[int] = None,
    ) -> None:
        if batch_size < 1 or tgt_len < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need batch_size >= 1, tgt_len >= 1, 0 <= rank < world_size; got "
                f"batch_size={batch_size}, tgt_len={tgt_len}, rank={rank}, world_size={world_size}"
            )
        if stride is not None and not 1 <= stride <= tgt_len:
            raise ValueError(f"eval stride must lie in [1, tgt_len={tgt_len}], got {stride}")
        n_streams = batch_size * world_size
        n_step = len(tokens) // n_streams
        if n_step < 2:
            raise DataError(
                f"A split of {len(tokens)} tokens is too short for {n_streams} streams "
                f"(batch_size {batch_size} x world_size {world_size}): each stream needs at "
                "least 2 tokens"
            )
        self.tokens = tokens
        self.rows = (rank * batch_size, (rank + 1) * batch_size, n_streams, n_step)
        self.windows = stream_windows(n_step, tgt_len, stride)
        self.sliding = stride is not None
        self._next_window = 0  # the window the running pass yields next
        self._resume_at: Optional[int] = None  # set by load_state_dict for the next pass

    @property
    def streams(self) -> np.ndarray:
        """This process's streams, a (batch_size, n_step) view of ``tokens`` (no copy)."""
        first, last, n_streams, n_step = self.rows
        return self.tokens[: n_streams * n_step].reshape(n_streams, n_step)[first:last]

    def __getstate__(self) -> dict:
        # A memmap would pickle as a full copy of the split into every spawned worker: send
        # where it lives instead, and map it again on the other side.
        state = self.__dict__.copy()
        tokens = state["tokens"]
        if isinstance(tokens, np.memmap) and tokens.filename is not None:
            state["tokens"] = (tokens.filename, tokens.offset, tokens.shape, tokens.dtype.str)
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["tokens"], tuple):
            filename, offset, shape, dtype = state["tokens"]
            state["tokens"] = np.memmap(filename, dtype=dtype, mode="r", offset=offset, shape=shape)
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.windows)

    def batch(self, index: int) -> LMBatch:
        begin, end, score_from = self.windows[index]
        streams = self.streams  # (B, n_step)
        inputs = np.asarray(streams[:, begin:end], dtype=np.int64)  # (B, T)
        targets = np.asarray(streams[:, begin + 1 : end + 1], dtype=np.int64)  # (B, T)
        out: LMBatch = {INPUT_IDS: torch.from_numpy(inputs), TARGET_IDS: torch.from_numpy(targets)}
        if self.sliding:
            mask = torch.zeros(inputs.shape, dtype=torch.bool)  # (B, T)
            mask[:, score_from:] = True
            out[LOSS_MASK] = mask
        return out

    def state_dict(self) -> dict[str, int]:
        return {"next_window": self._next_window}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = int(state["next_window"])

    def __iter__(self) -> Iterator[LMBatch]:
        info = get_worker_info()
        start, step = (0, 1) if info is None else (info.id, info.num_workers)
        resume, self._resume_at = self._resume_at, None
        # A saved position at (or past) the end means the pass was complete: start a new one.
        if resume is not None and resume < len(self.windows):
            if (resume - start) % step:
                raise ValueError(
                    f"window {resume} does not belong to loader worker {start} of {step}: "
                    "resume with the num_workers the checkpoint was saved with"
                )
            start = resume
        self._next_window = start
        for index in range(start, len(self.windows), step):
            self._next_window = index + step
            yield self.batch(index)


class FullContextDataset(IterableDataset):
    """Full-context evaluation batches of one split (module docstring): yields
    :class:`LMBatch` dicts with ``loss_mask``, each tensor ``(batch_size, L)``, L = min(T, n - 1)."""

    def __init__(
        self, tokens: np.ndarray, batch_size: int, tgt_len: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if batch_size < 1 or tgt_len < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need batch_size >= 1, tgt_len >= 1, 0 <= rank < world_size; got "
                f"batch_size={batch_size}, tgt_len={tgt_len}, rank={rank}, world_size={world_size}"
            )
        n_targets = len(tokens) - 1
        if n_targets < 1:
            raise DataError(f"A split of {len(tokens)} tokens has no target to score")
        self.tokens = tokens
        self.length = min(tgt_len, n_targets)  # L
        self.n_windows = n_targets - self.length + 1
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    def __len__(self) -> int:
        return -(-self.n_windows // (self.batch_size * self.world_size))

    def batch(self, index: int) -> LMBatch:
        first = (index * self.world_size + self.rank) * self.batch_size
        windows = np.arange(first, first + self.batch_size)  # (B,) window w starts at token w
        real = windows < self.n_windows
        begins = np.minimum(windows, self.n_windows - 1)  # padding repeats the last window
        rows = begins[:, None] + np.arange(self.length)[None, :]  # (B, L)
        inputs = np.asarray(self.tokens[rows], dtype=np.int64)
        targets = np.asarray(self.tokens[rows + 1], dtype=np.int64)
        mask = np.zeros(rows.shape, dtype=bool)  # (B, L)
        mask[:, -1] = real
        mask[windows == 0] = True  # the first window scores every target
        return {
            INPUT_IDS: torch.from_numpy(inputs),
            TARGET_IDS: torch.from_numpy(targets),
            LOSS_MASK: torch.from_numpy(mask),
        }

    def __iter__(self) -> Iterator[LMBatch]:
        info = get_worker_info()
        start, step = (0, 1) if info is None else (info.id, info.num_workers)
        for index in range(start, len(self), step):
            yield self.batch(index)


# ---------------------------------------------------------------------------------------------
# The LightningDataModule
# ---------------------------------------------------------------------------------------------
