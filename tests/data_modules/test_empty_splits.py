"""A split with no rows is an error naming the file, never a silently empty data set."""

from __future__ import annotations

import pytest

from data_modules.common.errors import DataFormatError
from data_modules.lra import ListOpsDataModule, RetrievalDataModule
from data_modules.wikitext import WikiText103DataModule

from .conftest import AAN_ROWS, LISTOPS_ROWS
from .fixtures_c2 import write_wikitext


def test_a_listops_file_with_only_its_header_is_an_error(make_listops):
    root = make_listops({**LISTOPS_ROWS, "val": []})
    module = ListOpsDataModule(str(root), batch_size=2, max_length=16)
    with pytest.raises(DataFormatError) as info:
        module.prepare_data()
    assert "basic_val.tsv" in str(info.value)
    assert "at least one row in the val split" in str(info.value)


def test_a_split_whose_rows_were_all_skipped_says_how_many(make_listops):
    root = make_listops({**LISTOPS_ROWS, "test": [("( [MAX 3 ] )", "eleven")]})
    module = ListOpsDataModule(str(root), batch_size=2, max_length=16, on_bad_row="skip")
    with pytest.raises(DataFormatError, match=r"basic_test\.tsv.*1 malformed row\(s\) skipped"):
        module.prepare_data()


def test_an_empty_aan_file_is_an_error(make_aan):
    root = make_aan({**AAN_ROWS, "eval": []})
    module = RetrievalDataModule(str(root), batch_size=2, max_length=16)
    with pytest.raises(DataFormatError, match=r"new_aan_pairs\.eval\.tsv"):
        module.prepare_data()


def test_an_empty_wikitext_valid_file_is_an_error(tmp_path):
    folder = write_wikitext(tmp_path, valid="")
    module = WikiText103DataModule(str(folder), batch_size=2, tgt_len=4)
    with pytest.raises(DataFormatError, match=r"wiki\.valid\.tokens.*an empty file"):
        _ = module.vocab_size
