"""Far-field feature maps phi (all positive, so the far-field denominator is > 0): one table.

Each row names a map and gives its PyTorch function (what the references, the decoding step
and the released-code paths run) and ``kernel_code``, the branch of
``ops/common/tiles.phi_and_derivative`` that computes the same map (and its derivative) in the
Triton kernels; None where the kernels lack the map (the PyTorch reference then runs it on
every device). Adding a map: a row here, and for the kernels a branch there under a new code
(``tests/attention/ops/test_far_field.py`` checks every coded map against its function).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

FeatureMap = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FeatureMapSpec:
    fn: FeatureMap
    kernel_code: int | None = None


FEATURE_MAP_TABLE: dict[str, FeatureMapSpec] = {
    "elu": FeatureMapSpec(lambda x: F.elu(x) + 1.0, 0),  # Katharopoulos et al. 2020
    "elu_flip": FeatureMapSpec(lambda x: F.elu(-x) + 1.0, 1),  # the paper's second kernel
    "tanh": FeatureMapSpec(lambda x: torch.tanh(x) + 1.0, 2),
    "relu": FeatureMapSpec(lambda x: F.relu(x), 3),
    "softplus": FeatureMapSpec(lambda x: F.softplus(x), 4),
}

# name -> PyTorch function (the view most callers need)
FEATURE_MAPS: dict[str, FeatureMap] = {name: s.fn for name, s in FEATURE_MAP_TABLE.items()}


def get_feature_map(name: str) -> FeatureMap:
    try:
        return FEATURE_MAPS[name]
    except KeyError:
        raise ValueError(
            f"unknown far-field feature map {name!r}; expected one of {sorted(FEATURE_MAPS)}"
        ) from None


def kernel_codes(feature_maps) -> tuple[int, ...] | None:
    """The kernel codes of ``feature_maps`` (names), or None where one is not a name the
    kernels compute (a callable, an unknown name, a map without a code)."""
    codes = []
    for name in feature_maps:
        spec = FEATURE_MAP_TABLE.get(name) if isinstance(name, str) else None
        if spec is None or spec.kernel_code is None:
            return None
        codes.append(spec.kernel_code)
    return tuple(codes)
