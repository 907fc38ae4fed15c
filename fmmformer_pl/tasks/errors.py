"""The errors a run ends with on purpose: each says what happened and what to do, in one line.

``cli.py`` prints ``error: <message>`` (or the interruption line) without a traceback and exits
with ``exit_status``: 2 for a mistake in the command or its files (the convention of argparse
and most Unix tools), 128 + the signal number for a run stopped by a signal (what a shell
reports for a process the signal killed), so make, shells and schedulers see the truth.
docs/errors.md lists every class with an example message (tests/test_cli_errors.py checks it).
"""

from __future__ import annotations

import signal
from typing import Optional


class UserError(Exception):
    """Something the user can fix; the message says what."""

    exit_status = 2


class ConfigError(UserError):
    """A value, option or combination of them the CLI refuses before anything runs."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, or not what the command needs."""


class Interrupted(Exception):
    """A run stopped by SIGTERM or SIGINT.

    ``checkpoint``: the resumable checkpoint written before stopping (fit), or None.
    ``step``: the optimiser step the stop happened after (None outside fit).
    ``at_once``: True when the run was abandoned mid-step (a second signal, or a signal
    before the first step), so nothing was written.
    """

    def __init__(
        self,
        signum: int,
        checkpoint: Optional[str] = None,
        step: Optional[int] = None,
        at_once: bool = False,
        stage: str = "run",
    ) -> None:
        self.signum = int(signum)
        self.checkpoint = checkpoint
        self.step = step
        self.at_once = at_once
        self.stage = stage
        super().__init__(self.summary())

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    def summary(self) -> str:
        where = f" after step {self.step}" if self.step is not None else ""
        if self.checkpoint is not None:
            return f"{self.stage} stopped by {self.signal_name}{where}; resumable checkpoint {self.checkpoint}"
        why = "at once (second signal)" if self.at_once and self.step is not None else ""
        return f"{self.stage} stopped by {self.signal_name}{where} {why}".rstrip() + (
            "; nothing was written"
        )
