"""Strategy configs and DeepSpeed checkpoints, on CPU.

What runs here, and what only runs on GPU (be honest about the gap):

- Every ``configs/strategies/*.yaml`` is parsed by the real CLI parser together with a small
  task config, and the Trainer it describes is built on CPU: the strategy class, ZeRO stage,
  precision and node count are checked against what the file promises.
- DeepSpeed checkpoint conversion (``scripts/convert_deepspeed_checkpoint.py``) runs on a REAL
  ZeRO-2 and ZeRO-3 checkpoint written by Lightning's own ``DeepSpeedStrategy.save_checkpoint``
  and ``deepspeed.DeepSpeedEngine``. Lightning refuses DeepSpeed without CUDA, so the test
  strategy below lifts exactly that refusal (and the device-index check that assumes a GPU);
  DeepSpeed itself runs its CPU accelerator with gloo, fp32. bf16 and several ranks (several
  shards to merge) are exercised only by the GPU run in ``scripts/gpu_scaling_run.sh``.
  Skipped when deepspeed is not installed (``pip install deepspeed==0.19.8``, DS_BUILD_OPS=0).
- The converter's errors on bad input need no deepspeed and always run.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONVERT = ROOT / "scripts" / "convert_deepspeed_checkpoint.py"
STRATEGIES = ROOT / "configs" / "strategies"


def convert_in_process(capsys, *args) -> tuple[int, str, str]:
    """The converter's main() in this process (saves the 3 s import of a fresh interpreter)."""
    spec = importlib.util.spec_from_file_location("convert_deepspeed_checkpoint", CONVERT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capsys.readouterr()
    code = module.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_convert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CONVERT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


# --------------------------------------------------------------------------------------------
# Strategy configs: parsed by the CLI and built into a Trainer on CPU
# --------------------------------------------------------------------------------------------

# file -> what the Trainer built from it must be. A new file in configs/strategies/ needs a row
# (test_every_strategy_file_has_an_expectation).
EXPECTED = {
    "ddp.yaml": dict(strategy="DDPStrategy", precision="32-true", num_nodes=1),
    "deepspeed_stage2.yaml": dict(strategy="DeepSpeedStrategy", stage=2, precision="bf16-mixed"),
    "deepspeed_stage3.yaml": dict(strategy="DeepSpeedStrategy", stage=3, precision="bf16-mixed"),
    "bf16.yaml": dict(precision="bf16-mixed"),
    "multinode.yaml": dict(strategy="DDPStrategy", num_nodes=2, precision="32-true"),
    # A task option, not a Trainer one: the run's task compiles its model at fit start.
    "compile_cudagraphs.yaml": dict(precision="32-true", compile={"mode": "reduce-overhead"}),
}
TASK = ROOT / "configs" / "quickstart.yaml"


def build_cpu_cli(*configs: Path, extra: tuple[str, ...] = ()):
    """The CLI (model, data, Trainer) that ``cli.py fit --config ...`` would build, on CPU,
    one process."""
    sys.path.insert(0, str(ROOT))
    try:
        from cli import build_cli
    finally:
        sys.path.remove(str(ROOT))
    args = [a for c in configs for a in ("--config", str(c))]
    args += ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.logger", "false"]
    return build_cli([*args, *extra], run=False)


def build_trainer(*configs: Path, extra: tuple[str, ...] = ()):
    return build_cpu_cli(*configs, extra=extra).trainer


def test_every_strategy_file_has_an_expectation():
    assert {p.name for p in STRATEGIES.glob("*.yaml")} <= set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_strategy_config_builds_the_trainer_it_promises(name):
    path = STRATEGIES / name
    if not path.exists():
        pytest.skip(f"{path} not written yet (scripts/make_configs.py)")
    expected = EXPECTED[name]
    if expected.get("strategy") == "DeepSpeedStrategy":
        pytest.importorskip("deepspeed")
    cli = build_cpu_cli(TASK, path)
    trainer = cli.trainer
    assert cli.model.compile_options == expected.get("compile")
    assert str(trainer.precision) == expected["precision"]
    assert trainer.num_nodes == expected.get("num_nodes", 1)
    if "strategy" in expected:
        assert type(trainer.strategy).__name__ == expected["strategy"]
    if "stage" in expected:
        assert trainer.strategy.config["zero_optimization"]["stage"] == expected["stage"]
        # DeepSpeed's own precision plugin (it turns on DeepSpeed's bf16 mode at setup).
        assert type(trainer.strategy.precision_plugin).__name__ == "DeepSpeedPrecision"


def test_multinode_ddp_settings_and_stacking():
    path = STRATEGIES / "multinode.yaml"
    trainer = build_trainer(TASK, path)
    kwargs = trainer.strategy._ddp_kwargs
    assert kwargs["find_unused_parameters"] is False
    assert kwargs["gradient_as_bucket_view"] is True
    # The launch scripts' overrides come last and win.
    trainer = build_trainer(TASK, path, extra=("--trainer.num_nodes", "4"))
    assert trainer.num_nodes == 4
    # A DeepSpeed file stacked after it keeps the node count and swaps the strategy.
    stage3 = STRATEGIES / "deepspeed_stage3.yaml"
    if stage3.exists() and importlib.util.find_spec("deepspeed") is not None:
        trainer = build_trainer(TASK, path, stage3)
        assert type(trainer.strategy).__name__ == "DeepSpeedStrategy"
        assert trainer.num_nodes == 2


# --------------------------------------------------------------------------------------------
# Converter: bad input (no deepspeed needed)
# --------------------------------------------------------------------------------------------


def test_convert_rejects_a_single_file(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    result = run_convert(ckpt, tmp_path / "out.ckpt")
    assert result.returncode == 2
    assert "is a file, not a DeepSpeed checkpoint directory" in result.stderr
    assert not (tmp_path / "out.ckpt").exists()


def test_convert_rejects_missing_and_foreign_directories(tmp_path):
    result = run_convert(tmp_path / "nope.ckpt", tmp_path / "out.ckpt")
    assert result.returncode == 2 and "does not exist" in result.stderr

    foreign = tmp_path / "foreign.ckpt"
    foreign.mkdir()
    result = run_convert(foreign, tmp_path / "out.ckpt")
    assert result.returncode == 2 and "no 'latest' file" in result.stderr


def test_convert_points_at_the_parent_when_given_the_tag_folder(tmp_path):
    tag = tmp_path / "epoch=0-step=4.ckpt" / "checkpoint"
    tag.mkdir(parents=True)
    (tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"")
    result = run_convert(tag, tmp_path / "out.ckpt")
    assert result.returncode == 2
    assert "pass its parent" in result.stderr


def test_convert_needs_the_optimizer_shards(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    (ckpt / "checkpoint").mkdir(parents=True)
    (ckpt / "latest").write_text("checkpoint")
    result = run_convert(ckpt, tmp_path / "out.ckpt")
    assert result.returncode == 2
    assert "no *_optim_states.pt shard" in result.stderr


# --------------------------------------------------------------------------------------------
# Converter on real DeepSpeed checkpoints (CPU, one rank)
# --------------------------------------------------------------------------------------------


def _cpu_deepspeed_strategy(stage: int):
    """Lightning's DeepSpeedStrategy with its CUDA-only guards lifted, for CPU tests only."""
    pytest.importorskip("deepspeed")
    import deepspeed.comm.torch as ds_comm
    from lightning.fabric.utilities.seed import reset_seed
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

    # DeepSpeed's CPU accelerator JIT-compiles a shared-memory all-reduce on first use (about
    # 40 s with ninja); one process does not need it, and gloo does the rest.
    ds_comm.build_shm_op = lambda: None

    class CPUDeepSpeedStrategy(DeepSpeedStrategy):
        def setup_environment(self) -> None:  # skips "only supported on CUDA GPUs"
            DDPStrategy.setup_environment(self)

        def setup_distributed(self) -> None:  # skips the GPU device-index check
            reset_seed()
            self.set_world_ranks()
            self._init_deepspeed_distributed()

        @property
        def root_device(self) -> torch.device:
            # DeepSpeed reads the device index as the local rank; "cpu" has none.
            return torch.device("cpu", 0)

    return CPUDeepSpeedStrategy(stage=stage, process_group_backend="gloo")


class _Batches(torch.utils.data.Dataset):
    """Fixed random ListOps-shaped examples: ids in 2..16, padding after a random length."""

    def __init__(self, count: int, length: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(2, 17, (count, length), generator=generator)
        lengths = torch.randint(length // 2, length + 1, (count,), generator=generator)
        self.padding_mask = torch.arange(length)[None, :] >= lengths[:, None]
        self.input_ids[self.padding_mask] = 0
        self.label = torch.randint(0, 10, (count,), generator=generator)

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids[i],
            "padding_mask": self.padding_mask[i],
            "label": self.label[i],
        }


def _tiny_task():
    from fmmformer_pl.attention.config import AttentionConfig
    from fmmformer_pl.models.config import EncoderConfig
    from fmmformer_pl.tasks import ClassificationTask, OptimConfig

    encoder = EncoderConfig(
        dim=16, depth=1, num_heads=2, ffn_dim=32, dropout=0.0,
        attention=AttentionConfig(kind="fmm", bandwidth=3, backend="reference"),
    )  # fmt: skip
    return ClassificationTask(
        vocab_size=17, num_classes=10, max_length=24, encoder=encoder,
        optim=OptimConfig(lr=3e-3, schedule="constant"),
    )  # fmt: skip


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_checkpoint_converts_to_one_file_that_tests_like_the_live_model(
    tmp_path, stage, capsys
):
    from lightning.pytorch import Trainer, seed_everything

    from fmmformer_pl.tasks import ClassificationTask

    strategy = _cpu_deepspeed_strategy(stage)
    seed_everything(0)
    task = _tiny_task()
    initial = {k: v.detach().clone() for k, v in task.state_dict().items()}
    loader = torch.utils.data.DataLoader(_Batches(32, 24, seed=1), batch_size=8)
    test_loader = torch.utils.data.DataLoader(_Batches(16, 24, seed=2), batch_size=8)
    trainer = Trainer(
        accelerator="cpu", devices=1, strategy=strategy, max_steps=6, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(task, loader)
    ds_dir = tmp_path / "ds.ckpt"
    trainer.save_checkpoint(ds_dir)
    assert ds_dir.is_dir() and (ds_dir / "latest").is_file()

    # The live fp32 weights (stage 3 keeps each parameter partitioned: gather it).
    import deepspeed

    engine = trainer.strategy.deepspeed_engine
    live = {}
    for name, param in engine.module.named_parameters():
        with deepspeed.zero.GatheredParameters([param], enabled=stage == 3):
            live[name] = param.detach().clone().float()
    live_metrics = trainer.validate(task, test_loader, verbose=False)[0]

    out = tmp_path / "converted" / "model.ckpt"
    code, stdout, stderr = convert_in_process(capsys, ds_dir, out)
    assert code == 0, stderr
    assert "global_step 6" in stdout

    converted = torch.load(out, map_location="cpu", weights_only=False)
    assert converted["global_step"] == 6
    assert converted["hyper_parameters"]["num_classes"] == 10
    state_dict = converted["state_dict"]
    assert set(state_dict) == set(live)
    for name, value in live.items():
        assert state_dict[name].dtype == torch.float32
        torch.testing.assert_close(state_dict[name], value, rtol=0, atol=0, msg=name)
    # Training moved the weights: the comparison above is not between two copies of the init.
    assert any(not torch.equal(state_dict[k], initial[k]) for k in state_dict)

    # One file, no DeepSpeed: load it and test it with a plain single-device Trainer.
    # weights_only=False: our own file, whose hyper-parameters hold config dataclasses.
    restored = ClassificationTask.load_from_checkpoint(out, map_location="cpu", weights_only=False)
    for name, value in live.items():
        torch.testing.assert_close(restored.state_dict()[name], value, rtol=0, atol=0)
    plain = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    metrics = plain.validate(
        _tiny_task(), test_loader, ckpt_path=out, weights_only=False, verbose=False
    )[0]
    assert metrics["val/loss"] == pytest.approx(live_metrics["val/loss"], rel=1e-5)

    # A second conversion onto the same file needs --force.
    code, _, stderr = convert_in_process(capsys, ds_dir, out)
    assert code == 2 and "--force" in stderr
    assert convert_in_process(capsys, ds_dir, out, "--force")[0] == 0
