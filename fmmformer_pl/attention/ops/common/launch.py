"""Launching Triton kernels with less host work per call (plain Python and torch).

``kernel[grid](*args, **kwargs)`` binds and specialises every argument on every call (Triton's
generated binder, the cache key, the launch metadata): a few times the host work of the
compiled kernel's own launcher. A step of the FMM layer makes over a dozen launches, and up to
long sequences that host work is as long as the GPU work.

``launch(kernel, grid, *args, **kwargs)`` does the same launch through two caches:

* exact: the kernel, the device, each leading tensor argument's dtype and address modulo 16,
  the other arguments by type and value (ints, floats, bools, None only: ``2``, ``2.0`` and
  ``True`` compare equal but specialise differently), the keywords by value. Built from
  C-level maps and one tuple hash, no Python loop over the arguments. Calls of one shape hit it
  every time; an argument that changes every call (a dropout seed) misses it (its entries are
  dropped when the cache reaches ``_EXACT_MAX`` keys), and any other argument past the leading
  tensors (a seed tensor) keeps the call out of it.
* specialised, on a miss: what Triton's specialisation depends on, read off the arguments:
  per tensor its dtype and whether its address is 16-byte aligned; per int whether it is 1,
  divisible by 16, 32-bit or unsigned 64-bit; per float, nothing; keywords by value
  (``tests/attention/ops/test_launch.py`` checks these classes against Triton's own
  ``native_specialize_impl``). The first call with such
  a key goes through ``kernel[grid]`` (compiling as usual) and keeps the compiled kernel.

A hit hands the arguments and the constexprs, in signature order, to the compiled kernel's
launcher. Under the Triton interpreter (CPU tests) there is no compiled kernel, and every call
takes ``kernel[grid]``. Constexprs must be passed by keyword (checked on a cache miss). What a
hit skips of ``JITFunction.run``: its check that the kernel's global values are unchanged, its
pre-run hooks, and a recompile after ``triton.knobs`` debug or instrumentation settings change.

An exact hit whose leading tensors are all on the GPU goes one step further, straight to the
compiled kernel's C launcher (``_direct``; where the installed Triton's CUDA launcher takes
3.6's leading arguments), with the tensors' addresses as ints (already read for the key). What
that skips of ``compiled[grid](*args)``, all per call in Triton 3.6: the runner closure, the
device and stream lookups through Triton's driver proxy, the launch metadata (a ``LazyDict``
built on every call, as Triton's hook chains are never None), the launcher's scratch allocator
calls, two calls of empty hook chains, and one ``cuPointerGetAttribute`` per tensor. Kernels
that need scratch memory, and every launch while a Triton launch hook is installed (a profiler
such as proton), keep Triton's runner.
"""

from __future__ import annotations

from itertools import repeat
from operator import and_, attrgetter

import torch
from triton import knobs
from triton.compiler import CompiledKernel

# key -> (compiled kernel, the constexpr and keyword-argument values in signature order, its
# direct launch or None: ``_direct``), or None where kernel[grid] returned no compiled kernel
# (the interpreter).
_CACHE: dict[tuple, tuple[CompiledKernel, tuple, tuple | None] | None] = {}
# exact key -> the same entries; cleared when it reaches _EXACT_MAX keys
_EXACT: dict[tuple, tuple[CompiledKernel, tuple, tuple | None] | None] = {}
# The C launcher's leading arguments that ``launch`` passes itself (grid, stream, function,
# cooperative, PDL, two scratch buffers, packed metadata, launch metadata, two hooks): Triton
# 3.6's ``_BASE_ARGS_FORMAT``. Another Triton that lays them out otherwise keeps its runner.
_C_LAUNCH_FORMAT = "iiiKKppOOOOOO"
_EXACT_MAX = 4096
# kernel -> how many of its leading arguments were tensors on its first call
_LEADING: dict = {}
_PLAIN = frozenset((int, float, bool, type(None)))
_dtype = attrgetter("dtype")
_is_cuda = attrgetter("is_cuda")
_data_ptr = torch.Tensor.data_ptr
_RUNTIME = knobs.runtime
try:
    _raw_stream = torch._C._cuda_getCurrentRawStream  # what Triton's driver calls
except AttributeError:  # a torch built without CUDA: no compiled kernels either
    _raw_stream = None


def _key(args) -> tuple:
    """What Triton specialises the runtime arguments on (see the module doc). One loop with
    the cases inline (a helper call per argument costs twice the time)."""
    out = []
    add = out.append
    for a in args:
        if type(a) is int:  # 1, or (divisible by 16, 32-bit, unsigned 64-bit)
            add(1 if a == 1 else 4 + (a % 16 == 0) + 2 * (-(2**31) <= a < 2**31) + 8 * (a >= 2**63))
        elif isinstance(a, torch.Tensor):
            add((a.dtype, a.data_ptr() % 16 == 0))
        elif type(a) is float or type(a) is bool:  # never specialised on their values
            add(type(a))
        else:  # None, anything else: by value
            add((type(a), a))
    return tuple(out)


def _exact_key(kernel, device, args, kwargs):
    """``(exact key, the leading tensors' addresses or None)`` (see the module doc), or
    ``(None, None)`` where the call cannot use the key. The addresses are given only when
    every leading tensor is on the GPU (the direct launch passes them as ints, which no
    launcher checks)."""
    n = _LEADING.get(kernel)
    if n is None:
        return None, None
    tensors, rest = args[:n], args[n:]
    types = tuple(map(type, rest))
    if not _PLAIN.issuperset(types):  # e.g. a (seed) tensor past the leading ones
        return None, None
    try:
        dtypes = tuple(map(_dtype, tensors))
        ptrs = tuple(map(_data_ptr, tensors))
        on_gpu = all(map(_is_cuda, tensors))
    except (AttributeError, TypeError):  # not a tensor where the first call had one
        return None, None
    offsets = tuple(map(and_, ptrs, repeat(15)))
    key = kernel, device, dtypes, offsets, types, rest, tuple(kwargs.items())
    return key, (ptrs if on_gpu else None)


def _direct(compiled):
    """``(C launcher, function handle, cooperative grid, PDL, packed metadata)`` of a compiled
    kernel, what ``CudaLauncher.__call__`` passes before the kernel's arguments; None where
    its runner must launch it (scratch memory to allocate per launch, no CUDA launcher: a
    test's stand-in, another backend, another Triton)."""
    if _c_launch_format() != _C_LAUNCH_FORMAT:
        return None
    try:
        run = compiled.run  # loads the kernel if it is not loaded yet
        if run.global_scratch_size or run.profile_scratch_size:
            return None
        return (
            run.launch, compiled.function, run.launch_cooperative_grid, run.launch_pdl,
            compiled.packed_metadata,
        )  # fmt: skip
    except AttributeError:
        return None


def _c_launch_format() -> str | None:
    """The C launcher's leading argument format of the installed Triton's CUDA driver."""
    try:
        from triton.backends.nvidia import driver
    except ImportError:
        return None
    return getattr(driver, "_BASE_ARGS_FORMAT", None)


def _hooked() -> bool:
    """Whether a Triton launch hook is installed (Triton 3.6: non-empty hook chains; before,
    a function or None)."""
    enter, exit_ = _RUNTIME.launch_enter_hook, _RUNTIME.launch_exit_hook
    return bool(getattr(enter, "calls", enter) or getattr(exit_, "calls", exit_))


def _check_signature(kernel, args, kwargs) -> None:
    """The keys take positional arguments as runtime values and keywords as constexprs."""
    params = getattr(kernel, "params", None)
    if params is None:  # not a JITFunction (a test's or a benchmark's stand-in)
        return
    if any(p.is_constexpr for p in params[: len(args)]):
        raise TypeError(f"launch({kernel.fn.__name__}): pass constexprs by keyword")
    missing = [p.name for p in params[len(args) :] if p.name not in kwargs]
    if missing:
        raise TypeError(f"launch({kernel.fn.__name__}): pass {missing} by keyword")


def launch(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)``: positional runtime arguments, keyword constexprs and
    launch options (num_warps, num_stages, maxnreg)."""
    device = torch.cuda.current_device() if torch.cuda.is_initialized() else -1
    exact, ptrs = _exact_key(kernel, device, args, kwargs)
    entry = _EXACT.get(exact, False) if exact is not None else False
    if entry is False:
        ptrs = None  # only an exact hit launches directly
        key = (kernel, device, _key(args), tuple(kwargs.items()))
        entry = _CACHE.get(key, False)
        if entry is False:
            _check_signature(kernel, args, kwargs)
            compiled = kernel[grid](*args, **kwargs)
            entry = None
            if isinstance(compiled, CompiledKernel):
                names = kernel.arg_names[len(args) :]
                entry = compiled, tuple(kwargs[name] for name in names), _direct(compiled)
            _CACHE[key] = entry
            if kernel not in _LEADING:
                _LEADING[kernel] = next(
                    (i for i, a in enumerate(args) if not isinstance(a, torch.Tensor)), len(args)
                )
            return
        if exact is not None and entry is not None:
            if len(_EXACT) >= _EXACT_MAX:
                _EXACT.clear()
            _EXACT[exact] = entry
    if entry is None:
        kernel[grid](*args, **kwargs)
        return
    compiled, constexprs, direct = entry
    grid = (*grid, 1, 1)[:3]
    if ptrs is None or direct is None or _hooked():
        compiled[grid](*args, *constexprs)  # its runner indexes three grid axes
        return
    c_launch, function, cooperative, pdl, packed = direct
    # CudaLauncher.__call__'s call: grid, stream, function, flags, no scratch, the packed
    # metadata, no launch metadata nor hooks, then the arguments in signature order.
    c_launch(
        grid[0], grid[1], grid[2], _raw_stream(device), function, cooperative, pdl, None, None,
        packed, None, None, None, *ptrs, *args[len(ptrs) :], *constexprs,
    )  # fmt: skip
