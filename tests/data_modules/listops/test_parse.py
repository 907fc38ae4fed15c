"""The ListOps tokeniser against the official vocabulary, written out here independently."""

from __future__ import annotations

from data_modules.lra.listops import tokenize


def test_tokenize_follows_lra() -> None:
    assert tokenize("( ( ( ( [MAX 3 ) 4 ) 3 ) ] )") == [3, 10, 11, 10, 6]
    assert tokenize("( [MIN 0 9 ] )") == [2, 7, 16, 6]
    assert tokenize("[SM 1 [FOO ] )") == [5, 8, 1, 6]  # unknown symbol -> <unk> (1)


def test_lra_tokenizer_is_the_released_pipeline() -> None:
    """LRA's input_pipeline.py: tfds ``Tokenizer()`` keeps alphanumeric runs only, so the
    operators lose their ``[`` and every ``]``, ``(`` and ``)`` is dropped."""
    source = "( ( ( ( [MAX 3 ) 4 ) ( ( [MIN 0 9 ] ) ) ] )"
    assert tokenize(source, "lra") == [3, 10, 11, 2, 7, 16]
    assert tokenize(source) == [3, 10, 11, 2, 7, 16, 6, 6]  # brackets: ] -> X kept
    assert tokenize("[SM 1 [FOO ] )", "lra") == [5, 8, 1]  # unknown word -> <unk> (1)
