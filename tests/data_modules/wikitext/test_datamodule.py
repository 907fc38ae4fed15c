"""WikiText103DataModule: the Trainer's rank, loaders, settings, a fit under Lightning."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from data_modules.wikitext import LMStreamDataset
from tests.data_modules.fixtures_c2 import write_wikitext
from tests.data_modules.wikitext.helpers import make_module


def test_data_module_reads_rank_from_the_trainer(tmp_path: Path) -> None:
    write_wikitext(tmp_path)
    module = make_module(tmp_path, batch_size=2, tgt_len=5)
    module.setup()
    tokens = torch.from_numpy(module._tokens["train"].astype(np.int64))
    n_step = len(tokens) // 4
    module.trainer = SimpleNamespace(global_rank=1, world_size=2)
    first = next(iter(module.train_dataloader()))
    rows = tokens[: 4 * n_step].view(4, n_step)[2:4]
    assert torch.equal(first["input_ids"], rows[:, :5])
    assert torch.equal(first["target_ids"], rows[:, 1:6])
    assert set(first) == {"input_ids", "target_ids"}


def test_sliding_window_batches_carry_the_loss_mask(tmp_path: Path) -> None:
    write_wikitext(tmp_path)
    module = make_module(
        tmp_path, eval_batch_size=1, eval_tgt_len=6, sliding_window=True, eval_stride=2
    )
    module.setup()
    valid = torch.from_numpy(module._tokens["valid"].astype(np.int64))
    batches = list(module.val_dataloader())
    assert all(set(b) == {"input_ids", "target_ids", "loss_mask"} for b in batches)
    assert all(
        b["loss_mask"].dtype == torch.bool and b["loss_mask"].shape == b["input_ids"].shape
        for b in batches
    )
    assert batches[0]["loss_mask"].all()  # the first window scores all its targets
    assert batches[1]["loss_mask"][0].tolist() == [False] * 4 + [True] * 2
    scored = torch.cat([b["target_ids"][b["loss_mask"]] for b in batches])
    assert torch.equal(scored, valid[1:])  # every target of the stream once, in order
    # without sliding windows the training loader has no mask
    assert "loss_mask" not in next(iter(module.train_dataloader()))


def test_dataloader_workers_keep_batch_order(tmp_path: Path) -> None:
    tokens = np.arange(500, dtype=np.int32)
    dataset = LMStreamDataset(tokens, 2, 7)
    serial = [b["input_ids"] for b in torch.utils.data.DataLoader(dataset, batch_size=None)]
    parallel = [
        b["input_ids"] for b in torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
    ]
    assert len(serial) == len(parallel) == len(dataset)
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))


def test_bad_settings_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_bad_row"):
        make_module(tmp_path, on_bad_row="ignore")
    with pytest.raises(ValueError, match="eval_stride"):
        make_module(tmp_path, eval_tgt_len=4, eval_stride=5)
    with pytest.raises(ValueError, match="tgt_len"):
        make_module(tmp_path, tgt_len=0)


class TinyLM(L.LightningModule):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, 8)
        self.out = torch.nn.Linear(8, vocab_size)
        self.seen: list[tuple[int, ...]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(tuple(batch["input_ids"].shape))
        logits = self.out(self.embed(batch["input_ids"]))  # (B, T, vocab)
        return torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), batch["target_ids"].flatten()
        )

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trains_under_lightning(tmp_path: Path) -> None:
    write_wikitext(tmp_path)
    module = make_module(tmp_path, batch_size=2, tgt_len=4)
    model = TinyLM(module.vocab_size)
    trainer = L.Trainer(
        max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(model, datamodule=module)
    assert model.seen == [(2, 4)] * 3


def test_max_length_covers_training_and_evaluation_windows(tmp_path: Path) -> None:
    assert make_module(tmp_path, tgt_len=16).max_length == 16
    assert make_module(tmp_path, tgt_len=16, eval_tgt_len=64).max_length == 64
