"""Malformed data: only our clear errors (never another exception), or counted skips.

Property tests feed the row parsers arbitrary bytes; example tests check that each kind of
malformed row names the file, the line and what was expected, and that ``on_bad_row="skip"``
drops exactly the bad rows and reports how many.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_modules.common import BadRows, DataFormatError, SkippedRowsWarning
from data_modules.lra import ListOpsDataModule, RetrievalDataModule, listops, retrieval
from data_modules.lra.text import check_review

from .conftest import AAN_ROWS, LISTOPS_ROWS

PROPERTY = settings(max_examples=300, deadline=None)
line_bytes = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b" "))
# Lines that are often nearly valid, to reach the accept path and the label checks too.
listops_pieces = st.sampled_from(
    [b"(", b")", b"[MIN", b"[MAX", b"[MED", b"[SM", b"]", b"3", b"9", b"\t", b" ", b"12", b"-1",
     b"x", b"\xff", b"\r", b"", b"3.0", b"\xd9\xa3"]
)  # fmt: skip
listops_lines = st.lists(listops_pieces, max_size=12).map(b" ".join) | line_bytes
aan_labels = st.sampled_from([b"0.0", b"1.0", b"1", b"0", b"0.5", b"nan", b"inf", b"-1", b"", b"a"])
aan_lines = (
    st.tuples(aan_labels, *[st.binary(max_size=8).map(lambda b: b.replace(b"\n", b""))] * 4).map(
        b"\t".join
    )
    | line_bytes
)


@PROPERTY
@given(listops_lines)
def test_listops_row_parser_only_raises_data_format_error(line: bytes) -> None:
    try:
        ids, label = listops.parse_row(line, "basic_train.tsv", 7)
    except DataFormatError as error:
        assert error.path == "basic_train.tsv" and error.line_or_record == 7
        assert "basic_train.tsv, line 7: expected" in str(error) and "\n" not in str(error)
        return
    assert 0 <= label <= 9 and ids and all(1 <= i <= 16 for i in ids)


@PROPERTY
@given(aan_lines)
def test_aan_row_parser_only_raises_data_format_error(line: bytes) -> None:
    try:
        text1, text2, label = retrieval.parse_row(line, "pairs.tsv", 3, strict_utf8=True)
    except DataFormatError as error:
        assert error.line_or_record == 3 and "pairs.tsv, line 3: expected" in str(error)
        return
    assert label in (0, 1) and text1.strip() and text2.strip()
    text1.decode("utf-8")


@PROPERTY
@given(st.binary(max_size=40), st.booleans())
def test_review_check_only_raises_data_format_error(data: bytes, strict: bool) -> None:
    try:
        check_review(data, Path("r.txt"), strict)
    except DataFormatError as error:
        assert error.path == "r.txt"
        return
    assert data.strip()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(listops_lines, max_size=8))
def test_listops_file_skip_counts_every_bad_line(tmp_path: Path, lines: list[bytes]) -> None:
    path = tmp_path / "basic_test.tsv"
    path.write_bytes(b"Source\tTarget\n" + b"".join(line + b"\n" for line in lines))
    bad_rows = BadRows("skip")
    rows = list(listops.read_listops_tsv(path, bad_rows))
    assert len(rows) + bad_rows.skipped == len(lines)
    try:
        strict = list(listops.read_listops_tsv(path))
    except DataFormatError as error:
        assert bad_rows.skipped > 0 and str(path) in str(error)
    else:
        assert bad_rows.skipped == 0 and strict == rows


# -- ListOps: each kind of malformed row ---------------------------------------------------------
LISTOPS_BAD = {
    "one column": (b"( ( [MAX 3 ) ] )", "2 tab-separated fields"),
    "three columns": (b"( ( [MAX 3 ) ] )\t3\t1", "2 tab-separated fields"),
    "word label": (b"( ( [MAX 3 ) ] )\tthree", "an integer Target 0-9"),
    "float label": (b"( ( [MAX 3 ) ] )\t3.0", "an integer Target 0-9"),
    "negative label": (b"( ( [MAX 3 ) ] )\t-1", "an integer Target 0-9"),
    "non-ASCII digit": ("( ( [MAX 3 ) ] )\t\u0663".encode(), "an integer Target 0-9"),
    "label out of range": (b"( ( [MAX 3 ) ] )\t12", "a Target in the range 0-9"),
    "empty source": (b"( )\t3", "a non-empty Source"),
    "undecodable bytes": (b"( ( [MAX \xff ) ] )\t3", "UTF-8 text"),
}


@pytest.mark.parametrize("case", sorted(LISTOPS_BAD))
def test_listops_bad_row_error_names_file_line_and_expectation(make_listops, case) -> None:
    line, expected = LISTOPS_BAD[case]
    rows = {**LISTOPS_ROWS, "val": [LISTOPS_ROWS["val"][0], line]}
    dm = ListOpsDataModule(str(make_listops(rows)))
    with pytest.raises(DataFormatError) as info:
        dm.prepare_data()
    error = info.value
    assert error.path.endswith("listops-1000/basic_val.tsv") and error.line_or_record == 3
    assert f"basic_val.tsv, line 3: expected {expected}" in str(error)


def test_listops_skip_drops_bad_rows_and_reports_count(make_listops) -> None:
    rows = {**LISTOPS_ROWS, "train": [LISTOPS_BAD["word label"][0], *LISTOPS_ROWS["train"],
                                      LISTOPS_BAD["empty source"][0]]}  # fmt: skip
    dm = ListOpsDataModule(str(make_listops(rows)), on_bad_row="skip", max_length=16)
    with pytest.warns(SkippedRowsWarning, match=r"skipped 2 malformed row\(s\) in the train split"):
        dm.prepare_data()
    dm.setup("fit")
    assert dm.skipped_rows["train"] == 2 and dm.skipped_rows["val"] == 0
    assert [dm.dataset("train")[i]["label"] for i in range(3)] == [4, 4, 5]


@pytest.mark.parametrize("on_bad_row", ["error", "skip"])
@pytest.mark.parametrize(
    "content", [b"", b"source\ttarget\n( ( [MAX 3 ) ] )\t3\n", b"( ( [MAX 3 ) ] )\t3\n"]
)
def test_listops_wrong_header_is_always_an_error(make_listops, content, on_bad_row) -> None:
    root = make_listops()
    (root / "lra_release" / "listops-1000" / "basic_test.tsv").write_bytes(content)
    with pytest.raises(DataFormatError, match=r"basic_test\.tsv, line 1: expected the header"):
        ListOpsDataModule(str(root), on_bad_row=on_bad_row).prepare_data()


def test_invalid_policy_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="on_bad_row"):
        ListOpsDataModule(str(tmp_path), on_bad_row="ignore")


# -- Retrieval: each kind of malformed row --------------------------------------------------------
AAN_BAD = {
    "four columns": (b"1.0\ta\tb\ttext", "5 tab-separated fields"),
    "six columns": (b"1.0\ta\tb\tx\ty\tz", "5 tab-separated fields"),
    "word label": (b"yes\ta\tb\tx\ty", "a numeric label 0.0 or 1.0"),
    "non-ASCII label": (b"\xff1\ta\tb\tx\ty", "a numeric label 0.0 or 1.0"),
    "fractional label": (b"0.5\ta\tb\tx\ty", "a label equal to 0 or 1"),
    "label out of range": (b"2.0\ta\tb\tx\ty", "a label equal to 0 or 1"),
    "nan label": (b"nan\ta\tb\tx\ty", "a label equal to 0 or 1"),
    "empty text1": (b"1.0\ta\tb\t\ty", "a non-empty text1"),
    "blank text2": (b"1.0\ta\tb\tx\t  ", "a non-empty text2"),
}


@pytest.mark.parametrize("case", sorted(AAN_BAD))
def test_aan_bad_row_error_names_file_line_and_expectation(make_aan, case) -> None:
    line, expected = AAN_BAD[case]
    rows = {**AAN_ROWS, "test": [*AAN_ROWS["test"], line]}
    with pytest.raises(DataFormatError) as info:
        RetrievalDataModule(str(make_aan(rows))).prepare_data()
    assert info.value.path.endswith("tsv_data/new_aan_pairs.test.tsv")
    assert f"new_aan_pairs.test.tsv, line 2: expected {expected}" in str(info.value)


def test_aan_undecodable_text_only_an_error_when_strict(make_aan) -> None:
    root = make_aan()  # the test split holds bytes 0x00 0xff
    dm = RetrievalDataModule(str(root), max_length=8)
    dm.setup("test")
    assert dm.dataset("test")[0]["input2"].tolist() == [1, 256]
    with pytest.raises(DataFormatError, match=r"line 1: expected UTF-8 text in text2"):
        RetrievalDataModule(str(root), strict_utf8=True).prepare_data()


def test_aan_skip_reports_count(make_aan) -> None:
    rows = {**AAN_ROWS, "eval": [AAN_BAD["four columns"][0], *AAN_ROWS["eval"], b""]}
    dm = RetrievalDataModule(str(make_aan(rows)), on_bad_row="skip", max_length=8)
    with pytest.warns(SkippedRowsWarning, match=r"skipped 2 malformed row\(s\) in the eval split"):
        dm.setup("validate")
    assert len(dm.dataset("val")) == 1 and dm.skipped_rows == {"eval": 2}
