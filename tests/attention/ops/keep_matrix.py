"""The near-field kernels' dropout pattern as a dense matrix, for the tests (imports triton:
import it inside a test). Quadratic on purpose: the oracle of the in-kernel dropout."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fmmformer_pl.attention.ops.common.tiles import dropout_keep

_BLOCK = 64


@triton.jit
def _keep_kernel(out_ptr, seed, T, W, p_drop, BM: tl.constexpr, BN: tl.constexpr):
    """The (T x T) keep matrix of one (batch, head) as float (seed pre-offset)."""
    offs_m = tl.program_id(0) * BM + tl.arange(0, BM)
    offs_n = tl.program_id(1) * BN + tl.arange(0, BN)
    keep = dropout_keep(seed, offs_m, offs_n, W, p_drop, False)
    tl.store(
        out_ptr + offs_m[:, None] * T + offs_n[None, :],
        keep.to(tl.float32),
        mask=(offs_m[:, None] < T) & (offs_n[None, :] < T),
    )


def dropout_keep_matrix(seq, bandwidth, dropout_p, seed, device) -> torch.Tensor:
    """The (seq x seq) bool matrix of kept probabilities that ``seed`` gives (batch * head
    index 0; index n uses ``seed + n``)."""
    bandwidth = min(int(bandwidth), seq)
    out = torch.empty(seq, seq, device=device, dtype=torch.float32)
    grid = (triton.cdiv(seq, _BLOCK), triton.cdiv(seq, _BLOCK))
    _keep_kernel[grid](out, seed, seq, bandwidth, float(dropout_p), BM=_BLOCK, BN=_BLOCK)
    return out > 0.5
