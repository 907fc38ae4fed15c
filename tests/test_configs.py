"""Every YAML in configs/ against the code: a config that drifts from the code fails here.

- The paper-run configs equal what scripts/make_configs.py writes (one table of the paper's
  hyper-parameters, no hand-edited copies).
- Every run config is built by the real CLI (model, data module, trainer) with its data pointed
  at tiny files in the official formats; the model takes one real batch.
- Every strategy config stacks on a run config, is validated by the CLI's parser, and (where
  this machine can) builds its Trainer.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cli import FMMCLI, ConfigError, build_cli, check_strategy
from tests.app_data import make_data_root

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import make_configs  # noqa: E402

CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
STRATEGY_CONFIGS = [p for p in CONFIGS if p.parent.name == "strategies"]
RUN_CONFIGS = [p for p in CONFIGS if p not in STRATEGY_CONFIGS]
# Above the largest adaptive-softmax cutoff of the paper's WikiText-103 configs (200,000).
WIKITEXT_WORDS = 200_100

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_data_root(tmp_path_factory.mktemp("data"), wikitext_words=WIKITEXT_WORDS)


def test_committed_configs_equal_the_generator_output():
    generated = make_configs.all_configs()
    for name, text in generated.items():
        assert (ROOT / name).read_text() == text, f"{name}: run python scripts/make_configs.py"
    # No stray hand-written run config beside the generated ones.
    for folder in ("configs/lra", "configs/wikitext103"):
        on_disk = {relative(p) for p in (ROOT / folder).rglob("*.yaml")}
        assert on_disk == {n for n in generated if n.startswith(folder)}


def test_every_paper_run_is_there():
    names = {relative(p) for p in RUN_CONFIGS}
    for task in ("listops", "text", "retrieval", "image", "pathfinder"):
        for variant in ("softmax", "linear", "band5", "fmm1_band5", "fmm2_band5"):
            assert f"configs/lra/{task}/{variant}.yaml" in names
    for variant in ("softmax", "linear", "band20", "fmm1_band20", "fmm2_band20"):
        assert f"configs/wikitext103/{variant}.yaml" in names
    assert "configs/quickstart.yaml" in names


def assert_reached(written, built, where: str = "") -> None:
    """Every value the YAML sets equals the one the built object holds (omitted = default)."""
    if isinstance(written, dict):
        for key, value in written.items():
            assert key in built, f"{where}{key}: not a field of the built object"
            assert_reached(value, built[key], f"{where}{key}.")
    elif isinstance(written, list):
        assert len(written) == len(built), where
        for index, (w, b) in enumerate(zip(written, built, strict=True)):
            assert_reached(w, b, f"{where}{index}.")
    else:
        assert written == built, f"{where}: YAML {written!r} != built {built!r}"


def _first_rows(batch: dict, rows: int = 2) -> dict:
    return {key: value[:rows] for key, value in batch.items()}


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=relative)
def test_run_config_builds_model_data_and_trainer(path, data_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # logs/ of the trainer land here
    spec = yaml.safe_load(path.read_text())
    data_args = spec["data"]["init_args"]
    # The quick start generates its data: give it a fresh folder, smaller sets.
    data_dir = tmp_path / "listops" if data_args.get("generate") else data_root
    args = ["--config", str(path), "--data.init_args.data_dir", str(data_dir),
            "--trainer.accelerator", "cpu", "--trainer.logger", "false"]  # fmt: skip
    if data_args.get("generate"):
        args += ["--data.init_args.generate_train", "64", "--data.init_args.generate_val", "8",
                 "--data.init_args.generate_test", "8"]  # fmt: skip
    cli = build_cli(args, run=False)
    model, data = cli.model, cli.datamodule

    # The sizes were linked from the data module, the hyper-parameters taken from the file.
    assert model.hparams["vocab_size"] == data.vocab_size
    assert model.hparams["max_length"] == data.max_length
    init_args = spec["model"]["init_args"]
    if "encoder" in init_args:
        assert model.hparams["num_classes"] == data.num_classes
        assert_reached(init_args["encoder"], dataclasses.asdict(model.encoder_config))
    else:
        assert_reached(init_args["decoder"], dataclasses.asdict(model.decoder_config))
    assert_reached(init_args["optim"], dataclasses.asdict(model.optim))
    assert cli.trainer.max_steps == spec["trainer"].get("max_steps", -1)

    # One real batch from the data module through the model.
    data.setup("fit")
    batch = _first_rows(next(iter(data.train_dataloader())))
    model.eval()
    with torch.no_grad():
        if "target_ids" in batch:
            assert batch["input_ids"].shape[1] == data_args["tgt_len"]
            out = model.model.nll(batch["input_ids"], batch["target_ids"])
        else:
            ids_key = "input_ids" if "input_ids" in batch else "input_ids_1"
            assert batch[ids_key].shape[1] == data.max_length
            out = model(batch)
            assert out.shape == (2, data.num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("path", STRATEGY_CONFIGS, ids=relative)
def test_strategy_config_stacks_on_a_run_config(path, data_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    written = yaml.safe_load(path.read_text())
    spec = written.get("trainer", {})
    strategy = spec.get("strategy", "auto")
    run = ROOT / "configs" / "lra" / "listops" / "fmm2_band5.yaml"
    args = ["--config", str(run), "--config", str(path), "--data.init_args.data_dir", str(data_root),
            "--trainer.logger", "false"]  # fmt: skip
    needs_gpu = spec.get("accelerator") == "gpu" or str(strategy).startswith("deepspeed")
    if str(strategy).startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        # Without the package the CLI refuses the file at parse time, naming the fix.
        with pytest.raises(SystemExit):
            _parse_only(args)
        with pytest.raises(ConfigError, match="needs DeepSpeed"):
            check_strategy(strategy)
        return
    if needs_gpu and not torch.cuda.is_available():
        # Parsed and validated by the CLI's own parser; building the Trainer needs CUDA.
        config = _parse_only(args)
        for key, value in spec.items():
            if not isinstance(value, dict):
                assert config.trainer[key] == value
        return
    cli = build_cli([*args, "--trainer.accelerator", "cpu"], run=False)
    if "model" in written:  # task options stack on the run config's task
        assert cli.model.compile_options == written["model"]["init_args"]["compile"]
    if "precision" in spec:
        assert cli.trainer.precision == spec["precision"]
    if isinstance(strategy, str) and strategy != "auto":
        assert strategy.replace("_", "") in type(cli.trainer.strategy).__name__.lower()


def _parse_only(args: list[str]):
    """The parsed (not instantiated) config: the CLI's parser, without building anything."""

    class ParseOnly(FMMCLI):
        def before_instantiate_classes(self) -> None:
            raise _Parsed(self.config)

    try:
        ParseOnly(args=args, run=False)
    except _Parsed as parsed:
        return parsed.config
    raise AssertionError("the CLI did not stop after parsing")


class _Parsed(Exception):
    def __init__(self, config):
        super().__init__("parsed")
        self.config = config


# The released LRA code's evaluation interval (run_tasks.py's eval_frequency), per task.
RELEASED_EVAL_EVERY = {
    "listops": 50,
    "text": 500,
    "retrieval": 300,
    "image": 175,
    "pathfinder": 312,
}
LRA_CONFIGS = [p for p in RUN_CONFIGS if p.parts[-3] == "lra"]


@pytest.mark.parametrize("path", LRA_CONFIGS, ids=relative)
def test_lra_paper_configs_build_the_released_training(path):
    """Each LRA paper config carries the released code's init, pooling, schedule, evaluation
    interval and its task's blend (docs/reproduce.md)."""
    from fmmformer_pl.attention.blend import paper_scheme

    task, variant = path.parts[-2], path.stem
    spec = yaml.safe_load(path.read_text())
    encoder = spec["model"]["init_args"]["encoder"]
    assert (encoder["init"], encoder["pooling"]) == ("lra", "mean_padded")
    optim = spec["model"]["init_args"]["optim"]
    assert (optim["schedule"], optim["anneal"], optim["lr"]) == ("one_cycle", "linear", 1e-4)
    trainer = spec["trainer"]
    assert trainer["val_check_interval"] == RELEASED_EVAL_EVERY[task]
    assert trainer["check_val_every_n_epoch"] is None  # counted in steps across epochs
    assert trainer["precision"] == "bf16-mixed"
    if variant.startswith("fmm"):
        scheme = paper_scheme(f"lra_{task}_fmm_{variant[3]}kernel")
        assert encoder["attention"] == dataclasses.asdict(scheme)


@pytest.mark.parametrize("variant", ["softmax", "fmm2_band5"])
def test_listops_paper_config_builds_released_init_and_schedule(variant, data_root, tmp_path,
                                                                monkeypatch):  # fmt: skip
    """Built by the CLI: PyTorch-default Linear init (not N(0, 0.02)) and OneCycleLR."""
    monkeypatch.chdir(tmp_path)
    path = ROOT / "configs" / "lra" / "listops" / f"{variant}.yaml"
    cli = build_cli(["--config", str(path), "--data.init_args.data_dir", str(data_root),
                     "--trainer.accelerator", "cpu", "--trainer.logger", "false"], run=False)  # fmt: skip
    q = cli.model.model.encoder.blocks[0].attn.q_proj
    assert q.weight.std().item() > 0.05  # Kaiming-uniform, bound 1/8: std 0.072
    assert q.bias.abs().max().item() > 0
    cli.trainer.strategy.connect(cli.model)
    cli.model.trainer = cli.trainer
    config = cli.model.configure_optimizers()
    schedule = config["lr_scheduler"]["scheduler"]
    assert isinstance(schedule, torch.optim.lr_scheduler.OneCycleLR)
    anneal = getattr(schedule, "_anneal_func_type", None) or schedule.anneal_func.__name__
    assert "linear" in anneal
    assert schedule.total_steps == cli.trainer.max_steps == 5000
    assert schedule._schedule_phases[0]["end_step"] == 1000 - 1  # pct_start = warmup / steps
