"""The ops' tests: every kernel against its PyTorch reference, twice.

On a machine without CUDA the kernels run on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``, set here before anything imports triton; the layer and the dispatch
reach them through ``KernelPlan(interpret=True)``), in float32 with exact products: CI checks
their indexing, masking, segment scans and gradient accumulation on every change. On the GPU
machine the compiled kernels run (``helpers.gpu``): speed, bf16 rounding, the compiled code.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(autouse=True)
def _exact_fp32(exact_fp32):
    """float32 cases follow torch's matmul precision: ask for exact float32 products."""
