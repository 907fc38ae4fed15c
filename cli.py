"""fmmformer-pl command line: ``python cli.py {fit,validate,test,predict} --config <yaml>``.

A LightningCLI with, beyond the stock one:
- the model's ``vocab_size`` / ``num_classes`` / ``max_length`` linked from the data module;
- ``seed_everything: true`` resolved to a concrete random seed that is written into the saved
  ``config.yaml`` (so the run can be repeated exactly);
- TensorBoard under ``logs/`` by default, each run in its own ``version_<n>`` folder (its
  checkpoints included), a resumed fit in the folder of the checkpoint it resumes, and
  ``logs/<name>/latest`` pointing at the newest fit; ``hp_metric`` is the best validation
  metric, the resolved config is logged as text, and attention maps as images;
- a Rich progress bar in a terminal, plain lines otherwise;
- the callbacks of ``fmmformer_pl.tasks`` on every run: monitoring, a periodic checkpoint
  (``periodic_checkpoint``), and a clean stop on SIGTERM / SIGINT (``tasks/signals.py``) that
  writes a resumable checkpoint, prints the command that resumes, and exits 128 + signal;
- one clear line and exit status 2, no traceback, for every mistake a user can make: a typo in
  a config key, an invalid value, a missing data set or checkpoint, a wrong strategy or
  accelerator, ``test`` without weights (docs/errors.md lists them).

Python use (tests): ``build_cli(["fit", "--config", path], run=False)`` returns the CLI with the
model, data module and trainer instantiated but nothing run.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import random
import re
import shlex
import shutil
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from textwrap import indent
from typing import Any, NoReturn, Optional

# jsonargparse 4.49 deprecated calls that LightningCLI 2.6 still makes (instantiate_classes,
# skip_none): the library's own switch turns their warnings off; they are not ours to fix.
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

import torch.distributed  # noqa: E402
from jsonargparse import Namespace  # noqa: E402
from lightning.fabric.utilities.exceptions import MisconfigurationException  # noqa: E402
from lightning.pytorch import LightningDataModule, LightningModule, Trainer  # noqa: E402
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar  # noqa: E402
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from lightning.pytorch.strategies import StrategyRegistry  # noqa: E402
from lightning.pytorch.utilities.exceptions import SIGTERMException  # noqa: E402

from data_modules.common.errors import DataError  # noqa: E402
from fmmformer_pl.tasks.attention_maps import AttentionMapLogger  # noqa: E402
from fmmformer_pl.tasks.callbacks import (  # noqa: E402
    BestMetricLogger,
    BlendWeightMonitor,
    MajorityBaseline,
    PeriodicCheckpoint,
    PlainProgressBar,
    TrainingMonitor,
)
from fmmformer_pl.tasks.checkpoints import (  # noqa: E402
    NO_CHECKPOINT,
    SPECIAL_CKPT_PATHS,
    check_checkpoint,
    guard_restore,
    resume_version,
)
from fmmformer_pl.tasks.errors import CheckpointError, ConfigError, Interrupted, UserError  # noqa: E402
from fmmformer_pl.tasks.signals import StopOnSignal, threading_main  # noqa: E402

DESCRIPTION = (
    "fmmformer-pl: train and evaluate FMMformer (attention = banded softmax near field + "
    "kernelised linear far field, blended) on the Long Range Arena and WikiText-103. "
    "Subcommands fit / validate / test / predict, each with --config <yaml> (see configs/ and "
    "docs/app.md); e.g. `python cli.py fit --config configs/quickstart.yaml`."
)

# The sizes every data module knows right after __init__; a task takes those it needs.
LINKED_SIZES = ("vocab_size", "num_classes", "max_length")


_NOISE = ("Given value", "Subtypes:", "- Expected a <class 'NoneType'>")


class QuietArgumentParser(LightningArgumentParser):
    """Reports a bad option as one ``error:`` paragraph, without the 100-line usage listing.

    Abbreviated options are refused: argparse would otherwise read ``--trainer.max_step 3`` as
    ``--trainer.max_steps 3``, and a typo that happens to be a prefix would pass silently.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("description", DESCRIPTION)
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


def check_accelerator(accelerator: Any) -> None:
    """Raises :class:`ConfigError` for a GPU accelerator on a machine without a usable one
    (Lightning's own error is a traceback naming no way out)."""
    if not isinstance(accelerator, str):
        return
    name = accelerator.lower()
    if name in ("gpu", "cuda") and not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + (
            ", a CPU-only build"
            if torch.version.cuda is None
            else f" with CUDA {torch.version.cuda}"
        )
        raise ConfigError(
            f"trainer.accelerator={accelerator!r}, but this machine has no usable CUDA GPU "
            f"({build}). Use --trainer.accelerator cpu, or auto (the GPU where there is one)."
        )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator!r}, but Apple's MPS is not available here. "
            "Use --trainer.accelerator cpu or auto."
        )


def default_progress_bar():
    """Rich in a terminal; plain lines when stdout is a file or pipe (cluster jobs, CI)."""
    return RichProgressBar() if sys.stdout.isatty() else PlainProgressBar()


def _tensorboard_init_args(trainer: Any) -> Optional[Namespace]:
    """The init_args of the config's TensorBoardLogger, or None for another logger."""
    logger = trainer.get("logger") if isinstance(trainer, Namespace) else None
    if isinstance(logger, Namespace) and str(logger.get("class_path", "")).endswith(
        "TensorBoardLogger"
    ):
        if logger.get("init_args") is None:
            logger["init_args"] = Namespace()
        return logger["init_args"]
    return None


class SaveRunConfig(SaveConfigCallback):
    """Beside the stock ``config.yaml``: the config as text in TensorBoard, a ``latest`` link
    to the run's folder (``logs/<name>/latest``) when a fit starts, and at its end one line
    naming the run's checkpoint folder."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        text = self.parser.dump(self.config)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                # Indented: TensorBoard renders text as Markdown, and this keeps it verbatim.
                logger.experiment.add_text("config", indent(text, "    "), trainer.global_step)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        log_dir = trainer.log_dir
        if not trainer.is_global_zero or log_dir is None:
            return
        run = Path(log_dir)
        if not re.fullmatch(r"version_\d+", run.name):
            return
        link = run.parent / "latest"
        if link.exists() and not link.is_symlink():
            return  # someone's own folder: leave it
        temporary = run.parent / f".latest-{os.getpid()}"
        try:
            temporary.unlink(missing_ok=True)
            temporary.symlink_to(run.name, target_is_directory=True)
            os.replace(temporary, link)
        except OSError:  # a file system without symbolic links: the printed path suffices
            temporary.unlink(missing_ok=True)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        callback = trainer.checkpoint_callback
        if not trainer.is_global_zero or callback is None or not callback.dirpath:
            return
        folder = Path(callback.dirpath)
        last = getattr(callback, "last_model_path", "")
        best = getattr(callback, "best_model_path", "")
        if folder.is_dir():
            named = f"; last: {last}" if last else f"; best: {best}" if best else ""
            print(f"Checkpoints of this run: {folder}{named}", flush=True)


_ACTIVE: Optional[FMMCLI] = None  # the CLI main() runs (it may fail inside its __init__)


class FMMCLI(LightningCLI):
    """See the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)  # tasks read OptimConfig
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        kwargs.setdefault("parser_class", QuietArgumentParser)
        trainer_defaults = {
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "logs", "default_hp_metric": False},
            },
            # Added to (not replaced by) the callbacks a config lists.
            "callbacks": [
                TrainingMonitor(),
                BlendWeightMonitor(),
                MajorityBaseline(),
                default_progress_bar(),
                StopOnSignal(),
                BestMetricLogger(),
                AttentionMapLogger(),
            ],
        }
        trainer_defaults.update(kwargs.pop("trainer_defaults", None) or {})
        self._default_callbacks = list(trainer_defaults["callbacks"])
        #: the log folder of the run and which of its ancestors existed before it ran (see main)
        self.run_folder: Optional[Path] = None
        self.existed: set[Path] = set()
        global _ACTIVE
        _ACTIVE = self
        super().__init__(
            LightningModule, LightningDataModule, *args, trainer_defaults=trainer_defaults, **kwargs
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # A link whose source or target a class lacks is skipped (a language model has no
        # num_classes), so the three links serve every task.
        for size in LINKED_SIZES:
            parser.link_arguments(f"data.{size}", f"model.init_args.{size}", apply_on="instantiate")
        # A top-level config key: `periodic_checkpoint: {minutes: 10, steps: null}`.
        parser.add_lightning_class_args(PeriodicCheckpoint, "periodic_checkpoint")

    def _run_subcommand(self, subcommand: str) -> None:
        self.run_folder = _run_folder(self)
        self.existed = _existing_ancestors(self.run_folder)
        super()._run_subcommand(subcommand)

    def instantiate_classes(self) -> None:
        """Instantiates as LightningCLI does; an invalid value (a ``ValueError`` from a config
        dataclass or a module's ``__init__``) or a configuration Lightning refuses becomes a
        :class:`ConfigError` with the innermost message."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if isinstance(config.get("trainer"), Namespace):
            # Here, not at parse time: a config file may name a GPU that only its run needs.
            check_accelerator(config.trainer.get("accelerator"))
        try:
            super().instantiate_classes()
        except (ValueError, MisconfigurationException) as error:
            raise ConfigError(innermost_message(error)) from error

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Trainer:
        # Our default callbacks give way to the trainer's switches and to the config's own:
        # `enable_progress_bar: false` or a progress bar in the config drops ours (two bars, or
        # a bar with the switch off, are errors in Lightning); `enable_checkpointing: false`
        # drops the periodic checkpoint and makes a signal stop write nothing.
        listed = config.get("callbacks") or []
        listed = listed if isinstance(listed, list) else [listed]
        checkpointing = config.get("enable_checkpointing") is not False
        drop_bar = config.get("enable_progress_bar") is False or any(
            isinstance(c, ProgressBar) for c in listed
        )
        defaults = []
        for callback in self._default_callbacks:
            if isinstance(callback, ProgressBar) and drop_bar:
                continue
            if isinstance(callback, StopOnSignal):
                callback.checkpoint = checkpointing
            defaults.append(callback)
        self.trainer_defaults["callbacks"] = defaults
        callbacks = [
            c
            for c in callbacks
            if not (isinstance(c, PeriodicCheckpoint) and (not checkpointing or not c.enabled))
        ]
        trainer = super()._instantiate_trainer(config, callbacks)
        guard_restore(trainer)
        return trainer

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
        try:
            if isinstance(trainer, Namespace):
                check_strategy(trainer.get("strategy"))
            if subcommand:
                self._check_weights(subcommand, config)
        except ConfigError as error:
            parser.error(str(error))
        # (a CheckpointError goes to main: it prints it as it is, with the file it names)
        tensorboard = _tensorboard_init_args(trainer)
        if tensorboard is not None:
            # Lightning's default hp_metric is a constant -1; BestMetricLogger writes the real one.
            tensorboard["default_hp_metric"] = False
            ckpt_path = config.get("ckpt_path")
            if subcommand == "fit" and ckpt_path and tensorboard.get("version") is None:
                version = resume_version(tensorboard, ckpt_path)
                if version is not None:  # continue the run's own curves and checkpoint folder
                    tensorboard["version"] = version
                    warnings.filterwarnings("ignore", "Checkpoint directory .* is not empty")

    @staticmethod
    def _check_weights(subcommand: str, config: Namespace) -> None:
        """``ckpt_path``: an existing, readable checkpoint; for validate / test / predict one is
        required (``none`` evaluates the initial weights on purpose)."""
        ckpt_path = config.get("ckpt_path")
        if isinstance(ckpt_path, str) and ckpt_path.lower() == NO_CHECKPOINT:
            config["ckpt_path"] = None
            return
        if ckpt_path is None:
            if subcommand in ("validate", "test", "predict"):
                raise CheckpointError(
                    f"{subcommand} needs trained weights: pass --ckpt_path <file> (a fit prints "
                    "its checkpoint folder; logs/<name>/latest/checkpoints/last.ckpt is the "
                    f"newest fit's), or --ckpt_path none to {subcommand} the untrained model"
                )
            return
        if ckpt_path in SPECIAL_CKPT_PATHS or str(ckpt_path).startswith("registry"):
            return
        check_checkpoint(str(ckpt_path))


def build_cli(args: Optional[Sequence[str]] = None, run: bool = True, **kwargs: Any) -> FMMCLI:
    """The CLI on ``args`` (default ``sys.argv[1:]``); ``run=False`` instantiates only."""
    return FMMCLI(args=None if args is None else list(args), run=run, **kwargs)


def innermost_message(error: BaseException) -> str:
    """The message of the exception that started a chain (jsonargparse wraps a class's own
    ValueError in its Union-matching errors, the first line of which says nothing)."""
    while error.__cause__ is not None or (
        error.__context__ is not None and not error.__suppress_context__
    ):
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def resume_command(args: Sequence[str], checkpoint: str) -> str:
    """``python cli.py <args>`` with ``--ckpt_path`` replaced by ``checkpoint``."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--ckpt_path":
            skip = True
            continue
        if arg.startswith("--ckpt_path="):
            continue
        kept.append(arg)
    return shlex.join(["python", "cli.py", *kept, "--ckpt_path", checkpoint])


def _run_folder(cli: FMMCLI) -> Optional[Path]:
    """The log folder this run writes (``logs/<name>/version_<n>``), if a logger has one."""
    try:
        log_dir = cli.trainer.log_dir
    except Exception:  # noqa: BLE001 - a logger without a folder
        return None
    return Path(log_dir) if log_dir else None


def _remove_if_new(folder: Optional[Path], existed: set[Path]) -> None:
    """Removes ``folder`` and its parents that this run created, unless a checkpoint is in
    them: a run that failed before training leaves no empty log folder behind."""
    if folder is None or folder in existed or not folder.is_dir():
        return
    if any(folder.rglob("*.ckpt")):
        return
    shutil.rmtree(folder, ignore_errors=True)
    parent = folder.parent
    while parent not in existed and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def _cleanup() -> None:
    if _ACTIVE is not None and _is_global_zero(_ACTIVE):
        _remove_if_new(_ACTIVE.run_folder, _ACTIVE.existed)


def _is_global_zero(cli: FMMCLI) -> bool:
    trainer = getattr(cli, "trainer", None)
    return trainer is None or trainer.is_global_zero


def _existing_ancestors(folder: Optional[Path]) -> set[Path]:
    if folder is None:
        return set()
    return {p for p in (folder, *folder.parents) if p.exists()}


class _Tips(logging.Filter):
    """Drops Lightning's advertising ("💡 Tip: ... litlogger / litmodels")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def _quiet_lightning() -> None:
    tips = _Tips()
    for name in ("lightning.fabric.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Tips) for f in logger.filters):
            logger.addFilter(tips)


_quiet_lightning()
# Lightning 2.6's pytree helper calls an API torch 2.13 deprecated, on every batch of every run.
warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum, stage="run")


def main(args: Optional[Sequence[str]] = None) -> int:
    """Runs the CLI. A user's mistake ends with one ``error:`` line and exit status 2; a run
    stopped by a signal with one line (the checkpoint and the command that resumes) and
    128 + the signal number."""
    argv = list(sys.argv[1:] if args is None else args)
    previous = signal.getsignal(signal.SIGTERM)
    if threading_main():
        signal.signal(signal.SIGTERM, _raise_interrupted)  # until the trainer's handler is set
    global _ACTIVE
    _ACTIVE = None
    try:
        build_cli(None if args is None else argv)
    except (UserError, DataError) as error:
        _cleanup()
        sys.stderr.write(f"error: {error}\n")
        return 2
    except (Interrupted, KeyboardInterrupt, SIGTERMException) as stop:
        if not isinstance(stop, Interrupted):
            signum = signal.SIGINT if isinstance(stop, KeyboardInterrupt) else signal.SIGTERM
            stop = Interrupted(signum)
        if stop.checkpoint is None:
            _cleanup()
        cli = _ACTIVE
        if cli is None or _is_global_zero(cli):
            line = stop.summary()
            if stop.checkpoint is not None:
                line += f"; resume: {resume_command(argv, stop.checkpoint)}"
            sys.stderr.write(f"\n{line}\n")
        return stop.exit_status
    finally:
        if threading_main():
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        # Lightning leaves a DDP process group up after fit; a gloo group still alive when the
        # interpreter exits sometimes aborts it (SIGABRT) after a successful run.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
