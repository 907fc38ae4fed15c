"""Every mistake a user can make ends with one ``error:`` line, exit status 2, no traceback and
no empty log folder; docs/errors.md shows each message, and this test checks the table against
what cli.py prints (``python -m tests.test_cli_errors`` prints the rows afresh).

The runs use relative paths inside a temporary folder (``data`` links to the fixture data), so
the messages are the same on every machine.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from cli import main
from data_modules.common.errors import TruncatedRowsWarning
from tests.app_data import write_listops
from tests.test_cli import ROOT

DOC = ROOT / "docs" / "errors.md"
LISTOPS = "configs/lra/listops/fmm2_band5.yaml"
TINY = ["--config", str(ROOT / LISTOPS), "--data.init_args.data_dir", "data",
        "--trainer.accelerator", "cpu", "--data.init_args.num_workers", "0",
        "--data.init_args.max_length", "32", "--model.init_args.encoder.dim", "16",
        "--model.init_args.encoder.ffn_dim", "32"]  # fmt: skip

# id -> (error class, the command's arguments after `python cli.py`)
CASES: dict[str, tuple[str, list[str]]] = {
    "unknown-key": ("ConfigError", ["fit", *TINY, "--trainer.max_stepz", "3"]),
    "bandwidth": ("ConfigError", ["fit", *TINY, "--model.init_args.encoder.attention.bandwidth", "0"]),
    "feature-map": ("ConfigError", ["fit", *TINY, "--model.init_args.encoder.attention.feature_maps", "[elux]"]),
    "heads": ("ConfigError", ["fit", *TINY, "--model.init_args.encoder.num_heads", "3"]),
    "lr": ("ConfigError", ["fit", *TINY, "--model.init_args.optim.lr", "-1"]),
    "batch-size": ("ConfigError", ["fit", *TINY, "--data.init_args.batch_size", "0"]),
    "periodic": ("ConfigError", ["fit", *TINY, "--periodic_checkpoint.minutes", "0"]),
    "strategy": ("ConfigError", ["fit", *TINY, "--trainer.strategy", "ddpp"]),
    "accelerator": ("ConfigError", ["fit", *TINY, "--trainer.accelerator", "gpu"]),
    "no-weights": ("CheckpointError", ["test", *TINY]),
    "missing-checkpoint": ("CheckpointError", ["test", *TINY, "--ckpt_path", "missing.ckpt"]),
    "truncated-checkpoint": ("CheckpointError", ["test", *TINY, "--ckpt_path", "half.ckpt"]),
    "foreign-checkpoint": ("CheckpointError", ["test", *TINY, "--ckpt_path", "other.ckpt"]),
    "missing-data": ("DataNotFoundError", ["fit", *TINY, "--data.init_args.data_dir", "nowhere"]),
}  # fmt: skip
# Only a GPU machine prints these differently; the table shows the CPU machine's words.
MACHINE = {
    "accelerator": re.compile(r"\(torch [^)]*\)"),
    "truncated-checkpoint": re.compile(r"\d+ bytes"),  # the archive's size varies with torch
}


def prepare(folder: Path) -> None:
    write_listops(folder / "data")
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, folder / "other.ckpt")
    good = folder / "good.ckpt"
    torch.save({"state_dict": {"weight": torch.zeros(1000)}}, good)
    (folder / "half.ckpt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])


def run(case: str, capsys) -> tuple[int, str]:
    try:
        code = main(CASES[case][1])
    except SystemExit as exit_info:  # the parser's own errors
        code = exit_info.code
    return code, capsys.readouterr().err


def documented() -> dict[str, tuple[str, str]]:
    """id -> (class, message) from the table in docs/errors.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"\| `([a-z-]+)` \| `(\w+)` \| 2 \| `(error: .*)` \|$", line)
        if match:
            rows[match[1]] = (match[2], match[3].replace("\\|", "|"))
    return rows


def normalise(case: str, text: str) -> str:
    pattern = MACHINE.get(case)
    return pattern.sub("...", text) if pattern else text


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("errors")
    prepare(folder)
    return folder


def test_the_table_lists_every_case():
    assert set(documented()) == set(CASES)


@pytest.mark.parametrize("case", list(CASES))
def test_each_user_error_is_one_documented_line_with_status_2(case, folder, monkeypatch, capsys):
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    torch.set_num_threads(1)
    code, err = run(case, capsys)
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("error: "), err
    first = err.strip().splitlines()[0]
    assert len(err.strip().splitlines()) <= 2, err  # the parser adds "(options: ... --help)"
    cls, message = documented()[case]
    assert cls == CASES[case][0]
    assert normalise(case, first) == normalise(case, message)
    assert not (folder / "logs").exists(), "a failed start left a log folder"


def test_a_listops_row_longer_than_max_length_warns_with_the_count(folder):
    from data_modules.lra import ListOpsDataModule

    data = ListOpsDataModule(data_dir=str(folder / "data"), max_length=5, batch_size=2,
                             cache_dir=str(folder / "cache5"))  # fmt: skip
    # 2 of the 8 training rows have 6 or 7 tokens; max_length 5 cuts them.
    expected = r"2 of 8 rows of the train split are longer than truncate_length=5 .* has 7\)"
    with pytest.warns(TruncatedRowsWarning, match=expected):
        data.setup("fit")


def test_help_says_what_the_program_is(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "fmmformer-pl: train and evaluate FMMformer" in out
    assert "Lightning Trainer command line tool" not in out


if __name__ == "__main__":  # print the table's rows from this machine's messages
    import contextlib
    import io
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        prepare(Path(tmp))
        os.chdir(tmp)
        for case, (cls, _) in CASES.items():
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                try:
                    main(CASES[case][1])
                except SystemExit:
                    pass
            message = err.getvalue().strip().splitlines()[0].replace("|", "\\|")
            print(f"| `{case}` | `{cls}` | 2 | `{message}` |", file=sys.__stdout__)
