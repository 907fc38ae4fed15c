"""Static decoding (fixed buffers updated in place, for CUDA graphs): ``step_`` equals the
full forward for every attention kind, and ``StaticDecoder`` samples as ``generate`` does.
On the CPU the step runs eagerly; the graph capture itself runs on CUDA only."""

import pytest
import torch

from fmmformer_pl.models.generation import StaticDecoder, check_sampling, sample

from .test_decoding import BANDWIDTH, CASES, VOCAB, _greedy_by_full_forward, _model


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("case", sorted(CASES))
def test_static_steps_after_prefill_equal_the_full_forward(case):
    length = 3 * BANDWIDTH + 2  # past the band, the ring wraps twice
    model = _model(case, cutoffs=[10, 20] if case == "fmm_r2" else None, max_length=length)
    ids = torch.randint(0, VOCAB, (2, length))
    full = model.log_probs(model(ids))  # (2, length, VOCAB)
    for start in (1, BANDWIDTH + 1):  # a prompt shorter and one longer than the band
        log_probs, state = model.prefill(ids[:, :start])
        state = model.static_state(state, capacity=length)
        buffers = [t.data_ptr() for t in state.tensors()]
        for t in range(start, length):
            log_probs = model.step_(ids[:, t], state)
            torch.testing.assert_close(log_probs, full[:, t], atol=1e-4, rtol=0)
        assert int(state.position) == length
        assert [t.data_ptr() for t in state.tensors()] == buffers  # updated in place


@pytest.mark.parametrize("case", ["fmm_r2", "softmax"])
def test_released_layout_static_steps(case):
    model = _model(case, max_length=8, released=True)
    ids = torch.randint(0, VOCAB, (1, 12))  # Transformer-XL positions run past max_length
    full = model.log_probs(model(ids))
    _, state = model.prefill(ids[:, :3])
    state = model.static_state(state, capacity=12)
    for t in range(3, 12):
        torch.testing.assert_close(model.step_(ids[:, t], state), full[:, t], atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", ["fmm_r2", "band", "linear", "softmax"])
def test_static_decoder_greedy_equals_full_forward(case):
    model = _model(case)
    decoder = StaticDecoder(model, batch_size=2, capacity=20)
    for seed in (0, 1):  # a second prompt reuses the buffers
        prompt = torch.randint(
            0, VOCAB, (2, 4 + seed), generator=torch.Generator().manual_seed(seed)
        )
        out = torch.stack(list(decoder.generate(prompt, 12, temperature=0)), dim=1)
        assert torch.equal(torch.cat([prompt, out], 1), _greedy_by_full_forward(model, prompt, 12))


def test_static_decoder_batch_one_state_fills_every_row():
    model = _model("fmm_r2")
    decoder = StaticDecoder(model, batch_size=3, capacity=16)
    prompt = torch.randint(0, VOCAB, (1, 5))
    log_probs, state = model.prefill(prompt)
    decoder.load(state)
    token = log_probs.argmax(-1).expand(3)
    expected, _ = model.step(token[:1], state)
    torch.testing.assert_close(decoder.step(token), expected.expand(3, -1), atol=1e-5, rtol=0)


def test_static_decoder_limits():
    model = _model("softmax")
    with pytest.raises(ValueError, match="learned positions"):
        StaticDecoder(model, 1, capacity=model.max_length + 1)
    decoder = StaticDecoder(model, 1, capacity=6)
    with pytest.raises(ValueError, match="capacity"):
        next(decoder.generate(torch.zeros(1, 4, dtype=torch.long), 4))
    decoder.prefill(torch.zeros(1, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="full"):
        decoder.step(torch.zeros(1, dtype=torch.long))


def test_sample_top_p_and_top_k():
    log_probs = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 2000))
    gen = torch.Generator().manual_seed(0)
    assert set(sample(log_probs, top_p=0.7, generator=gen).tolist()) == {0, 1}
    assert set(sample(log_probs, top_p=0.5, generator=gen).tolist()) == {0}
    assert set(sample(log_probs, top_k=3, generator=gen).tolist()) == {0, 1, 2}
    assert set(sample(log_probs, top_k=3, top_p=0.9, generator=gen).tolist()) == {0, 1, 2}
    assert torch.equal(sample(log_probs[:3], temperature=0), torch.zeros(3, dtype=torch.long))
    counts = torch.bincount(sample(log_probs, temperature=1.0, generator=gen), minlength=4)
    assert counts[3] > 0  # no restriction: every word can come


@pytest.mark.parametrize(
    "kw, name",
    [(dict(temperature=-1), "temperature"), (dict(top_k=0), "top_k"), (dict(top_p=0), "top_p"),
     (dict(top_p=1.5), "top_p")],
)  # fmt: skip
def test_check_sampling(kw, name):
    args = dict(temperature=1.0, top_k=None, top_p=None) | kw
    with pytest.raises(ValueError, match=name):
        check_sampling(**args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("case", ["fmm_r2", "softmax"])
def test_cuda_graph_step_equals_eager(case):
    model = _model(case).cuda()
    prompt = torch.randint(0, VOCAB, (2, 5), device="cuda")
    graphed = StaticDecoder(model, 2, capacity=20, cuda_graph=True)
    eager = StaticDecoder(model, 2, capacity=20, cuda_graph=False)
    a = torch.stack(list(graphed.generate(prompt, 10, temperature=0)))
    b = torch.stack(list(eager.generate(prompt, 10, temperature=0)))
    assert torch.equal(a, b)


def _compiled_against_eager(model, compile, device, **kw):
    prompt = torch.randint(0, VOCAB, (2, 5), device=device)
    compiled = StaticDecoder(model, 2, capacity=16, compile=compile, **kw)
    eager = StaticDecoder(model, 2, capacity=16, cuda_graph=False)
    log_c, log_e = compiled.prefill(prompt), eager.prefill(prompt)
    for _ in range(8):  # past the band: the ring wraps
        token = log_e.argmax(-1)
        log_c, log_e = compiled.step(token), eager.step(token)
        torch.testing.assert_close(log_c, log_e, atol=1e-5, rtol=1e-5)
    assert int(compiled.state.position) == int(eager.state.position) == 13


@pytest.mark.parametrize(
    "case, backend",
    [(case, "aot_eager") for case in sorted(CASES)] + [("fmm_r2", "inductor")],
)
def test_compiled_step_equals_the_eager_step(case, backend):
    """``compile`` traces the whole step as one graph (fullgraph: a break fails) and decodes
    what the eager step decodes; inductor's fused kernels to float tolerance."""
    torch._dynamo.reset()
    _compiled_against_eager(_model(case, max_length=16), backend, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("case", ["fmm_r2", "softmax"])
def test_compiled_cuda_graph_step_equals_eager(case):
    """The compiled step captured as a CUDA graph (float32, inductor)."""
    torch._dynamo.reset()
    _compiled_against_eager(_model(case, max_length=16).cuda(), True, "cuda", cuda_graph=True)
