"""fmmformer-pl command line: ``python cli.py {fit,validate,test,predict} --config <yaml>``.

A LightningCLI with, beyond the stock one:
- the model's ``vocab_size`` / ``num_classes`` / ``max_length`` linked from the data module;
- ``seed_everything: true`` resolved to a concrete random seed that is written into the saved
  ``config.yaml`` (so the run can be repeated exactly);
- TensorBoard under ``logs/`` by default; a Rich progress bar in a terminal, plain lines otherwise;
- the monitoring callbacks of ``fmmformer_pl.tasks.callbacks`` on every run;
- one clear line, no traceback, for a typo in a config key, a missing data set, a wrong strategy.

Python use (tests): ``build_cli(["fit", "--config", path], run=False)`` returns the CLI with the
model, data module and trainer instantiated but nothing run.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import random
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, Optional

import torch.distributed
from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.strategies import StrategyRegistry

from data_modules.common.errors import DataError
from fmmformer_pl.tasks.callbacks import (
    BlendWeightMonitor,
    MajorityBaseline,
    PlainProgressBar,
    TrainingMonitor,
)

# The sizes every data module knows right after __init__; a task takes those it needs.
LINKED_SIZES = ("vocab_size", "num_classes", "max_length")


class ConfigError(Exception):
    """A configuration the CLI refuses before anything is built; the message says what to fix."""


_NOISE = ("Given value", "Subtypes:", "- Expected a <class 'NoneType'>")


class QuietArgumentParser(LightningArgumentParser):
    """Reports a bad option as one ``error:`` paragraph, without the 100-line usage listing.

    Abbreviated options are refused: argparse would otherwise read ``--trainer.max_step 3`` as
    ``--trainer.max_steps 3``, and a typo that happens to be a prefix would pass silently.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        if not self.exit_on_error:  # a subcommand's parser: its parent reports the error
            super().error(message, ex)
        lines = [
            line
            for line in str(message).splitlines()
            # The echo of the whole offending value (often the entire model config) and the list
            # of union members bury the one line that names the wrong key.
            if not line.strip().startswith(_NOISE)
        ]
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write("error: " + "\n".join(lines) + f"\n(options: {prog} --help)\n")
        sys.exit(2)


def check_strategy(strategy: Any) -> None:
    """Raises :class:`ConfigError` for a strategy name Lightning does not know, or for a
    DeepSpeed strategy without the ``deepspeed`` package."""
    if not isinstance(strategy, str):
        return
    name = strategy.lower()
    known = ["auto", *StrategyRegistry.available_strategies()]
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(
            f"trainer.strategy: unknown strategy {strategy!r}.{hint} Known: {', '.join(known)}."
        )
    if name.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            f"trainer.strategy={strategy!r} needs DeepSpeed: pip install -e '.[deepspeed]' "
            "(on a CUDA machine)."
        )


def default_progress_bar():
    """Rich in a terminal; plain lines when stdout is a file or pipe (cluster jobs, CI)."""
    return RichProgressBar() if sys.stdout.isatty() else PlainProgressBar()


class FMMCLI(LightningCLI):
    """See the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)  # tasks read OptimConfig
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_class", QuietArgumentParser)
        trainer_defaults = {
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "logs"},
            },
            # Added to (not replaced by) the callbacks a config lists.
            "callbacks": [
                TrainingMonitor(),
                BlendWeightMonitor(),
                MajorityBaseline(),
                default_progress_bar(),
            ],
        }
        trainer_defaults.update(kwargs.pop("trainer_defaults", None) or {})
        super().__init__(
            LightningModule, LightningDataModule, *args, trainer_defaults=trainer_defaults, **kwargs
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # A link whose source or target a class lacks is skipped (a language model has no
        # num_classes), so the three links serve every task.
        for size in LINKED_SIZES:
            parser.link_arguments(f"data.{size}", f"model.init_args.{size}", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")  # self.subcommand is set after this hook
        config = self.config[subcommand] if subcommand else self.config
        if config.get("seed_everything") is True:
            # Lightning's seed_everything() without a seed always picks 0: draw a real one. The
            # DDP workers Lightning starts re-run this script (LOCAL_RANK > 0) and take the seed
            # their parent drew, which seed_everything() left in PL_GLOBAL_SEED.
            inherited = os.environ.get("PL_GLOBAL_SEED")
            if inherited is not None and os.environ.get("LOCAL_RANK", "0") != "0":
                config["seed_everything"] = int(inherited)
            else:
                config["seed_everything"] = random.SystemRandom().randrange(2**31)
        trainer = config.get("trainer")
        if isinstance(trainer, Namespace):
            try:
                check_strategy(trainer.get("strategy"))
            except ConfigError as error:
                parser.error(str(error))


def build_cli(args: Optional[Sequence[str]] = None, run: bool = True, **kwargs: Any) -> FMMCLI:
    """The CLI on ``args`` (default ``sys.argv[1:]``); ``run=False`` instantiates only."""
    return FMMCLI(args=None if args is None else list(args), run=run, **kwargs)


def main(args: Optional[Sequence[str]] = None) -> int:
    """Runs the CLI; a data problem ends with its one-paragraph message and exit status 2."""
    try:
        build_cli(args)
    except DataError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    finally:
        # Lightning leaves a DDP process group up after fit; a gloo group still alive when the
        # interpreter exits sometimes aborts it (SIGABRT) after a successful run.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
