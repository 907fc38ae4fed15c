"""Full-context evaluation (the released eval_sliding_window.py) against a brute-force loop."""

import numpy as np
import pytest
import torch

from data_modules.wikitext import FullContextDataset
from fmmformer_pl.attention.config import AttentionConfig
from fmmformer_pl.models import DecoderConfig, FMMDecoderLM

VOCAB, T = 23, 6


def _brute_force(model, tokens):
    """One window per target t: the T tokens before it (the first T targets: window 0)."""
    nll = []
    for t in range(1, len(tokens)):
        begin = max(0, t - T) if t > T else 0
        window = torch.as_tensor(tokens[begin : begin + T], dtype=torch.long)[None]
        target = torch.as_tensor(tokens[begin + 1 : begin + T + 1], dtype=torch.long)[None]
        nll.append(model.nll(window, target)[0, t - 1 - begin])
    return torch.stack(nll)


@pytest.mark.parametrize("batch_size, world_size", [(3, 2), (50, 1)])
def test_every_target_once_with_a_full_window(batch_size, world_size):
    torch.manual_seed(0)
    config = DecoderConfig(dim=8, depth=1, num_heads=2, ffn_dim=16, dropout=0.0,
                           positions="transformer_xl", norm="post", final_norm=False,
                           attention=AttentionConfig(kind="fmm", bandwidth=2))  # fmt: skip
    model = FMMDecoderLM(VOCAB, T, config).eval()
    tokens = np.random.default_rng(0).integers(0, VOCAB, 31).astype(np.int32)
    got = []
    for rank in range(world_size):
        data = FullContextDataset(tokens, batch_size, T, rank, world_size)
        for batch in data:
            assert batch["input_ids"].shape == (batch_size, T)
            got.append(model.nll_at(batch["input_ids"], batch["target_ids"], batch["loss_mask"]))
    got = torch.cat(got)
    expected = _brute_force(model, tokens)
    assert got.numel() == len(tokens) - 1
    torch.testing.assert_close(got.sort().values, expected.sort().values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.sum(), expected.sum(), atol=1e-4, rtol=1e-5)


def test_a_split_shorter_than_the_window_is_one_window():
    batches = list(FullContextDataset(np.arange(4), 2, 10))
    assert len(batches) == 1
    assert batches[0]["loss_mask"].tolist() == [[True] * 3, [False] * 3]
