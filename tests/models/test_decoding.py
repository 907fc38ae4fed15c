"""Constant-state decoding: steps == full forward, fixed state size, generate()."""

import pytest
import torch

from fmmformer_pl.attention.config import AttentionConfig, BlendWeight
from fmmformer_pl.models import DecoderConfig, FMMDecoderLM

VOCAB, MAX_LEN, BANDWIDTH = 40, 64, 4

CASES = {
    "fmm_r1": dict(kind="fmm", feature_maps=["elu"]),
    "fmm_r2": dict(kind="fmm", feature_maps=["elu", "elu_flip"]),
    "fmm_r2_unnormalized": dict(kind="fmm", feature_maps=["elu", "elu_flip"], far_normalize=False),
    "fmm_r2_group_channel": dict(
        kind="fmm",
        feature_maps=["elu", "tanh"],
        near_weight=BlendWeight(0.5, "channel"),
        far_group_weight=BlendWeight(0.7, "head"),
    ),
    "band": dict(kind="band"),
    "linear": dict(kind="linear", feature_maps=["elu", "elu_flip"]),
    "linear_unnormalized": dict(kind="linear", far_normalize=False),
    "softmax": dict(kind="softmax"),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Decoding runs many tiny ops: on the shared 2-core CI box threads only add overhead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The released LM's layout (configs/wikitext103): post-LN, Transformer-XL positions, scaled
# embeddings, no final LayerNorm, bias-free projections, feature-normalised far field + eps.
RELEASED = dict(
    norm="post", positions="transformer_xl", embedding_scale=True, final_norm=False,
    final_dropout=True, attention_bias=False, far_feature_normalize=True, far_eps=1e-5,
    activation="relu", layer_norm_init_std=0.02,
)  # fmt: skip


def _model(case, positions="learned", cutoffs=None, max_length=MAX_LEN, released=False):
    torch.manual_seed(0)
    attention = AttentionConfig(bandwidth=BANDWIDTH, **CASES[case])
    layout = RELEASED if released else dict(positions=positions)
    config = DecoderConfig(
        dim=16, depth=2, num_heads=2, ffn_dim=32, dropout=0.1,
        adaptive_softmax_cutoffs=cutoffs, attention=attention, **layout,
    )  # fmt: skip
    model = FMMDecoderLM(VOCAB, max_length, config).eval()
    for name, p in model.named_parameters():
        if ".blend." in name:  # move blend weights off their init, e.g. 0
            p.data.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("case", sorted(CASES))
def test_step_by_step_log_probs_equal_the_full_forward(case):
    # A window of max_length tokens, well past the band: with far_normalize=False the far
    # field is scaled 1/sqrt(seq), and decoding uses seq = max_length (the training window).
    length = 3 * BANDWIDTH + 1
    model = _model(case, cutoffs=[10, 20] if case == "fmm_r2" else None, max_length=length)
    ids = torch.randint(0, VOCAB, (2, length))
    full = model.log_probs(model(ids))  # (2, length, VOCAB)
    state = model.init_state(2)
    for t in range(length):
        log_probs, state = model.step(ids[:, t], state)
        torch.testing.assert_close(log_probs, full[:, t], atol=1e-4, rtol=0)
    assert state.position == length


@pytest.mark.parametrize("case", ["fmm_r2", "fmm_r2_unnormalized", "band", "linear", "softmax"])
def test_prefill_then_steps_equal_the_full_forward(case):
    model = _model(case, max_length=11)
    ids = torch.randint(0, VOCAB, (2, 11))
    full = model.log_probs(model(ids))
    log_probs, state = model.prefill(ids[:, :6])
    torch.testing.assert_close(log_probs, full[:, 5], atol=1e-4, rtol=0)
    for t in range(6, 11):
        log_probs, state = model.step(ids[:, t], state)
        torch.testing.assert_close(log_probs, full[:, t], atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", ["fmm_r2", "band", "linear", "softmax"])
def test_released_layout_decodes_as_its_full_forward(case):
    # Past max_length too: Transformer-XL positions count down (negative there).
    model = _model(case, max_length=8, released=True)
    ids = torch.randint(0, VOCAB, (2, 13))
    full = model.log_probs(model(ids))
    log_probs, state = model.prefill(ids[:, :5])
    torch.testing.assert_close(log_probs, full[:, 4], atol=1e-4, rtol=0)
    for t in range(5, 13):
        log_probs, state = model.step(ids[:, t], state)
        torch.testing.assert_close(log_probs, full[:, t], atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", ["fmm_r1", "fmm_r2", "band", "linear"])
def test_state_size_does_not_grow_with_the_context(case):
    model = _model(case, positions="sinusoidal")
    state = model.init_state(3)
    sizes = {}
    for t in range(100):
        _, state = model.step(torch.randint(0, VOCAB, (3,)), state)
        if t + 1 in (10, 100):
            sizes[t + 1] = [tuple(x.shape) for x in state.tensors()]
    assert sizes[10] == sizes[100]
    assert sum(x.numel() for x in state.tensors()) == sum(
        x.numel() for x in model.init_state(3).tensors()
    )


def test_softmax_kind_keeps_a_growing_cache():
    model = _model("softmax")
    state = model.init_state(1)
    for _ in range(5):
        _, state = model.step(torch.randint(0, VOCAB, (1,)), state)
    assert state.layers[0].keys.shape[2] == 5


def _greedy_by_full_forward(model, prompt, new):
    ids = prompt
    for _ in range(new):
        next_id = model.log_probs(model(ids))[:, -1].argmax(-1)
        ids = torch.cat([ids, next_id[:, None]], dim=1)
    return ids


@pytest.mark.parametrize("case", ["fmm_r2", "band", "softmax"])
def test_generate_top_k_1_is_greedy_decoding(case):
    model = _model(case)
    prompt = torch.randint(0, VOCAB, (2, 5))
    out = model.generate(prompt, max_new_tokens=12, top_k=1)
    assert out.shape == (2, 17) and torch.equal(out[:, :5], prompt)
    assert torch.equal(out, _greedy_by_full_forward(model, prompt, 12))


def test_sampling_is_seeded_and_respects_top_k():
    model = _model("fmm_r2").train()
    prompt = torch.randint(0, VOCAB, (4, 3))
    sample = lambda seed, k: model.generate(  # noqa: E731
        prompt, 6, temperature=0.8, top_k=k, generator=torch.Generator().manual_seed(seed)
    )
    assert torch.equal(sample(1, None), sample(1, None))
    assert model.training  # generate() restores the mode it found
    out = sample(2, 3)
    for t in range(3, 9):  # every sampled token is among the 3 most likely after its context
        top3 = model.eval().log_probs(model(out[:, :t]))[:, -1].topk(3).indices
        assert (top3 == out[:, t : t + 1]).any(-1).all()


def test_positions_beyond_max_length():
    learned = _model("fmm_r1")
    prompt = torch.randint(0, VOCAB, (1, MAX_LEN - 3))
    assert learned.generate(prompt, 4, top_k=1).shape == (1, MAX_LEN + 1)  # last fed: MAX_LEN - 1
    with pytest.raises(ValueError, match="learned positions"):
        learned.generate(prompt, 5)
    sinusoidal = _model("fmm_r1", positions="sinusoidal")
    out = sinusoidal.generate(prompt, 20, top_k=1)
    assert out.shape == (1, MAX_LEN + 17)


def test_generate_validates_its_arguments():
    model = _model("fmm_r1")
    prompt = torch.randint(0, VOCAB, (2, 3))
    for bad in (0, -1.0, float("inf"), float("nan"), "hot"):
        with pytest.raises(ValueError, match="temperature"):
            model.generate(prompt, 2, temperature=bad)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="top_k"):
            model.generate(prompt, 2, top_k=bad)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(prompt, -1)
    with pytest.raises(ValueError, match="prompt_ids"):
        model.generate(prompt[0], 2)
    assert torch.equal(model.generate(prompt, 0), prompt)
    assert model.generate(prompt, 3, top_k=VOCAB + 10).shape == (2, 6)  # top_k > vocab: all words
