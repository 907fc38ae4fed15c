"""Far-field feature maps phi (all positive, so the far-field denominator is > 0)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

FeatureMap = Callable[[torch.Tensor], torch.Tensor]

FEATURE_MAPS: dict[str, FeatureMap] = {
    "elu": lambda x: F.elu(x) + 1.0,  # Katharopoulos et al. 2020
    "elu_flip": lambda x: F.elu(-x) + 1.0,  # the paper's second kernel
    "tanh": lambda x: torch.tanh(x) + 1.0,
    "relu": lambda x: F.relu(x),
    "softplus": lambda x: F.softplus(x),
}


def get_feature_map(name: str) -> FeatureMap:
    try:
        return FEATURE_MAPS[name]
    except KeyError:
        raise ValueError(
            f"unknown far-field feature map {name!r}; expected one of {sorted(FEATURE_MAPS)}"
        ) from None
