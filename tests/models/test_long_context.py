"""Memory options of the decoder change what is kept for backward, never the results:
activation checkpointing per block and the chunked output-layer loss give the same loss and
gradients as the plain model (adaptive softmax, tied and untied full softmax, odd sizes)."""

import dataclasses

import pytest
import torch

from fmmformer_pl.attention.config import AttentionConfig
from fmmformer_pl.models import DecoderConfig, FMMDecoderLM

VOCAB = 53


def _config(**kw):
    base = dict(
        dim=16, depth=3, num_heads=2, ffn_dim=24, dropout=0.1,
        attention=AttentionConfig(kind="fmm", bandwidth=3, feature_maps=["elu", "elu_flip"]),
    )  # fmt: skip
    base.update(kw)
    return DecoderConfig(**base)


def _loss_and_grads(config, ids, seed=1):
    torch.manual_seed(0)
    model = FMMDecoderLM(VOCAB, ids.shape[1], config).train()
    torch.manual_seed(seed)  # the dropout masks
    loss = model.nll(ids[:, :-1], ids[:, 1:]).mean()
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


OUTPUTS = {
    "adaptive_tied": dict(adaptive_softmax_cutoffs=[7, 20], adaptive_softmax_div_value=1.0),
    "adaptive_projected": dict(adaptive_softmax_cutoffs=[7, 20], adaptive_softmax_div_value=2.0),
    "softmax_tied": dict(),
    "softmax_untied": dict(tie_embeddings=False),
}


@pytest.mark.parametrize("output", sorted(OUTPUTS))
@pytest.mark.parametrize(
    "memory",
    [
        dict(loss_chunk_size=5),
        dict(checkpoint_blocks="all"),
        dict(checkpoint_blocks="every_2", loss_chunk_size=13),
        dict(checkpoint_blocks=[1]),
    ],
    ids=["chunk5", "ckpt_all", "every2_chunk13", "ckpt_1"],
)
def test_memory_options_keep_loss_and_gradients(output, memory):
    torch.manual_seed(3)
    ids = torch.randint(0, VOCAB, (2, 24))  # 2 x 23 = 46 tokens: chunks of 5 and 13 leave rests
    plain_loss, plain_grads = _loss_and_grads(_config(**OUTPUTS[output]), ids)
    loss, grads = _loss_and_grads(_config(**OUTPUTS[output], **memory), ids)
    torch.testing.assert_close(loss, plain_loss)
    assert grads.keys() == plain_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], msg=name)


def test_memory_options_under_compile_and_autocast():
    """torch.compile (CPU, inductor) and bf16 autocast with both options: same loss and
    gradients as eager."""
    torch.manual_seed(3)
    ids = torch.randint(0, VOCAB, (1, 18))
    config = _config(
        dropout=0.0, depth=2, adaptive_softmax_cutoffs=[7, 20], adaptive_softmax_div_value=1.0,
        checkpoint_blocks="all", loss_chunk_size=8,
    )  # fmt: skip
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = FMMDecoderLM(VOCAB, 17, config).train()
        net = torch.compile(model, backend="aot_eager") if compiled else model
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = net.nll(ids[:, :-1], ids[:, 1:]).mean()
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    (eager_loss, eager_grads), (loss, grads) = results
    torch.testing.assert_close(loss, eager_loss)
    for g, e in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(g, e, atol=2e-2, rtol=2e-2)


def test_checkpointing_keeps_fewer_tensors_for_backward():
    """What the options are for: fewer bytes saved for backward (counted with saved-tensor
    hooks, so the test runs on any device)."""
    ids = torch.randint(0, VOCAB, (1, 65))

    def saved_bytes(config):
        torch.manual_seed(0)
        model = FMMDecoderLM(VOCAB, 64, config).train()
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.nll(ids[:, :-1], ids[:, 1:]).mean()
        return total

    plain = saved_bytes(_config(ffn_dim=256))
    light = saved_bytes(_config(ffn_dim=256, checkpoint_blocks="all", loss_chunk_size=16))
    assert light < plain / 4


@pytest.mark.parametrize(
    "spec, blocks",
    [("none", set()), ("all", {0, 1, 2, 3, 4}), ("every_2", {0, 2, 4}), ([1, 3], {1, 3})],
)
def test_checkpoint_blocks_spec(spec, blocks):
    assert _config(depth=5, checkpoint_blocks=spec).checkpointed_blocks() == blocks


@pytest.mark.parametrize(
    "kw",
    [
        dict(checkpoint_blocks="some"), dict(checkpoint_blocks="every_0"),
        dict(checkpoint_blocks=[3]), dict(checkpoint_blocks=[-1]), dict(loss_chunk_size=0),
        dict(loss_chunk_size=True),
    ],
)  # fmt: skip
def test_bad_memory_options(kw):
    with pytest.raises(ValueError, match="checkpoint_blocks|loss_chunk_size"):
        _config(**kw)


def test_memory_options_are_config_fields():
    names = {f.name for f in dataclasses.fields(DecoderConfig)}
    assert {"checkpoint_blocks", "loss_chunk_size"} <= names
