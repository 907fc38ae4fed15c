"""Decoder LM: causality, tied embeddings, adaptive softmax (nll == -log_probs), errors."""

import pytest
import torch

from fmmformer_pl.attention.config import AttentionConfig
from fmmformer_pl.models import AdaptiveLogSoftmax, DecoderConfig, FMMDecoderLM

VOCAB, MAX_LEN = 50, 32


def _config(kind="fmm", cutoffs=None, div_value=1.0, tie=True, **attn):
    attention = AttentionConfig(kind=kind, bandwidth=3, feature_maps=["elu", "elu_flip"], **attn)
    return DecoderConfig(
        dim=16, depth=2, num_heads=2, ffn_dim=32, dropout=0.1, tie_embeddings=tie,
        adaptive_softmax_cutoffs=cutoffs, adaptive_softmax_div_value=div_value,
        attention=attention,
    )  # fmt: skip


def _model(*args, **kw):
    torch.manual_seed(0)
    return FMMDecoderLM(VOCAB, MAX_LEN, _config(*args, **kw)).eval()


@pytest.mark.parametrize("kind", ["softmax", "band", "linear", "fmm"])
@pytest.mark.parametrize("far_normalize", [True, False])
def test_future_tokens_do_not_change_earlier_outputs(kind, far_normalize):
    model = _model(kind, far_normalize=far_normalize)
    ids = torch.randint(0, VOCAB, (2, 21))
    changed = ids.clone()
    changed[:, 12:] = torch.randint(0, VOCAB, (2, 9))
    before, after = model.log_probs(model(ids)), model.log_probs(model(changed))
    torch.testing.assert_close(before[:, :12], after[:, :12])
    assert not torch.allclose(before[:, 12:], after[:, 12:])


@pytest.mark.parametrize(
    "cutoffs, div_value, tie",
    [(None, 1.0, True), (None, 1.0, False), ([10, 20, 40], 1.0, True), ([10, 20, 40], 4.0, True),
     ([10, 25], 2.0, False)],
)  # fmt: skip
def test_nll_equals_minus_gathered_log_probs(cutoffs, div_value, tie):
    model = _model(cutoffs=cutoffs, div_value=div_value, tie=tie)
    ids, targets = torch.randint(0, VOCAB, (3, 15)), torch.randint(0, VOCAB, (3, 15))
    targets[0, :4] = torch.tensor([0, 9, 10, 49])  # cluster edges
    log_probs = model.log_probs(model(ids))  # (3, 15, VOCAB)
    torch.testing.assert_close(log_probs.logsumexp(-1), torch.zeros(3, 15), atol=1e-5, rtol=0)
    expected = -log_probs.gather(-1, targets[..., None])[..., 0]
    nll = model.nll(ids, targets)
    assert nll.shape == (3, 15)
    torch.testing.assert_close(nll, expected)


def test_tied_embeddings_share_the_input_matrix():
    model = _model()
    assert model.lm_head is None and model.adaptive is None
    hidden = torch.randn(4, 16)
    expected = torch.log_softmax(hidden @ model.embed.tokens.weight.T, -1)
    torch.testing.assert_close(model.log_probs(hidden), expected)
    untied = _model(tie=False)
    n_tied = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in untied.parameters()) == n_tied + VOCAB * 16


def test_adaptive_softmax_ties_what_has_the_embedding_shape():
    div1 = _model(cutoffs=[10, 20, 40], div_value=1.0).adaptive
    assert div1.shortlist.weight is None and all(t.weight is None for t in div1.tails)
    assert all(t.proj is None for t in div1.tails)
    div4 = _model(cutoffs=[10, 20, 40], div_value=4.0).adaptive
    assert div4.shortlist.weight is None  # the head's rows are embedding rows
    # tails [10, 20), [20, 40), [40, 50) project to 16/4, 16/16, max(1, 16/64) channels
    assert [tuple(t.weight.shape) for t in div4.tails] == [(10, 4), (20, 1), (10, 1)]
    # Gradient of a tail word reaches its (tied) embedding row.
    model = _model(cutoffs=[10, 20, 40], div_value=1.0).train()
    model.nll(torch.randint(0, VOCAB, (1, 5)), torch.full((1, 5), 45)).sum().backward()
    grad = model.embed.tokens.weight.grad
    assert grad[45].abs().sum() > 0


def test_adaptive_softmax_at_wikitext_103_size():
    """The paper's vocabulary and cutoffs: 267,735 words, [20000, 40000, 200000]."""
    torch.manual_seed(0)
    vocab, dim = 267_735, 8
    embedding = torch.randn(vocab, dim) * 0.02
    head = AdaptiveLogSoftmax(dim, vocab, [20_000, 40_000, 200_000], 1.0, tied=True)
    h = torch.randn(2, dim)
    log_probs = head.log_prob(h, embedding)  # (2, vocab)
    assert log_probs.shape == (2, vocab)
    torch.testing.assert_close(log_probs.logsumexp(-1), torch.zeros(2), atol=1e-5, rtol=0)
    targets = torch.tensor([5, 250_000])
    torch.testing.assert_close(head.nll(h, targets, embedding), -log_probs[[0, 1], targets])


def test_backward_reaches_every_parameter():
    model = _model(cutoffs=[10, 20, 40], div_value=2.0).train()
    targets = torch.tensor([[1, 12, 30, 45] * 4])  # one word in every cluster
    model.nll(torch.randint(0, VOCAB, (1, 16)), targets).mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_bad_inputs_raise():
    model = _model()
    ids = torch.randint(0, VOCAB, (2, 8))
    with pytest.raises(ValueError, match="shape"):
        model.nll(ids, ids[:, :-1])
    with pytest.raises(ValueError, match="target ids"):
        model.nll(ids, torch.full_like(ids, VOCAB))
    with pytest.raises(ValueError, match="learned positions"):
        model(torch.randint(0, VOCAB, (1, MAX_LEN + 1)))
    with pytest.raises(ValueError, match=r"\(batch, seq\)"):
        model(ids[0])
    for cutoffs in ([20, 10], [0, 10], [10, VOCAB], [10, 10]):
        with pytest.raises(ValueError, match="cutoffs"):
            _model(cutoffs=cutoffs)
    with pytest.raises(ValueError, match="div_value"):
        _model(cutoffs=[10], div_value=0.5)
