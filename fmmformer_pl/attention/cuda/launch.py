"""Launching Triton kernels with less host work per call (plain Python and torch).

``kernel[grid](*args, **kwargs)`` binds and specialises every argument on every call (Triton's
generated binder, the cache key, the launch metadata): ~33 µs of Python for a 40-argument
kernel on the H200 machine's host, against ~11 µs for the compiled kernel's own launcher
(``docs/host_profile.txt``). A step of the FMM layer makes 16 launches, and at 64K tokens that
host work is as long as the GPU work (``docs/gpu.md``).

``launch(kernel, grid, *args, **kwargs)`` does the same launch. Its cache key is what Triton's
specialisation depends on, read off the arguments directly: per tensor its dtype and whether its
address is 16-byte aligned; per int whether it is 1, divisible by 16 and 32-bit; per float,
nothing; constexprs and launch options by value; the current device. The first call with a key
goes through ``kernel[grid]`` (compiling as usual) and keeps the compiled kernel; later calls
hand the arguments straight to its launcher. Under the Triton interpreter (CPU tests) there is
no compiled kernel, and every call takes ``kernel[grid]``.
"""

from __future__ import annotations

import torch
from triton.compiler import CompiledKernel

# key -> (compiled kernel, the constexpr and keyword-argument values in signature order), or
# None where kernel[grid] returned no compiled kernel (the interpreter).
_CACHE: dict[tuple, tuple[CompiledKernel, tuple] | None] = {}


def _key(args) -> tuple:
    """What Triton specialises the runtime arguments on (see the module doc). One loop with
    the cases inline: ~4 µs for 40 arguments (a helper call per argument took 9)."""
    out = []
    add = out.append
    for a in args:
        if type(a) is int:  # 1, or (divisible by 16, 32-bit)
            add(1 if a == 1 else 4 + (a % 16 == 0) + 2 * (-(2**31) <= a < 2**31))
        elif isinstance(a, torch.Tensor):
            add((a.dtype, a.data_ptr() % 16 == 0))
        elif type(a) is float:  # never specialised
            add(float)
        else:  # bool, None, anything else: by value
            add((type(a), a))
    return tuple(out)


def launch(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)``: positional runtime arguments, keyword constexprs and
    launch options (num_warps, num_stages, maxnreg)."""
    device = torch.cuda.current_device() if torch.cuda.is_initialized() else -1
    key = (kernel, device, _key(args), tuple(kwargs.items()))
    entry = _CACHE.get(key, False)
    if entry is False:
        compiled = kernel[grid](*args, **kwargs)
        entry = None
        if isinstance(compiled, CompiledKernel):
            names = kernel.arg_names[len(args) :]
            entry = compiled, tuple(kwargs[name] for name in names)
        _CACHE[key] = entry
        return
    if entry is None:
        kernel[grid](*args, **kwargs)
        return
    compiled, constexprs = entry
    compiled[(*grid, 1, 1)[:3]](*args, *constexprs)  # its runner indexes three grid axes
