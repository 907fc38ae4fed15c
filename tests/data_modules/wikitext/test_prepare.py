"""WikiText-103 preparation: Transformer-XL reading, vocabulary order, bad lines, the cache."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_modules.common.base import BadRows
from data_modules.common.errors import (
    DataError,
    DataFormatError,
    DataNotFoundError,
    SkippedRowsWarning,
)
from data_modules.wikitext import WikiText103DataModule, build_corpus
from data_modules.wikitext.prepare import _token_blocks
from tests.data_modules.fixtures_c2 import (
    WIKI_TRAIN,
    reference_tokens,
    reference_vocab,
    write_wikitext,
)
from tests.data_modules.wikitext.helpers import make_module


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


def test_damaged_vocab_file_is_a_clear_error(tmp_path: Path) -> None:
    write_wikitext(tmp_path)
    size = make_module(tmp_path).vocab_size
    (vocab_file,) = (tmp_path / "cache").glob("wikitext103-*/vocab.txt")
    vocab_file.write_text("<eos>\nonly\n")
    with pytest.raises(DataError, match=f"lists 2 words, its manifest says {size}"):
        _ = make_module(tmp_path).vocab
