"""Command-line options are matched exactly: a prefix of an option is an error, not that option."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli import main

LISTOPS = Path(__file__).resolve().parents[1] / "configs" / "lra" / "listops" / "fmm2_band5.yaml"


@pytest.mark.parametrize("option", ["--trainer.max_step", "--trainer.max_epoch"])
def test_an_abbreviated_option_is_refused_not_expanded(option, tmp_path, monkeypatch, capsys):
    # argparse's default would read --trainer.max_step 3 as --trainer.max_steps 3.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(LISTOPS), option, "3"])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and stderr.startswith("error: ")
    assert f"unrecognized arguments: {option} 3" in stderr
