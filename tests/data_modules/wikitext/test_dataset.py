"""WikiText-103 stream batches: contiguous streams, DDP shards, sliding windows, pickling."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules.common.errors import DataError
from data_modules.wikitext import LMStreamDataset, stream_windows
from tests.data_modules.fixtures_c2 import WIKI_TRAIN, write_wikitext
from tests.data_modules.wikitext.helpers import make_module


def n_windows(n_step: int, tgt_len: int, stride: int | None) -> int:
    """Closed form of the number of windows (an independent check of ``stream_windows``)."""
    n_targets = n_step - 1
    if stride is None:
        return math.ceil(n_targets / tgt_len)
    return 1 + math.ceil(max(0, n_targets - tgt_len) / stride)


def collect(dataset: LMStreamDataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    batches = list(dataset)
    inputs = torch.cat([b["input_ids"] for b in batches], dim=1)
    targets = torch.cat([b["target_ids"] for b in batches], dim=1)
    masks = torch.cat([b["loss_mask"] for b in batches], dim=1) if dataset.sliding else None
    return inputs, targets, masks


@pytest.mark.parametrize("n_tokens, batch_size, tgt_len", [(103, 3, 5), (64, 4, 8), (10, 1, 20)])
def test_streams_are_contiguous_and_targets_shifted(n_tokens, batch_size, tgt_len) -> None:
    tokens = np.arange(1000, 1000 + n_tokens, dtype=np.int32)
    dataset = LMStreamDataset(tokens, batch_size, tgt_len)
    n_step = n_tokens // batch_size
    assert len(dataset) == n_windows(n_step, tgt_len, None)
    batches = list(dataset)
    assert all(
        b["input_ids"].dtype == torch.long and b["target_ids"].dtype == torch.long for b in batches
    )
    assert all(b["input_ids"].shape == (batch_size, tgt_len) for b in batches[:-1])
    inputs, targets, _ = collect(dataset)
    streams = torch.from_numpy(tokens[: batch_size * n_step].astype(np.int64)).view(
        batch_size, n_step
    )
    assert torch.equal(inputs, streams[:, :-1])  # every token but each stream's last is an input
    assert torch.equal(targets, streams[:, 1:])


def test_ddp_ranks_get_their_own_streams_and_equal_batch_counts() -> None:
    tokens = np.arange(203, dtype=np.int32)
    batch_size, world_size, tgt_len = 2, 3, 4
    n_step = len(tokens) // (batch_size * world_size)
    reference = torch.arange(batch_size * world_size * n_step).view(batch_size * world_size, n_step)
    per_rank = []
    for rank in range(world_size):
        dataset = LMStreamDataset(tokens, batch_size, tgt_len, rank=rank, world_size=world_size)
        per_rank.append(len(dataset))
        inputs, targets, _ = collect(dataset)
        rows = reference[rank * batch_size : (rank + 1) * batch_size]
        assert torch.equal(inputs, rows[:, :-1]) and torch.equal(targets, rows[:, 1:])
    assert len(set(per_rank)) == 1


def test_too_many_streams_for_the_data_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="too short for 8 streams"):
        LMStreamDataset(np.arange(15, dtype=np.int32), batch_size=4, tgt_len=4, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        LMStreamDataset(
            np.arange(100, dtype=np.int32), batch_size=2, tgt_len=4, rank=2, world_size=2
        )


@pytest.mark.parametrize(
    "n_step, tgt_len, stride", [(40, 8, 1), (40, 8, 3), (40, 8, 8), (41, 8, 5), (6, 8, 2)]
)
def test_sliding_windows_score_each_target_once_with_long_context(n_step, tgt_len, stride) -> None:
    windows = stream_windows(n_step, tgt_len, stride)
    assert len(windows) == n_windows(n_step, tgt_len, stride)
    scored = []
    for begin, end, score_from in windows:
        assert end - begin == min(tgt_len, n_step - 1)  # every window is full length
        for position in range(score_from, end - begin):
            target = begin + position  # index of the target among the stream's n_step - 1
            context = position + 1  # tokens the model sees when predicting it
            assert context >= min(target + 1, tgt_len - stride + 1)
            if stride == 1:
                assert context == min(target + 1, tgt_len)
            scored.append(target)
    assert scored == list(range(n_step - 1))


def test_pickled_dataset_maps_the_cache_instead_of_copying_it(tmp_path: Path) -> None:
    write_wikitext(tmp_path, train=WIKI_TRAIN * 40)
    module = make_module(tmp_path, batch_size=2, tgt_len=5)
    module.setup()
    tokens = module._tokens["train"]
    dataset = LMStreamDataset(tokens, 2, 50)
    payload = pickle.dumps(dataset)
    assert tokens.nbytes > 20_000 and len(payload) < 5_000  # where the memmap is, not its data
    clone = pickle.loads(payload)
    assert isinstance(clone.tokens, np.memmap)
    assert all(
        torch.equal(a["input_ids"], b["input_ids"])
        and torch.equal(a["target_ids"], b["target_ids"])
        for a, b in zip(dataset, clone, strict=True)
    )
