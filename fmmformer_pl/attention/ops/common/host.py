"""Helpers shared by the host code of every op (plain Python and torch; imports no triton).

Shapes: q, k ``(batch, heads, seq, head_dim)``, v ``(batch, heads, seq, head_dim_v)``.
"""

from __future__ import annotations

import torch

from ..plan import KernelPlan

# Largest head_dim the kernels take: a (64 x 128) float32 tile per operand still fits the
# registers of one program; wider heads go to the PyTorch reference.
MAX_HEAD_DIM = 128
# Grid axis 1 (batch * heads) is limited to 65535 programs by CUDA.
MAX_BATCH_HEADS = 65535
# Offsets inside one (batch, head) are 32-bit in the kernels.
MAX_OFFSET = 2**31 - 1
LOG2E = 1.4426950408889634  # the kernels' softmax runs in base 2


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for the launch grids. Plain Python: ``triton.cdiv`` is a constexpr function,
    slow to call from the host, and a step computes a dozen of these."""
    return -(-a // b)


def block_dim(n: int) -> int:
    """Tile width for a head dimension: the next power of two, at least 16 (tl.dot's minimum)."""
    return max(16, 1 << (n - 1).bit_length())


def fp32_precision(dtype: torch.dtype) -> str:
    """Triton ``input_precision`` of float32 matrix products.

    float32 inputs follow ``torch.get_float32_matmul_precision()``: "highest" gives exact
    float32 ("ieee"), "high"/"medium" TF32, as PyTorch's own matmuls do. Half-precision inputs
    already limit the accuracy, so their float32 state products use TF32.
    """
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the Triton kernels take these inputs (else the caller uses the reference)."""
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    if q.shape[-1] > MAX_HEAD_DIM or v.shape[-1] > MAX_HEAD_DIM:
        return False
    if q.shape[0] * q.shape[1] > MAX_BATCH_HEADS:
        return False
    if q.dtype == torch.float32 and max(q.shape[-1], v.shape[-1]) > 64:
        if fp32_precision(q.dtype) == "tf32":
            # TF32 products of float32 tiles wider than 64: the far state kernel does not
            # compile for sm_90a under its register cap (ptxas "Register allocation failed").
            return False
    return all(offsets_fit(t) for t in (q, k, v))


def offsets_fit(t: torch.Tensor, block: int = 64) -> bool:
    """Whether the largest offset a kernel forms within one (batch, head) slice of t (tiles of
    ``block`` positions may run past the end) fits in 32 bits."""
    return (t.shape[2] + block) * abs(t.stride(2)) + t.shape[3] * abs(t.stride(3)) <= MAX_OFFSET


def empty_like_layout(q: torch.Tensor, dim_v: int) -> torch.Tensor:
    """An uninitialised ``(batch, heads, seq, dim_v)`` tensor laid out like ``q``.

    When q is a transposed view of a (batch, seq, heads, head_dim) projection (the usual
    layout inside a model), the result is too, so the caller's ``transpose(1, 2).reshape``
    back to (batch, seq, heads * dim_v) costs no copy.
    """
    batch, heads, seq, _ = q.shape
    if q.stride(2) > q.stride(1):
        return q.new_empty(batch, seq, heads, dim_v).transpose(1, 2)
    return q.new_empty(batch, heads, seq, dim_v)


def strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    """The four strides of a ``(batch, heads, seq, dim)`` tensor, in that order."""
    return tuple(t.stride())  # type: ignore[return-value]


def padding_as_uint8(
    key_padding_mask: torch.Tensor | None, q: torch.Tensor
) -> tuple[torch.Tensor, int, int]:
    """The padding mask as a uint8 view (1 = padding) and its (batch, seq) strides.

    Without a mask, q itself stands in as a never-read pointer (HAS_MASK=False).
    """
    if key_padding_mask is None:
        return q, 0, 0
    mask = key_padding_mask.to(device=q.device)
    if not mask.is_contiguous():
        mask = mask.contiguous()
    return mask.view(torch.uint8), mask.stride(0), mask.stride(1)


_SM_COUNTS: dict[int, int] = {}
_MAJORS: dict[int, int] = {}


def sm_count(device: torch.device, plan: KernelPlan) -> int:
    """The SMs the grids are planned for: ``plan.sm_count``, else the device's (8 on the CPU,
    where the Triton interpreter runs the kernels' logic)."""
    if plan.sm_count is not None:
        return plan.sm_count
    if device.type != "cuda":
        return 8
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNTS:
        _SM_COUNTS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNTS[index]


def inline_ptx(device: torch.device, plan: KernelPlan) -> bool:
    """Whether the kernels may use inline PTX (``tiles.exp_ftz``): ``plan.inline_ptx``, else on
    NVIDIA CUDA, not ROCm, and not in the Triton interpreter that runs the CPU tests."""
    if plan.inline_ptx is not None:
        return plan.inline_ptx
    return device.type == "cuda" and torch.version.hip is None


def hopper(device: torch.device, plan: KernelPlan) -> bool:
    """Whether ``device`` is an NVIDIA GPU of compute capability 9.0 or later (Hopper): the
    kernels' programmatic dependent launch (``griddepcontrol``) needs it."""
    if not inline_ptx(device, plan) or device.type != "cuda":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _MAJORS:
        _MAJORS[index] = torch.cuda.get_device_capability(index)[0]
    return _MAJORS[index] >= 9


def feature_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the stored phi(q), phi(k) and of the matrix products' operands: bf16 for
    bf16/fp16 inputs (fp16 widened so that 1 / den cannot underflow), else float32."""
    return torch.float32 if dtype == torch.float32 else torch.bfloat16
