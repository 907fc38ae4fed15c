#!/usr/bin/env python
"""Turn a DeepSpeed checkpoint directory into one Lightning checkpoint file.

With ``strategy: deepspeed_stage_2`` / ``deepspeed_stage_3`` Lightning saves a *directory*
(``epoch=0-step=100.ckpt/``) holding one shard of the ZeRO optimizer state per rank and, for
stage 3, one shard of the parameters per rank. ``cli.py test`` / ``predict`` with a plain
strategy need one file with a full ``state_dict``. The fp32 master weights live in the
optimizer shards, so the full model is rebuilt from them:

    state_dict[name] = concat over ranks r of fp32_partition_r[name]   (then reshaped)

and stored next to the Lightning state (epoch, global_step, hyper-parameters, loops) that
Lightning put into the checkpoint's client state. The result loads with
``cli.py test --ckpt_path OUT`` and ``TaskClass.load_from_checkpoint(OUT)``. It holds no
optimizer state: it is for evaluation, prediction or fine-tuning from the weights, not for
resuming the same DeepSpeed run (resume from the directory itself for that).

Usage:
    python scripts/convert_deepspeed_checkpoint.py CHECKPOINT_DIR OUTPUT_FILE [--tag TAG]

CHECKPOINT_DIR is the ``*.ckpt`` directory (the one holding the file ``latest`` and the tag
folder, Lightning's tag is ``checkpoint``). Needs ``deepspeed`` installed but no GPU.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path
from typing import Any

# The checkpoint's hyper-parameters pickle this project's config classes: make the package
# importable when the script runs from a checkout without `pip install -e .`.
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))


def _tag_dir(checkpoint_dir: Path, tag: str | None) -> Path:
    """The folder with the ``*_optim_states.pt`` shards, with an error that says what is wrong."""
    if not checkpoint_dir.exists():
        raise FileNotFoundError(f"{checkpoint_dir} does not exist")
    if checkpoint_dir.is_file():
        raise ValueError(
            f"{checkpoint_dir} is a file, not a DeepSpeed checkpoint directory: it is probably "
            "already a single-file Lightning checkpoint and needs no conversion"
        )
    if tag is None:
        latest = checkpoint_dir / "latest"
        if not latest.is_file():
            if glob.glob(str(checkpoint_dir / "*_optim_states.pt")):
                raise ValueError(
                    f"{checkpoint_dir} is the tag folder inside the checkpoint: pass its parent "
                    f"{checkpoint_dir.parent} instead"
                )
            raise ValueError(
                f"{checkpoint_dir} has no 'latest' file: not a DeepSpeed checkpoint directory, or "
                "pass --tag (the name of the sub-folder holding the *_optim_states.pt files)"
            )
        tag = latest.read_text().strip()
    tag_dir = checkpoint_dir / tag
    if not tag_dir.is_dir():
        raise FileNotFoundError(f"tag folder {tag_dir} does not exist")
    if not glob.glob(str(tag_dir / "*_optim_states.pt")):
        raise FileNotFoundError(
            f"{tag_dir} holds no *_optim_states.pt shard: the fp32 weights cannot be rebuilt"
        )
    return tag_dir


def convert(
    checkpoint_dir: str | os.PathLike,
    output_file: str | os.PathLike,
    tag: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write the consolidated fp32 checkpoint to ``output_file`` and return it."""
    checkpoint_dir, output_file = Path(checkpoint_dir), Path(output_file)
    _tag_dir(checkpoint_dir, tag)  # fail early with a clear message
    if output_file.exists() and not force:
        raise FileExistsError(f"{output_file} exists; pass --force to overwrite it")
    try:
        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict
    except ImportError as err:  # pragma: no cover - lightning is a hard dependency
        raise ImportError("lightning is needed to convert checkpoints") from err
    try:
        import deepspeed  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "deepspeed is needed to read a DeepSpeed checkpoint: pip install deepspeed==0.19.8 "
            "(no GPU needed; DS_BUILD_OPS=0 skips compiling its kernels)"
        ) from err
    output_file.parent.mkdir(parents=True, exist_ok=True)
    return convert_zero_checkpoint_to_fp32_state_dict(
        str(checkpoint_dir), str(output_file), tag=tag
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkpoint_dir", help="DeepSpeed checkpoint directory (Lightning's *.ckpt/)"
    )
    parser.add_argument("output_file", help="single-file Lightning checkpoint to write")
    parser.add_argument("--tag", default=None, help="tag folder; default: read from 'latest'")
    parser.add_argument("--force", action="store_true", help="overwrite output_file")
    args = parser.parse_args(argv)
    try:
        checkpoint = convert(args.checkpoint_dir, args.output_file, tag=args.tag, force=args.force)
    except (FileNotFoundError, FileExistsError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    state_dict = checkpoint["state_dict"]
    numel = sum(t.numel() for t in state_dict.values())
    print(
        f"wrote {args.output_file}: {len(state_dict)} tensors, {numel:,} parameters (fp32), "
        f"epoch {checkpoint.get('epoch')}, global_step {checkpoint.get('global_step')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
