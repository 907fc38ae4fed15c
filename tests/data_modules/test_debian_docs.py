"""The Debian-docs corpus converter on a tiny fixture laid out as the packages install."""

import gzip

import pytest

from data_modules import debian_docs
from data_modules.wikitext import WikiText103DataModule

RST = """\
Memory barriers
===============

The kernel's well-known rules: 1,000 barriers, 3.5 times faster.
They *matter* in ``smp_mb()`` and :c:func:`rmb`.

Example::

    smp_mb();

Details
-------

.. note::

   A directive body is dropped.

Barriers order accesses. Barriers order accesses.
"""


def _root(tmp_path, n_rst=6):
    root = tmp_path / "root"
    dictd = root / "usr/share/dictd"
    dictd.mkdir(parents=True)
    gcide = "\n\n".join(
        f'Word{i} \\Word"{i}\\, n.\n   A barrier that orders accesses.\n   [1913 Webster]'
        for i in range(30)
    )
    with gzip.open(dictd / "gcide.dict.dz", "wt") as f:
        f.write("00-database-info\n\n" + gcide)
    for pattern in ("linux-doc-6.1", "python3.11"):
        src = root / f"usr/share/doc/{pattern}/html/_sources"
        src.mkdir(parents=True)
        for i in range(n_rst):
            (src / f"doc{i}.rst.txt").write_text(RST)
    return root


def test_prepare_writes_wikitext_layout_that_the_data_module_reads(tmp_path):
    root = _root(tmp_path)
    stats = debian_docs.prepare(tmp_path / "out", root, eval_words=40, min_count=3,
                                gcide_entries=10)  # fmt: skip
    train = (tmp_path / "out/wiki.train.tokens").read_text()
    assert " = Memory barriers = \n" in train
    assert " = = Details = = \n" in train
    assert (
        " The kernel 's well @-@ known rules : 1 @,@ 000 barriers , 3 @.@ 5 times faster . "
        "They matter in smp_mb ( ) and rmb . \n" in train
    )
    assert "smp_mb();" not in train and "directive body" not in train
    assert stats["valid"] >= 40 and stats["test"] >= 40 and stats["train"] > 0
    valid = (tmp_path / "out/wiki.valid.tokens").read_text()
    assert "<unk>" in valid or "<unk>" in train  # Word<i> appears once: below min_count
    data = WikiText103DataModule(str(tmp_path / "out"), batch_size=2, tgt_len=8,
                                 cache_dir=str(tmp_path / "cache"))  # fmt: skip
    assert data.vocab_size == stats["vocab"] + 1  # + <eos>


def test_missing_packages_name_the_apt_line_and_exit_2(tmp_path, capsys):
    code = debian_docs.main(["prepare", "--out", str(tmp_path / "o"), "--root", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "apt-get install dict-gcide linux-doc python3-doc" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("don't stop", ["do", "n't", "stop"]),
        ("e-mail, 2.5%", ["e", "@-@", "mail", ",", "2", "@.@", "5", "%"]),
    ],
)
def test_tokenize(text, tokens):
    assert debian_docs.tokenize(text) == tokens
