"""Generate text from a WikiText-103 language-model checkpoint, streaming words as they come.

    python scripts/generate.py logs/wikitext103/fmm2_band20/latest/checkpoints/last.ckpt \\
        --prompt "The history of the" --max-new-tokens 200 --top-p 0.9 --seed 0
    python scripts/generate.py CKPT --prompt-ids 5 17 2093 --temperature 0     # greedy, raw ids

The checkpoint is one ``python cli.py fit --config configs/wikitext103/...`` wrote: the model's
hyper-parameters and weights come from it. Its vocabulary is the data module's ``vocab.txt``
(one word per line, id = line number) in the cache the fit built: found through the data
module settings the checkpoint records (``data_dir``, ``cache_dir``), or given with
``--vocab`` (the file, or a folder holding it). A text prompt is split as the data module splits
WikiText (white space; a newline is ``<eos>``); a word outside the vocabulary becomes ``<unk>``.

The prompt runs through the model's forward pass (linear-time for the FMM kinds), then each new
token is one decoding step on a fixed-size state; on a GPU that step is captured once as a CUDA
graph and replayed (fmmformer_pl/models/generation.py). Bad input (a missing or foreign
checkpoint, an unknown word without ``<unk>``, no vocabulary found): one line, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data_modules.common.cache import CACHE_DIRNAME  # noqa: E402
from data_modules.wikitext import EOS, UNK  # noqa: E402
from fmmformer_pl.models import DecoderConfig, FMMDecoderLM  # noqa: E402
from fmmformer_pl.models.config import config_from_dict  # noqa: E402
from fmmformer_pl.models.generation import StaticDecoder, check_sampling  # noqa: E402

# (importing fmmformer_pl.tasks registers the config dataclasses for weights_only loading)
from fmmformer_pl.tasks.checkpoints import check_checkpoint  # noqa: E402
from fmmformer_pl.tasks.errors import CheckpointError, UserError  # noqa: E402


def load_model(path: str, device: torch.device) -> tuple[FMMDecoderLM, dict]:
    """The decoder of a language-model checkpoint, and the checkpoint's data-module settings."""
    check_checkpoint(path)
    if Path(path).is_dir():
        raise CheckpointError(
            f"checkpoint {path}: a DeepSpeed folder; convert it first with "
            "scripts/convert_deepspeed_checkpoint.py"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable content is the file's fault
        raise CheckpointError(f"checkpoint {path}: cannot be read ({error})") from None
    hparams = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    if "decoder" not in hparams or "vocab_size" not in hparams:
        raise CheckpointError(
            f"checkpoint {path}: not a language-model checkpoint (no decoder hyper-parameters; "
            "train one with python cli.py fit --config configs/wikitext103/<run>.yaml)"
        )
    try:
        config = config_from_dict(DecoderConfig, hparams["decoder"])
        model = FMMDecoderLM(hparams["vocab_size"], hparams["max_length"], config)
        weights = {
            k.removeprefix("model."): v
            for k, v in checkpoint["state_dict"].items()
            if k.startswith("model.")
        }
        model.load_state_dict(weights)
    except (ValueError, TypeError, RuntimeError, KeyError) as error:
        raise CheckpointError(f"checkpoint {path}: the model cannot be rebuilt ({error})") from None
    return model.to(device).eval(), checkpoint.get("datamodule_hyper_parameters") or {}


def find_vocab(vocab: str | None, data_hparams: dict, vocab_size: int) -> list[str]:
    """The words, id = index (module docstring)."""
    if vocab is not None:
        candidates = [Path(vocab)] if Path(vocab).is_file() else _vocab_files(Path(vocab))
        where = vocab
    else:
        data_dir, cache_dir = data_hparams.get("data_dir"), data_hparams.get("cache_dir")
        if data_dir is None and cache_dir is None:
            raise UserError(
                "the checkpoint records no data module settings: pass --vocab "
                "<wikitext cache>/vocab.txt"
            )
        roots = [Path(cache_dir).expanduser()] if cache_dir else []
        if data_dir is not None:
            roots.append(Path(data_dir))
        candidates = [f for root in roots for f in _vocab_files(root)]
        where = " or ".join(str(r) for r in roots)
    for path in candidates:
        words = path.read_text(encoding="utf-8").split("\n")[:-1]
        if len(words) == vocab_size:
            return words
    found = f" (found {len(candidates)} with another size)" if candidates else ""
    raise UserError(
        f"no vocab.txt of {vocab_size} words in {where}{found}: pass --vocab <file or folder> "
        "(the WikiText-103 cache the checkpoint was trained on)"
    )


def _vocab_files(root: Path) -> list[Path]:
    """vocab.txt in ``root``, in a cache entry under it, or in a data folder's cache."""
    if (root / "vocab.txt").is_file():
        return [root / "vocab.txt"]
    found = []
    for pattern in ("*", f"{CACHE_DIRNAME}/*", f"wikitext-103/{CACHE_DIRNAME}/*"):
        found += root.glob(f"{pattern}/vocab.txt")
    # Newest first: a rebuilt cache replaces an old one.
    return sorted(set(found), key=lambda p: p.stat().st_mtime, reverse=True)


def tokenize(text: str, stoi: dict[str, int]) -> list[int]:
    """WikiText's split (a newline is ``<eos>``); unknown words become ``<unk>``."""
    words = text.replace("\\n", "\n").replace("\n", f" {EOS} ").split()
    ids = []
    for word in words:
        if word in stoi:
            ids.append(stoi[word])
        elif UNK in stoi:
            ids.append(stoi[UNK])
        else:
            raise UserError(
                f"the prompt word {word!r} is not in the vocabulary (which has no {UNK})"
            )
    return ids


def detokenize(word: str) -> str:
    return "\n" if word == EOS else f"{word} "


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="a .ckpt of python cli.py fit (language model)")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="text (a literal \\n or a newline is <eos>)")
    prompt.add_argument("--prompt-ids", type=int, nargs="+", help="token ids instead of text")
    p.add_argument("--vocab", help="vocab.txt, a cache folder holding it, or the data folder "
                   "(default: the checkpoint's data module settings)")  # fmt: skip
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto (cuda when there is one), cpu, cuda")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto: bfloat16 on a GPU, float32 on the CPU")  # fmt: skip
    p.add_argument("--no-cuda-graph", action="store_true", help="run each step eagerly")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decoding step first (fewer kernels per token; "
                   "the first token waits for the compile)")  # fmt: skip
    return p.parse_args(argv)


def run(args) -> None:
    if args.max_new_tokens < 0:
        raise UserError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    try:
        check_sampling(args.temperature, args.top_k, args.top_p)
    except ValueError as error:
        raise UserError(str(error)) from None
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda, but this machine has no usable CUDA GPU")
    model, data_hparams = load_model(args.checkpoint, device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(args.dtype)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = model.to(dtype)
    words = None
    if args.prompt is not None or args.prompt_ids is None:
        words = find_vocab(args.vocab, data_hparams, model.vocab_size)
    elif args.vocab is not None or data_hparams:
        try:
            words = find_vocab(args.vocab, data_hparams, model.vocab_size)
        except UserError:
            words = None  # raw ids in, raw ids out
    if args.prompt is not None:
        ids = tokenize(args.prompt, {w: i for i, w in enumerate(words)})
        if not ids:
            raise UserError("the prompt has no words")
    else:
        ids = args.prompt_ids
        bad = [i for i in ids if not 0 <= i < model.vocab_size]
        if bad:
            raise UserError(
                f"--prompt-ids {bad[0]} is outside the vocabulary [0, {model.vocab_size})"
            )
    capacity = len(ids) + max(args.max_new_tokens, 1)
    try:
        decoder = StaticDecoder(
            model,
            1,
            capacity,
            cuda_graph=False if args.no_cuda_graph else None,
            compile=args.compile,
        )
    except ValueError as error:
        raise UserError(str(error)) from None
    generator = None
    if args.seed is not None:
        generator = torch.Generator(device=device).manual_seed(args.seed)
    show = (lambda i: detokenize(words[i])) if words is not None else (lambda i: f"{i} ")
    prompt = torch.tensor([ids], device=device)
    sys.stdout.write("".join(show(i) for i in ids))
    sys.stdout.flush()
    for token in decoder.generate(
        prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, generator
    ):
        sys.stdout.write(show(int(token[0])))
        sys.stdout.flush()
    sys.stdout.write("\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_status
    return 0


if __name__ == "__main__":
    sys.exit(main())
