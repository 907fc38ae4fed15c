"""``ops/common/launch.py``: the cached launch path goes through Triton's ``kernel[grid]`` exactly when
Triton would specialise differently, and otherwise hands the arguments, constexprs in signature
order, to the compiled kernel (fake kernels here; the GPU tests run the real ones)."""

from __future__ import annotations

import pytest
import torch

# The launch helpers import triton (the GPU kernels' compiler), an optional extra.
pytest.importorskip("triton", reason="needs triton (pip install -e '.[kernels-cpu]')")

from fmmformer_pl.attention.ops.common import launch as launch_module  # noqa: E402
from fmmformer_pl.attention.ops.common.launch import _key, launch  # noqa: E402


class _Compiled:
    def __init__(self, log):
        self.log = log

    def __getitem__(self, grid):
        return lambda *args: self.log.append(("compiled", grid, args))


class _Kernel:
    """A stand-in for a JITFunction with parameters (x_ptr, n, scale, A, B)."""

    arg_names = ["x_ptr", "n", "scale", "A", "B"]

    def __init__(self, compiles=True):
        self.log, self.compiles = [], compiles

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.log.append(("jit", grid, args, kwargs))
            return _Compiled(self.log) if self.compiles else None

        return run


@pytest.fixture(autouse=True)
def _fake_compiled(monkeypatch):
    monkeypatch.setattr(launch_module, "CompiledKernel", _Compiled)
    for cache in ("_CACHE", "_EXACT", "_LEADING"):
        monkeypatch.setattr(launch_module, cache, {})


def test_second_call_uses_the_compiled_kernel_with_constexprs_in_signature_order():
    k = _Kernel()
    x = torch.zeros(8)
    launch(k, (3, 2), x, 5, 0.5, B=7, A=2, num_warps=4)
    launch(k, (3, 2), x, 21, 0.25, B=7, A=2, num_warps=4)
    assert [e[0] for e in k.log] == ["jit", "compiled"]
    assert k.log[0][1] == (3, 2) and k.log[0][3] == dict(B=7, A=2, num_warps=4)
    # the compiled runner gets three grid axes and every parameter, A before B
    assert k.log[1][1] == (3, 2, 1) and k.log[1][2] == (x, 21, 0.25, 2, 7)


@pytest.mark.parametrize(
    "first, second",
    [
        ((torch.zeros(8), 5), (torch.zeros(8, dtype=torch.float64), 5)),  # dtype
        ((torch.zeros(8), 5), (torch.zeros(9)[1:], 5)),  # address no longer 16-byte aligned
        ((torch.zeros(8), 5), (torch.zeros(8), 1)),  # an int that is 1
        ((torch.zeros(8), 5), (torch.zeros(8), 32)),  # an int divisible by 16
        ((torch.zeros(8), 5), (torch.zeros(8), 2**31)),  # a 64-bit int
    ],
)
def test_a_change_triton_specialises_on_goes_through_triton(first, second):
    k = _Kernel()
    for args in (first, first, first, second, second, first):  # past both caches' first use
        launch(k, (1,), *args, 0.5, A=1, B=2)
    assert [e[0] for e in k.log] == ["jit", "compiled", "compiled", "jit", "compiled", "compiled"]


def test_constexprs_and_options_are_part_of_the_key():
    k = _Kernel()
    x = torch.zeros(8)
    launch(k, (1,), x, 5, 0.5, A=1, B=2, num_warps=4)
    launch(k, (1,), x, 5, 0.5, A=1, B=3, num_warps=4)
    launch(k, (1,), x, 5, 0.5, A=1, B=3, num_warps=8)
    launch(k, (1,), x, 5, 0.5, A=1, B=3, num_warps=8)
    assert [e[0] for e in k.log] == ["jit", "jit", "jit", "compiled"]


def test_without_a_compiled_kernel_every_call_goes_through_triton():
    """The Triton interpreter (the CPU tests) returns no compiled kernel."""
    k = _Kernel(compiles=False)
    x = torch.zeros(8)
    for _ in range(3):
        launch(k, (1,), x, 5, 0.5, A=1, B=2)
    assert [e[0] for e in k.log] == ["jit"] * 3


def test_key_follows_tritons_specialisation():
    x = torch.zeros(8)

    def same(a, b):
        return _key([a]) == _key([b])

    assert same(x, torch.ones(8)) and not same(x, torch.zeros(9)[1:])  # 16-byte alignment
    assert not same(x, x.double())
    assert same(3, 5) and not same(3, 1) and not same(3, 48) and same(48, 64)
    assert not same(48, 2**40)  # 64-bit
    assert not same(True, 1) and same(True, False)  # a bool is not the int 1 (nor specialised)
    assert same(0.5, 2.0) and not same(0.5, 1)
    assert not same(None, 0)


def _count_specialised_keys(monkeypatch):
    calls = []
    real = launch_module._key

    def counting(args):
        calls.append(args)
        return real(args)

    monkeypatch.setattr(launch_module, "_key", counting)
    return calls


def test_repeated_calls_hit_the_exact_cache(monkeypatch):
    calls = _count_specialised_keys(monkeypatch)
    k = _Kernel()
    x = torch.zeros(8)
    for _ in range(4):
        launch(k, (1,), x, 5, 0.5, A=1, B=2)
    assert len(calls) == 2  # the first call (compiles) and the second (fills the exact cache)
    assert [e[0] for e in k.log] == ["jit", "compiled", "compiled", "compiled"]


def test_a_value_that_changes_every_call_takes_the_specialised_key(monkeypatch):
    """A dropout seed: every call misses the exact cache, none recompiles."""
    calls = _count_specialised_keys(monkeypatch)
    k = _Kernel()
    x = torch.zeros(8)
    for seed in (3, 5, 7, 9):
        launch(k, (1,), x, seed, 0.5, A=1, B=2)
    assert len(calls) == 4
    assert [e[0] for e in k.log] == ["jit", "compiled", "compiled", "compiled"]
    assert [e[2][1] for e in k.log[1:]] == [5, 7, 9]


def test_a_tensor_past_the_leading_ones_stays_out_of_the_exact_cache():
    k = _Kernel()
    x = torch.zeros(8)
    for _ in range(3):
        launch(k, (1,), x, 5, torch.zeros(1), A=1, B=2)  # a seed tensor after an int
    assert launch_module._EXACT == {}
    assert [e[0] for e in k.log] == ["jit", "compiled", "compiled"]


def test_the_exact_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(launch_module, "_EXACT_MAX", 3)
    k = _Kernel()
    x = torch.zeros(8)
    for seed in range(3, 3 + 2 * 10, 2):
        launch(k, (1,), x, seed, 0.5, A=1, B=2)
    assert len(launch_module._EXACT) <= 3


def test_equal_values_of_other_types_do_not_share_a_kernel():
    """2 == 2.0 == True, but Triton compiles an i32, an fp32 and a u1 argument."""
    k = _Kernel()
    x = torch.zeros(8)
    for value in (2, 2, 2, 2.0, 2.0, True):
        launch(k, (1,), x, value, 0.5, A=1, B=2)
    assert [e[0] for e in k.log] == ["jit", "compiled", "compiled", "jit", "compiled", "jit"]


def test_key_classes_match_tritons_own_specialisation():
    """Two arguments share a ``_key`` class exactly when Triton specialises them alike."""
    triton = pytest.importorskip("triton")
    from triton.backends import backends
    from triton.backends.compiler import GPUTarget

    native = pytest.importorskip("triton._C.libtriton").native_specialize_impl
    backend = backends["nvidia"].compiler(GPUTarget("cuda", 90, 32))
    ints = [0, 1, -1, 2, 15, 16, -16, 48, 2**31 - 16, 2**31, -(2**31), -(2**31) - 1, 2**40]
    ints += [2**63 - 1, 2**63, 2**64 - 16]
    values = ints + [True, False, None, 0.5, 2.0]
    values += [torch.zeros(8), torch.zeros(9)[1:], torch.zeros(8, dtype=torch.bfloat16)]
    assert triton is not None
    for a in values:
        for b in values:
            same_key = _key([a]) == _key([b])
            same_spec = native(backend, a, False, True, True) == native(
                backend, b, False, True, True
            )
            assert same_key == same_spec, (a, b)


class _Param:
    def __init__(self, name, is_constexpr):
        self.name, self.is_constexpr = name, is_constexpr


def test_constexprs_must_be_keywords():
    k = _Kernel()
    k.params = [_Param("x_ptr", False), _Param("n", False), _Param("scale", False)]
    k.params += [_Param("A", True), _Param("B", True)]
    k.fn = launch  # a name for the message
    x = torch.zeros(8)
    with pytest.raises(TypeError, match="by keyword"):
        launch(k, (1,), x, 5, 0.5, 1, B=2)  # A positionally
    with pytest.raises(TypeError, match=r"\['B'\]"):
        launch(k, (1,), x, 5, 0.5, A=1)  # B missing
    launch(k, (1,), x, 5, 0.5, A=1, B=2)
    assert [e[0] for e in k.log] == ["jit"]


# ---------------------------------------------------------------- the direct launch


class _Launcher:
    """A stand-in for Triton 3.6's ``CudaLauncher``: its C ``launch`` and what it reads."""

    def __init__(self, log, scratch=0):
        self.log = log
        self.global_scratch_size, self.profile_scratch_size = scratch, 0
        self.launch_cooperative_grid, self.launch_pdl = False, True

    def launch(self, *args):
        self.log.append(("direct", args))


class _LoadedCompiled(_Compiled):
    def __init__(self, log, scratch=0):
        super().__init__(log)
        self.run = _Launcher(log, scratch)
        self.function, self.packed_metadata = 777, (4, 1, 0)


class _LoadedKernel(_Kernel):
    def __init__(self, scratch=0):
        super().__init__()
        self.scratch = scratch

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.log.append(("jit", grid, args, kwargs))
            return _LoadedCompiled(self.log, self.scratch)

        return run


@pytest.fixture
def _on_gpu(monkeypatch):
    """CPU tensors taken for GPU ones, and a fixed stream."""
    monkeypatch.setattr(launch_module, "_is_cuda", lambda t: True)
    monkeypatch.setattr(launch_module, "_raw_stream", lambda device: 4242)


def test_an_exact_hit_goes_straight_to_the_c_launcher(_on_gpu):
    k = _LoadedKernel()
    k.arg_names = ["x_ptr", "y_ptr", "n", "scale", "A", "B"]
    x, y = torch.zeros(8), torch.zeros(4)
    for _ in range(3):
        launch(k, (3, 2), x, y, 5, 0.5, B=7, A=2, num_warps=4)
    assert [e[0] for e in k.log] == ["jit", "compiled", "direct"]
    # grid, stream, function, cooperative, pdl, no scratch, packed metadata, no launch
    # metadata nor hooks, the tensors as their addresses, the rest, constexprs A then B
    expected = (3, 2, 1, 4242, 777, False, True, None, None, (4, 1, 0), None, None, None)
    expected += (x.data_ptr(), y.data_ptr(), 5, 0.5, 2, 7)
    assert k.log[2][1] == expected


def test_kernels_with_scratch_memory_keep_tritons_runner(_on_gpu):
    k = _LoadedKernel(scratch=256)
    x = torch.zeros(8)
    for _ in range(3):
        launch(k, (1,), x, 5, 0.5, A=1, B=2)
    assert [e[0] for e in k.log] == ["jit", "compiled", "compiled"]


def test_an_installed_launch_hook_keeps_tritons_runner(_on_gpu, monkeypatch):
    chain = type(launch_module._RUNTIME.launch_enter_hook)()
    chain.add(lambda metadata: None)
    monkeypatch.setattr(launch_module._RUNTIME, "launch_enter_hook", chain)
    k = _LoadedKernel()
    x = torch.zeros(8)
    for _ in range(3):
        launch(k, (1,), x, 5, 0.5, A=1, B=2)
    assert [e[0] for e in k.log] == ["jit", "compiled", "compiled"]


def test_tensors_off_the_gpu_keep_tritons_runner():
    """Only the runner's launcher checks that an address is a device one."""
    k = _LoadedKernel()
    x = torch.zeros(8)
    for _ in range(3):
        launch(k, (1,), x, 5, 0.5, A=1, B=2)
    assert [e[0] for e in k.log] == ["jit", "compiled", "compiled"]


def test_another_c_launcher_layout_keeps_tritons_runner(_on_gpu, monkeypatch):
    """A Triton whose CUDA launcher takes other leading arguments than 3.6's."""
    monkeypatch.setattr(launch_module, "_c_launch_format", lambda: "iiiKKOOOO")
    k = _LoadedKernel()
    x = torch.zeros(8)
    for _ in range(3):
        launch(k, (1,), x, 5, 0.5, A=1, B=2)
    assert [e[0] for e in k.log] == ["jit", "compiled", "compiled"]
