"""Launching Triton kernels with less host work per call (plain Python and torch).

``kernel[grid](*args, **kwargs)`` binds and specialises every argument on every call (Triton's
generated binder, the cache key, the launch metadata): ~36 µs of Python for a 40-argument
kernel on the H200 machine's host, against ~14 µs for the compiled kernel's own launcher
(``docs/host_profile.txt``). A step of the FMM layer makes 16 launches, and at 64K tokens that
host work is about as long as the GPU work (``docs/gpu.md``).

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
  (``tests/attention/test_launch.py`` checks these classes against Triton's own
  ``native_specialize_impl``). The first call with such
  a key goes through ``kernel[grid]`` (compiling as usual) and keeps the compiled kernel.

A hit hands the arguments and the constexprs, in signature order, to the compiled kernel's
launcher. Under the Triton interpreter (CPU tests) there is no compiled kernel, and every call
takes ``kernel[grid]``. Constexprs must be passed by keyword (checked on a cache miss). What a
hit skips of ``JITFunction.run``: its check that the kernel's global values are unchanged, its
pre-run hooks, and a recompile after ``triton.knobs`` debug or instrumentation settings change.
"""

from __future__ import annotations

from itertools import repeat
from operator import and_, attrgetter

import torch
from triton.compiler import CompiledKernel

# key -> (compiled kernel, the constexpr and keyword-argument values in signature order), or
# None where kernel[grid] returned no compiled kernel (the interpreter).
_CACHE: dict[tuple, tuple[CompiledKernel, tuple] | None] = {}
# exact key -> the same entries; cleared when it reaches _EXACT_MAX keys
_EXACT: dict[tuple, tuple[CompiledKernel, tuple] | None] = {}
_EXACT_MAX = 4096
# kernel -> how many of its leading arguments were tensors on its first call
_LEADING: dict = {}
_PLAIN = frozenset((int, float, bool, type(None)))
_dtype = attrgetter("dtype")
_data_ptr = torch.Tensor.data_ptr


def _key(args) -> tuple:
    """What Triton specialises the runtime arguments on (see the module doc). One loop with
    the cases inline: ~4 µs for 40 arguments (a helper call per argument took 9)."""
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
    """The exact key (see the module doc), or None where the call cannot use it."""
    n = _LEADING.get(kernel)
    if n is None:
        return None
    tensors, rest = args[:n], args[n:]
    types = tuple(map(type, rest))
    if not _PLAIN.issuperset(types):  # e.g. a (seed) tensor past the leading ones
        return None
    try:
        dtypes = tuple(map(_dtype, tensors))
        offsets = tuple(map(and_, map(_data_ptr, tensors), repeat(15)))
    except (AttributeError, TypeError):  # not a tensor where the first call had one
        return None
    return kernel, device, dtypes, offsets, types, rest, tuple(kwargs.items())


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
    exact = _exact_key(kernel, device, args, kwargs)
    entry = _EXACT.get(exact, False) if exact is not None else False
    if entry is False:
        key = (kernel, device, _key(args), tuple(kwargs.items()))
        entry = _CACHE.get(key, False)
        if entry is False:
            _check_signature(kernel, args, kwargs)
            compiled = kernel[grid](*args, **kwargs)
            entry = None
            if isinstance(compiled, CompiledKernel):
                names = kernel.arg_names[len(args) :]
                entry = compiled, tuple(kwargs[name] for name in names)
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
    compiled, constexprs = entry
    compiled[(*grid, 1, 1)[:3]](*args, *constexprs)  # its runner indexes three grid axes
