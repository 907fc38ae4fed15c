"""Encoder, classifier and dual-encoder heads: shapes, pooling, padding invariance, errors."""

import pytest
import torch

from fmmformer_pl.attention.blend import paper_scheme
from fmmformer_pl.attention.config import AttentionConfig
from fmmformer_pl.models import DualEncoderRetrieval, EncoderConfig, FMMEncoder, SequenceClassifier

VOCAB, MAX_LEN = 23, 40


def _config(kind="fmm", pooling="mean", positions="learned", **attn):
    attention = AttentionConfig(kind=kind, bandwidth=3, feature_maps=["elu", "elu_flip"], **attn)
    return EncoderConfig(
        dim=16, depth=2, num_heads=2, ffn_dim=24, dropout=0.1, positions=positions,
        pooling=pooling, attention=attention,
    )  # fmt: skip


def _batch(seed=0, batch=3, seq=13):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, seq), generator=g)
    mask = torch.zeros(batch, seq, dtype=torch.bool)
    mask[1, 9:] = True
    mask[2, 4:] = True
    return ids, mask


@pytest.mark.parametrize("kind", ["softmax", "band", "linear", "fmm"])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_padding_does_not_change_pooled_output(kind, pooling, positions):
    """Appending padding (any token ids) leaves the pooled features of every sample unchanged."""
    torch.manual_seed(0)
    encoder = FMMEncoder(VOCAB, MAX_LEN, _config(kind, pooling, positions)).eval()
    ids, mask = _batch()
    extra = torch.randint(0, VOCAB, (3, 9))
    ids_long = torch.cat([ids, extra], dim=1)
    mask_long = torch.cat([mask, torch.ones(3, 9, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(encoder(ids_long, mask_long), encoder(ids, mask))
    # and within the padded region, the ids do not matter
    ids_other = ids.clone()
    ids_other[mask] = (ids_other[mask] + 1) % VOCAB
    torch.testing.assert_close(encoder(ids_other, mask), encoder(ids, mask))


def test_mean_pooling_averages_the_non_padding_states():
    encoder = FMMEncoder(VOCAB, MAX_LEN, _config()).eval()
    ids, mask = _batch()
    h = encoder.encode_sequence(ids, mask)  # (batch, seq, dim)
    assert h.shape == (3, 13, 16)
    pooled = encoder(ids, mask)
    torch.testing.assert_close(pooled[2], h[2, :4].mean(0))
    torch.testing.assert_close(pooled[0], h[0].mean(0))
    torch.testing.assert_close(encoder(ids), encoder.encode_sequence(ids).mean(1))


def test_mean_padded_pooling_is_the_released_lra_pooling():
    """model.py + model_wrapper.py of the released LRA code: ``X = norm(X) * mask[:, :, None]``
    then ``X.mean(dim=1)`` over every position of the padded length."""
    encoder = FMMEncoder(VOCAB, MAX_LEN, _config(pooling="mean_padded")).eval()
    ids, mask = _batch()
    h = encoder.encode_sequence(ids, mask)  # (batch, seq, dim): the final LayerNorm's output
    expected = (h * (~mask).unsqueeze(-1).float()).mean(dim=1)
    torch.testing.assert_close(encoder(ids, mask), expected)
    torch.testing.assert_close(encoder(ids, mask)[2], h[2, :4].sum(0) / 13)


def test_lra_init_is_pytorch_default_with_small_embeddings():
    """The released LRA code: N(0, 0.02) token and position embeddings, PyTorch's own init
    for every Linear (Kaiming-uniform: |w| <= 1 / sqrt(fan_in)) and LayerNorm; ``normal`` is
    N(0, 0.02) everywhere with zero biases."""
    torch.manual_seed(0)
    config = EncoderConfig(dim=64, depth=2, num_heads=2, ffn_dim=128, init="lra")
    model = SequenceClassifier(VOCAB, 10, 512, config)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            bound = 1 / module.in_features**0.5
            assert module.weight.abs().max() <= bound, name
            # uniform on [-bound, bound]: std bound / sqrt(3), far from 0.02
            assert module.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.15), name
            assert module.bias.abs().max() > 0, name
        elif isinstance(module, torch.nn.Embedding):
            assert module.weight.std().item() == pytest.approx(0.02, rel=0.1), name
    normal = SequenceClassifier(VOCAB, 10, 512, EncoderConfig(init="normal"))
    linears = [m for m in normal.modules() if isinstance(m, torch.nn.Linear)]
    assert all(m.weight.std().item() == pytest.approx(0.02, rel=0.15) for m in linears)
    assert all(torch.all(m.bias == 0) for m in linears)
    with pytest.raises(ValueError, match="init must be one of"):
        FMMEncoder(VOCAB, MAX_LEN, EncoderConfig(init="xavier"))


def test_all_padding_sample_pools_to_zeros():
    encoder = FMMEncoder(VOCAB, MAX_LEN, _config())
    ids, mask = _batch()
    mask[0] = True
    pooled = encoder(ids, mask)
    assert torch.equal(pooled[0], torch.zeros(16))
    pooled.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)


def test_cls_pooling_takes_one_extra_position():
    encoder = FMMEncoder(VOCAB, MAX_LEN, _config(pooling="cls"))
    assert encoder.embed.learned.num_embeddings == MAX_LEN + 1
    ids = torch.randint(0, VOCAB, (2, MAX_LEN))
    assert encoder(ids).shape == (2, 16)
    assert encoder.encode_sequence(ids).shape == (2, MAX_LEN, 16)  # CLS row left out
    with pytest.raises(ValueError, match="max_length"):
        encoder(torch.randint(0, VOCAB, (2, MAX_LEN + 1)))


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = SequenceClassifier(VOCAB, 4, MAX_LEN, _config(pooling="cls"))
    ids, mask = _batch()
    logits = model(ids, mask)
    assert logits.shape == (3, 4)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 3])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


@pytest.mark.parametrize("scheme", ["lra_listops_fmm_2kernel", "lra_text_fmm_1kernel"])
def test_classifier_runs_with_the_paper_schemes_at_odd_lengths(scheme):
    config = _config()
    config.attention = paper_scheme(scheme)
    model = SequenceClassifier(VOCAB, 10, 257, config)
    ids = torch.randint(0, VOCAB, (2, 257))
    logits = model(ids, torch.zeros(2, 257, dtype=torch.bool))
    logits.sum().backward()
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_dual_encoder_shares_the_encoder_and_uses_lra_features():
    torch.manual_seed(0)
    model = DualEncoderRetrieval(VOCAB, 2, MAX_LEN, _config()).eval()
    assert model.head[0].in_features == 4 * 16
    ids1, mask1 = _batch(seed=1)
    ids2, mask2 = _batch(seed=2, seq=21)  # documents may have different lengths
    u, v = model.encoder(ids1, mask1), model.encoder(ids2, mask2)
    expected = model.head(torch.cat([u, v, u * v, u - v], dim=-1))
    torch.testing.assert_close(model(ids1, mask1, ids2, mask2), expected)
    assert not torch.allclose(model(ids1, mask1, ids2, mask2), model(ids2, mask2, ids1, mask1))


def test_bad_inputs_raise():
    encoder = FMMEncoder(VOCAB, MAX_LEN, _config())
    ids, mask = _batch()
    with pytest.raises(TypeError, match="bool"):
        encoder(ids, mask.long())
    with pytest.raises(ValueError, match="shape"):
        encoder(ids, mask[:, :-1])
    with pytest.raises(TypeError, match="long"):
        encoder(ids.float(), mask)
    with pytest.raises(ValueError, match=r"\(batch, seq\)"):
        encoder(ids[0], None)
    with pytest.raises(ValueError, match="pooling"):
        FMMEncoder(VOCAB, MAX_LEN, EncoderConfig(pooling="max"))
    with pytest.raises(ValueError, match="num_classes"):
        SequenceClassifier(VOCAB, 0, MAX_LEN, _config())


def test_classifier_logits_do_not_depend_on_padding():
    torch.manual_seed(0)
    model = SequenceClassifier(VOCAB, 5, MAX_LEN, _config(pooling="cls")).eval()
    ids, mask = _batch()
    ids_long = torch.cat([ids, torch.randint(0, VOCAB, (3, 7))], dim=1)
    mask_long = torch.cat([mask, torch.ones(3, 7, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(model(ids_long, mask_long), model(ids, mask))
