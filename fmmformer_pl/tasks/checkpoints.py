"""Checkpoints as the command line meets them: checked before a run (exists, is a complete
PyTorch archive or a DeepSpeed folder), restored with errors that name the file and what is
wrong, and mapped to the run folder they belong to (so a resumed fit logs into it)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import Trainer

from fmmformer_pl.tasks.errors import CheckpointError

# ckpt_path values Lightning resolves itself (never a file name here).
SPECIAL_CKPT_PATHS = ("last", "best", "hpc")
# `--ckpt_path none`: evaluate the weights as initialised, on purpose.
NO_CHECKPOINT = "none"


def check_checkpoint(path: str) -> None:
    """Raises :class:`CheckpointError` unless ``path`` is a readable checkpoint: a PyTorch file
    (a zip archive holding a pickle) or a DeepSpeed checkpoint folder. Reads only the archive's
    directory (at its end, so a truncated file fails here), never unpickles."""
    target = Path(path)
    if not target.exists():
        folder = target.parent
        near = sorted(p.name for p in folder.glob("*.ckpt"))[:5] if folder.is_dir() else []
        hint = f" (checkpoints in {folder}/: {', '.join(near)})" if near else ""
        raise CheckpointError(f"checkpoint {path}: no such file or folder{hint}")
    if target.is_dir():
        if (target / "latest").is_file() or (target / "checkpoint").is_dir():
            return  # DeepSpeed
        raise CheckpointError(
            f"checkpoint {path}: a folder that is not a DeepSpeed checkpoint (no `latest` file or "
            "`checkpoint/` inside); pass the .ckpt file"
        )
    size = target.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path}: the file is empty (0 bytes)")
    try:
        with zipfile.ZipFile(target) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(
            f"checkpoint {path}: not a readable PyTorch checkpoint ({size} bytes; {error}): a "
            "file cut short (a copy or save interrupted?) or not a checkpoint at all"
        ) from None
    if not any(name.endswith("data.pkl") for name in names):
        raise CheckpointError(f"checkpoint {path}: a zip archive, but not a PyTorch checkpoint")


def resume_version(init_args: Any, ckpt_path: str) -> Optional[str]:
    """The version folder a checkpoint lies in when it is one of this logger's runs
    (``<save_dir>/<name>/<version>/checkpoints/<file>``), else None."""
    checkpoint = Path(ckpt_path).resolve()
    if checkpoint.parent.name != "checkpoints":
        return None
    version = checkpoint.parent.parent
    logger_root = Path(init_args.get("save_dir") or ".") / (
        init_args.get("name") or "lightning_logs"
    )
    if version.parent != logger_root.resolve():
        return None
    return version.name


def guard_restore(trainer: Trainer) -> None:
    """Makes a checkpoint that fails to load into this run a :class:`CheckpointError` naming
    the file and what is wrong (not a Lightning checkpoint, another model's weights, ...),
    instead of a traceback from deep inside Lightning."""
    connector = trainer._checkpoint_connector
    for name in ("_restore_modules_and_callbacks", "restore_training_state"):
        original = getattr(connector, name, None)
        if original is None:
            continue

        def guarded(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            try:
                return _original(*args, **kwargs)
            except (KeyError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as error:
                path = args[0] if args and args[0] else connector._ckpt_path
                raise CheckpointError(f"checkpoint {path}: {_restore_failure(error)}") from error

        setattr(connector, name, guarded)


def _restore_failure(error: BaseException) -> str:
    if isinstance(error, KeyError):
        return (
            f"it has no {error.args[0]!r} entry, so it is not a checkpoint of this "
            "application's fit (a bare state dict or another program's file?)"
        )
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("Error(s) in loading state_dict"):
        detail = lines[1][:160] if len(lines) > 1 else ""
        return (
            f"its weights do not fit this model ({detail}); pass the config it was trained "
            "with (its run folder's config.yaml)"
        )
    return f"cannot be restored ({lines[0][:200] if lines else type(error).__name__})"
