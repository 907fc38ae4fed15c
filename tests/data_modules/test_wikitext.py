"""WikiText-103: Transformer-XL reading, vocabulary order, streams, DDP shards, sliding windows."""

from __future__ import annotations

import math
import pickle
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_modules.common.base import BadRows
from data_modules.common.errors import (
    DataError,
    DataFormatError,
    DataNotFoundError,
    SkippedRowsWarning,
)
from data_modules.wikitext import (
    LMStreamDataset,
    WikiText103DataModule,
    build_corpus,
    stream_windows,
)
from data_modules.wikitext.prepare import _token_blocks
from tests.data_modules.fixtures_c2 import (
    WIKI_TRAIN,
    reference_tokens,
    reference_vocab,
    write_wikitext,
)


def make_module(tmp_path: Path, **kwargs) -> WikiText103DataModule:
    kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
    kwargs.setdefault("batch_size", 2)
    kwargs.setdefault("tgt_len", 8)
    return WikiText103DataModule(str(tmp_path), **kwargs)


# -- reading and vocabulary on real English text laid out as WikiText-103 ------------------------


def test_real_text_matches_transformer_xl_reading(tmp_path: Path) -> None:
    folder = write_wikitext(tmp_path)
    module = make_module(tmp_path)
    vocab = reference_vocab(folder / "wiki.train.tokens")
    assert module.vocab == vocab  # available before setup: the CLI reads vocab_size first
    assert module.vocab_size == len(vocab)
    module.setup("fit")
    stoi = {w: i for i, w in enumerate(vocab)}
    for split in ("train", "valid", "test"):
        expected = [
            stoi.get(w, stoi["<unk>"]) for w in reference_tokens(folder / f"wiki.{split}.tokens")
        ]
        assert module._tokens[split].dtype == np.int32
        assert module._tokens[split].tolist() == expected
        assert module.num_tokens[split] == len(expected)


def test_real_text_tokens_by_hand(tmp_path: Path) -> None:
    write_wikitext(tmp_path)
    module = make_module(tmp_path)
    module.setup()
    words = [module.vocab[i] for i in module._tokens["train"][:10]]
    # " \n" -> <eos>; " = Harbour Lighthouse = \n" -> 4 words + <eos>; " \n" -> <eos>; then text
    assert words == ["<eos>", "=", "Harbour", "Lighthouse", "=", "<eos>", "<eos>", "The",
                     "Harbour", "Lighthouse"]  # fmt: skip
    valid = [module.vocab[i] for i in module._tokens["valid"]]
    # "Old" and "Mill" and "mill" and "closed" never occur in train: <unk>
    assert valid[:7] == ["<eos>", "=", "<unk>", "<unk>", "=", "<eos>", "<eos>"]
    assert valid[7:10] == ["The", "<unk>", "was"]
    assert "@-@" in module.vocab and "@.@" in module.vocab and "@,@" in module.vocab


def test_vocabulary_order_eos_first_then_count_then_first_occurrence(tmp_path: Path) -> None:
    train = "b a a a a\n\nc b a\nd <unk>\n"
    write_wikitext(tmp_path, train=train, valid="a\n", test="zz\n")
    module = make_module(tmp_path)
    # counts: a 5, <eos> 4 (first all the same), b 2; c, d, <unk> tie at 1 -> first occurrence
    assert module.vocab == ["<eos>", "a", "b", "c", "d", "<unk>"]
    module.setup()
    assert module._tokens["train"].tolist() == [2, 1, 1, 1, 1, 0, 0, 3, 2, 1, 0, 4, 5, 0]
    assert module._tokens["test"].tolist() == [5, 0]  # unknown word -> <unk>


def test_line_endings_and_last_line_without_newline(tmp_path: Path) -> None:
    # \r\n and a lone \r end lines in Python's text mode (Transformer-XL's reading); \x0b and
    # \u2028 do not end lines there but are white space to str.split.
    train = "a b\r\nc\rd\x0be\u2028f\n\n  \ng"
    write_wikitext(tmp_path, train=train + " <unk>", valid="a", test="g")
    folder = tmp_path / "wikitext-103"
    module = make_module(tmp_path)
    module.setup()
    words = [module.vocab[i] for i in module._tokens["train"]]
    assert words == reference_tokens(folder / "wiki.train.tokens")
    assert words == ["a", "b", "<eos>", "c", "<eos>", "d", "e", "f", "<eos>", "<eos>", "<eos>",
                     "g", "<unk>", "<eos>"]  # fmt: skip
    assert module.num_tokens["test"] == 2  # g <eos>: the last line needs no newline either


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.text(alphabet=st.sampled_from(list("ab é\n\r\t\x0b\x1c\u2028\u3000")), max_size=60),
    block=st.integers(1, 9),
)
def test_block_reader_equals_line_by_line_reading(text: str, block: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "wiki.train.tokens"
        path.write_bytes(text.encode("utf-8"))
        tokens = [
            t
            for _, _, block_tokens in _token_blocks(path, BadRows("error"), block)
            for t in block_tokens
        ]
        assert tokens == reference_tokens(path)


# -- bad data -------------------------------------------------------------------------------------


def test_missing_files_name_the_path_and_the_download(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        _ = WikiText103DataModule(str(tmp_path / "nowhere")).vocab_size
    message = str(info.value)
    assert "wikitext-103" in message and "wiki.train.tokens" in message
    assert "wikitext-103-v1.zip" in message and "does not exist" in message
    folder = write_wikitext(tmp_path)
    (folder / "wiki.test.tokens").unlink()
    with pytest.raises(DataNotFoundError, match="wiki.test.tokens"):
        _ = make_module(tmp_path).vocab_size


def test_undecodable_line_error_names_file_and_line(tmp_path: Path) -> None:
    write_wikitext(tmp_path, train=b" a b \n \n c \xff\xfe d \n e <unk> \n")
    with pytest.raises(DataFormatError) as info:
        _ = make_module(tmp_path).vocab_size
    assert info.value.line_or_record == 3
    assert info.value.path.endswith("wiki.train.tokens") and "UTF-8" in str(info.value)


def test_undecodable_line_skipped_and_counted(tmp_path: Path) -> None:
    write_wikitext(
        tmp_path, train=b" a b \n \n c \xff\xfe d \n e <unk> \n", valid=b"a\n", test=b"e\n"
    )
    module = make_module(tmp_path, on_bad_row="skip")
    with pytest.warns(SkippedRowsWarning, match="skipped 1 malformed line"):
        module.setup()
    words = [module.vocab[i] for i in module._tokens["train"]]
    assert words == ["a", "b", "<eos>", "<eos>", "e", "<unk>", "<eos>"]
    assert module.skipped_lines == {"train": 1, "valid": 0, "test": 0}
    with warnings.catch_warnings():  # loading the cached result again does not warn again
        warnings.simplefilter("error")
        assert make_module(tmp_path, on_bad_row="skip").skipped_lines["train"] == 1


def test_unknown_word_without_unk_in_train(tmp_path: Path) -> None:
    write_wikitext(tmp_path, train="a b\nb c\n", valid="a b\nb zz c\na\n", test="c\n")
    with pytest.raises(DataFormatError) as info:
        _ = make_module(tmp_path).vocab_size
    assert info.value.path.endswith("wiki.valid.tokens") and info.value.line_or_record == 2
    assert "'zz'" in str(info.value) and "<unk>" in str(info.value)
    module = make_module(tmp_path, on_bad_row="skip")
    with pytest.warns(SkippedRowsWarning):
        module.setup()
    words = [module.vocab[i] for i in module._tokens["valid"]]
    assert words == ["a", "b", "<eos>", "a", "<eos>"]


def test_empty_train_file(tmp_path: Path) -> None:
    write_wikitext(tmp_path, train="", valid="", test="")
    with pytest.raises(DataFormatError, match="empty file"):
        _ = make_module(tmp_path).vocab_size


@settings(max_examples=40, deadline=None)
@given(
    train=st.binary(max_size=80),
    valid=st.binary(max_size=30),
    policy=st.sampled_from(["error", "skip"]),
)
def test_arbitrary_bytes_give_tokens_or_our_error(train: bytes, valid: bytes, policy: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_wikitext(Path(tmp), train=train, valid=valid, test=b"")
        out = Path(tmp) / "out"
        out.mkdir()
        try:
            meta = build_corpus(folder, out, policy)
        except DataError:
            return
        vocab = (out / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
        assert vocab[0] == "<eos>" and len(vocab) == meta["vocab_size"] == len(set(vocab))
        ids = np.load(out / "train.npy")
        assert ids.dtype == np.int32 and len(ids) == meta["tokens"]["train"]
        assert ids.min() >= 0 and ids.max() < len(vocab)


# -- the cache ------------------------------------------------------------------------------------


def test_cache_is_reused_and_rebuilt_when_a_source_changes(tmp_path: Path, monkeypatch) -> None:
    folder = write_wikitext(tmp_path)
    first = make_module(tmp_path)
    size = first.vocab_size
    import data_modules.wikitext.prepare as prepare

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(prepare, "build_corpus", fail)
    assert make_module(tmp_path).vocab_size == size  # loaded, not rebuilt
    monkeypatch.undo()
    (folder / "wiki.train.tokens").write_text(WIKI_TRAIN + " brand new words here \n")
    assert make_module(tmp_path).vocab_size == size + 4
    assert len(list((tmp_path / "cache").glob("wikitext103-*/manifest.json"))) == 2
    assert not list((tmp_path / "cache").glob(".tmp-*"))  # no staging folder left behind


def test_default_cache_lives_beside_the_data(tmp_path: Path) -> None:
    folder = write_wikitext(tmp_path)
    module = WikiText103DataModule(str(folder), batch_size=2, tgt_len=4)
    assert module.vocab_size > 10
    assert list((folder / ".fmmformer_cache").glob("wikitext103-*/vocab.txt"))


# -- batching -------------------------------------------------------------------------------------


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


def test_damaged_vocab_file_is_a_clear_error(tmp_path: Path) -> None:
    write_wikitext(tmp_path)
    size = make_module(tmp_path).vocab_size
    (vocab_file,) = (tmp_path / "cache").glob("wikitext103-*/vocab.txt")
    vocab_file.write_text("<eos>\nonly\n")
    with pytest.raises(DataError, match=f"lists 2 words, its manifest says {size}"):
        _ = make_module(tmp_path).vocab


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
