"""scripts/generate.py: a language-model checkpoint as the CLI's fit writes it (hyper-parameters
as dicts, weights under ``model.``, the data module's settings) and the vocabulary of the data
module's cache -> streamed words equal to greedy decoding by the full forward; bad input is one
line and exit status 2."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch

from fmmformer_pl.attention.config import AttentionConfig
from fmmformer_pl.models import DecoderConfig, FMMDecoderLM

from .test_decoding import _greedy_by_full_forward

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "generate.py"
WORDS = ["<eos>", "the", "cat", "sat", "on", "mat", ".", "a", "dog", "ran", "<unk>", "far"]


@pytest.fixture(scope="module")
def generate():
    spec = importlib.util.spec_from_file_location("generate_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _checkpoint(tmp_path: Path, words=WORDS, kind="fmm") -> tuple[Path, FMMDecoderLM]:
    torch.manual_seed(0)
    config = DecoderConfig(
        dim=16, depth=2, num_heads=2, ffn_dim=32, positions="transformer_xl", norm="post",
        adaptive_softmax_cutoffs=[4, 8], adaptive_softmax_div_value=1.0,
        attention=AttentionConfig(kind=kind, bandwidth=3, feature_maps=["elu", "elu_flip"]),
    )  # fmt: skip
    model = FMMDecoderLM(len(words), 16, config).eval()
    cache = tmp_path / "data" / "wikitext-103" / ".fmmformer_cache" / "wikitext103-0123"
    cache.mkdir(parents=True)
    (cache / "vocab.txt").write_text("".join(w + "\n" for w in words))
    path = tmp_path / "last.ckpt"
    torch.save(
        {
            "pytorch-lightning_version": "2.6.0",
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {
                "vocab_size": len(words), "max_length": 16,
                "decoder": dataclasses.asdict(config),
            },
            "datamodule_hyper_parameters": {"data_dir": str(tmp_path / "data"), "cache_dir": None},
        },
        path,
    )  # fmt: skip
    return path, model


@pytest.mark.parametrize("kind, more", [("fmm", []), ("softmax", []), ("fmm", ["--compile"])])
def test_greedy_text_equals_full_forward(generate, tmp_path, capsys, kind, more):
    path, model = _checkpoint(tmp_path, kind=kind)
    status = generate.main([str(path), "--prompt", "the cat zebra\\nsat", "--temperature", "0",
                            "--max-new-tokens", "9", "--device", "cpu", *more])  # fmt: skip
    assert status == 0
    prompt = torch.tensor([[1, 2, 10, 0, 3]])  # the cat <unk> <eos> sat
    expected = _greedy_by_full_forward(model, prompt, 9)[0].tolist()
    shown = "".join("\n" if WORDS[i] == "<eos>" else WORDS[i] + " " for i in expected) + "\n"
    assert capsys.readouterr().out == shown


def test_raw_ids_and_seeded_sampling(generate, tmp_path, capsys):
    path, _ = _checkpoint(tmp_path)
    outs = []
    for _ in range(2):
        argv = [str(path), "--prompt-ids", "1", "2", "--seed", "3", "--top-p", "0.9",
                "--max-new-tokens", "6", "--device", "cpu", "--vocab", str(tmp_path / "data")]  # fmt: skip
        assert generate.main(argv) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].startswith("the cat ")


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "error: checkpoint {tmp}/none.ckpt: no such file or folder"),
        ("foreign", "error: checkpoint {tmp}/other.ckpt: not a language-model checkpoint"),
        ("no-unk", "error: the prompt word 'zebra' is not in the vocabulary (which has no <unk>)"),
        ("no-vocab", "error: no vocab.txt of 11 words in"),
        ("bad-id", "error: --prompt-ids 99 is outside the vocabulary [0, 12)"),
        ("top-p", "error: top_p must be None or a number in (0, 1], got 2.0"),
    ],
)
def test_bad_input_is_one_line_and_status_2(generate, tmp_path, capsys, case, message):
    words = [w for w in WORDS if w != "<unk>"] if case == "no-unk" else WORDS
    path, _ = _checkpoint(tmp_path, words=words)
    argv = [str(path), "--prompt", "the zebra", "--device", "cpu"]
    if case == "missing":
        argv[0] = str(tmp_path / "none.ckpt")
    elif case == "foreign":
        torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
        argv[0] = str(tmp_path / "other.ckpt")
    elif case == "no-vocab":
        argv += ["--vocab", str(tmp_path / "data")]
        path, _ = _checkpoint(tmp_path / "b", words=WORDS[:11])
        argv[0] = str(path)
        (tmp_path / "b" / "data" / "wikitext-103" / ".fmmformer_cache" / "wikitext103-0123"
         / "vocab.txt").unlink()  # fmt: skip
    elif case == "bad-id":
        argv[1:3] = ["--prompt-ids", "99"]
    elif case == "top-p":
        argv += ["--top-p", "2"]
    assert generate.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(message.format(tmp=tmp_path)), err
