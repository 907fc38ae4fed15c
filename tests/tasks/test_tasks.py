"""The LightningModules: losses and metrics against direct computations, batches of each kind."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fmmformer_pl.attention.config import AttentionConfig
from fmmformer_pl.models.config import DecoderConfig, EncoderConfig
from fmmformer_pl.tasks import ClassificationTask, LanguageModelTask, OptimConfig, RetrievalTask

pytestmark = pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")

TINY_ENCODER = EncoderConfig(
    dim=16, depth=1, num_heads=2, ffn_dim=32, dropout=0.0,
    attention=AttentionConfig(kind="fmm", bandwidth=3),
)  # fmt: skip
TINY_DECODER = DecoderConfig(
    dim=16, depth=1, num_heads=2, ffn_dim=32, dropout=0.0,
    attention=AttentionConfig(kind="fmm", bandwidth=3),
)  # fmt: skip


def classification_batch(batch=4, seq=9, vocab=12, classes=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, seq), generator=gen)
    lengths = torch.tensor([seq, seq - 2, 4, 1])[:batch]
    padding = torch.arange(seq)[None, :] >= lengths[:, None]  # (batch, seq), True = pad
    return {
        "input_ids": ids.masked_fill(padding, 0),
        "padding_mask": padding,
        "label": torch.randint(0, classes, (batch,), generator=gen),
    }


def test_classification_step_is_cross_entropy_of_the_model_logits():
    torch.manual_seed(0)
    task = ClassificationTask(12, 3, 9, TINY_ENCODER)
    batch = classification_batch()
    loss = task.training_step(batch, 0)
    logits = task.model(batch["input_ids"], batch["padding_mask"])
    assert loss.item() == pytest.approx(F.cross_entropy(logits, batch["label"]).item(), rel=1e-6)
    expected_acc = (logits.argmax(-1) == batch["label"]).float().mean()
    assert task.train_acc.compute().item() == pytest.approx(expected_acc.item())
    assert torch.equal(task.predict_step(batch, 0), logits.argmax(-1))


def test_retrieval_encodes_both_documents():
    torch.manual_seed(0)
    task = RetrievalTask(12, 2, 9, TINY_ENCODER)
    first, second = classification_batch(seed=1), classification_batch(seed=2)
    batch = {
        "input_ids_1": first["input_ids"], "padding_mask_1": first["padding_mask"],
        "input_ids_2": second["input_ids"], "padding_mask_2": second["padding_mask"],
        "label": torch.tensor([0, 1, 1, 0]),
    }  # fmt: skip
    logits = task(batch)
    assert logits.shape == (4, 2)
    direct = task.model(
        first["input_ids"], first["padding_mask"], second["input_ids"], second["padding_mask"]
    )
    assert torch.allclose(logits, direct)
    # The second document matters: changing it changes the logits.
    batch["input_ids_2"] = torch.roll(batch["input_ids_2"], 1, dims=0)
    assert not torch.allclose(task(batch), logits)
    assert task.batch_tokens(batch) == 2 * 4 * 9


def lm_batch(batch=2, seq=8, vocab=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    stream = torch.randint(0, vocab, (batch, seq + 1), generator=gen)
    return {"input_ids": stream[:, :-1], "target_ids": stream[:, 1:]}


def test_lm_loss_is_mean_nll_and_loss_mask_selects_the_counted_tokens():
    torch.manual_seed(0)
    task = LanguageModelTask(20, 8, TINY_DECODER)
    task.eval()  # no dropout: the two calls below see the same function
    batch = lm_batch()
    nll = task.model.nll(batch["input_ids"], batch["target_ids"])  # (batch, seq)
    assert task.training_step(batch, 0).item() == pytest.approx(nll.mean().item(), rel=1e-6)

    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, 5:] = True  # a sliding window scores only its last tokens
    loss = task.training_step({**batch, "loss_mask": mask}, 0)
    assert loss.item() == pytest.approx(nll[:, 5:].mean().item(), rel=1e-6)

    task.validation_step({**batch, "loss_mask": mask}, 0)
    assert task.val_ppl.compute().item() == pytest.approx(nll[:, 5:].mean().exp().item(), rel=1e-5)


@pytest.mark.parametrize("missing", ["vocab_size", "num_classes", "max_length"])
def test_a_size_the_data_module_did_not_provide_is_named(missing):
    sizes = dict(vocab_size=12, num_classes=3, max_length=9)
    sizes[missing] = None
    with pytest.raises(ValueError, match=f"{missing} must be a positive integer"):
        ClassificationTask(**sizes, encoder=TINY_ENCODER)


def test_hyper_parameters_are_saved_and_the_default_config_is_not_shared():
    first = ClassificationTask(12, 3, 9)
    second = ClassificationTask(12, 3, 9)
    first.encoder_config.dim = 999
    assert second.encoder_config.dim == EncoderConfig().dim
    assert first.hparams["vocab_size"] == 12 and first.hparams["num_classes"] == 3
    assert isinstance(LanguageModelTask(20, 8, TINY_DECODER).hparams["decoder"], DecoderConfig)


def test_configure_optimizers_uses_the_optim_config_and_explicit_total_steps():
    task = ClassificationTask(
        12, 3, 9, TINY_ENCODER,
        optim=OptimConfig(lr=0.01, warmup_steps=2, total_steps=10, schedule="linear"),
    )  # fmt: skip
    config = task.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert config["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.0, 0.005, 0.01, 0.01 * (1 - 1 / 8)])


def test_a_checkpoint_of_a_task_built_in_python_loads_with_weights_only(tmp_path):
    # Built from Python (not the CLI), the hyper-parameters hold our config dataclasses;
    # torch.load's default weights_only=True must still read our own checkpoint.
    from lightning.pytorch import Trainer

    task = ClassificationTask(vocab_size=12, num_classes=3, max_length=9, encoder=TINY_ENCODER)
    batch = classification_batch()
    loader = torch.utils.data.DataLoader([batch], batch_size=None)
    trainer = Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(task, loader)
    path = tmp_path / "task.ckpt"
    trainer.save_checkpoint(path)

    state = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(state["hyper_parameters"]["encoder"], EncoderConfig)
    restored = ClassificationTask.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    for name, value in task.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[name], value)


def test_compile_option_compiles_the_model_in_place_and_checkpoints_stay_plain(tmp_path):
    """``compile`` runs nn.Module.compile at fit start: same loss as the eager task, and the
    checkpoint's keys are the uncompiled model's (it loads into a task without compile)."""
    from lightning.pytorch import Trainer

    torch.manual_seed(0)
    # backend "eager": Dynamo traces, no code generation (inductor takes ~30 s on CPU here).
    task = ClassificationTask(12, 3, 9, TINY_ENCODER, compile={"backend": "eager"})
    plain = ClassificationTask(12, 3, 9, TINY_ENCODER)
    plain.load_state_dict(task.state_dict())
    batch = classification_batch()
    trainer = Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(task, torch.utils.data.DataLoader([batch], batch_size=None))
    assert task.model._compiled_call_impl is not None
    plain.load_state_dict(task.state_dict())  # same keys: no "_orig_mod." prefix
    with torch.no_grad():
        torch.testing.assert_close(task(batch), plain(batch))
    path = tmp_path / "task.ckpt"
    trainer.save_checkpoint(path)
    restored = ClassificationTask.load_from_checkpoint(path, map_location="cpu", compile=False)
    assert restored.compile_options is None


def test_compile_option_rejects_other_types():
    with pytest.raises(TypeError, match="compile must be a bool or a dict"):
        ClassificationTask(12, 3, 9, TINY_ENCODER, compile="yes")


def test_a_copied_compiled_task_compiles_again_at_setup():
    """Copying a module drops its compiled forward: setup looks at the model, not a flag."""
    import copy

    task = ClassificationTask(12, 3, 9, TINY_ENCODER, compile={"backend": "eager"})
    task.setup("fit")
    assert task.model._compiled_call_impl is not None
    clone = copy.deepcopy(task)
    assert clone.model._compiled_call_impl is None
    clone.setup("fit")
    assert clone.model._compiled_call_impl is not None
