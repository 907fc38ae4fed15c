"""Declarative description of an attention layer: which fields, and how they are blended.

The released FMMformer code selects one of ~20 hard-coded blends with a float code
(``sparse_ratio = 13.5`` ...). Here a blend is data:

    y = w_near * NearField(q, k, v) + sum_l w_far[l] * FarField_l(q, k, v)

where each weight has a granularity (one scalar, one per head, one per channel of the
model dimension), an initial value, and is learnable or fixed. Examples (paper schemes):

    w1 * D + w2 * L, per-head learnable weights:
        AttentionConfig(kind="fmm", near_weight=BlendWeight(1.0, "head"),
                        far_weights=[BlendWeight(1.0, "head")])
    D + w (.) L, per-channel w initialised at 0:
        AttentionConfig(kind="fmm", near_weight=BlendWeight(1.0, "scalar", learnable=False),
                        far_weights=[BlendWeight(0.0, "channel")])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

AttentionKind = Literal["softmax", "linear", "band", "fmm"]
Granularity = Literal["scalar", "head", "channel"]
Backend = Literal["auto", "reference", "cuda"]


Tie = Literal["one_minus_near"]


@dataclass
class BlendWeight:
    """One blend weight w in ``y += w * field``.

    tied: ``"one_minus_near"`` makes this weight ``1 - w_near`` (the released Pathfinder
    blends ``w D + (1 - w) L``): it has no value of its own, so ``init``, ``granularity`` and
    ``learnable`` are ignored and it follows the near weight's.
    """

    init: float = 1.0
    granularity: Granularity = "head"
    learnable: bool = True
    tied: Optional[Tie] = None

    def __post_init__(self) -> None:
        if self.granularity not in ("scalar", "head", "channel"):
            raise ValueError(
                f"blend weight granularity must be scalar, head or channel, got {self.granularity!r}"
            )
        if not math.isfinite(self.init):
            raise ValueError(f"blend weight init must be a finite number, got {self.init}")
        if self.tied not in (None, "one_minus_near"):
            raise ValueError(
                f"blend weight tied must be 'one_minus_near' or null, got {self.tied!r}"
            )


@dataclass
class AttentionConfig:
    """What an attention layer computes.

    kind:
        ``softmax``  full softmax attention (scaled_dot_product_attention), the baseline;
        ``linear``   far field only (one or more kernelised linear attentions);
        ``band``     near field only (banded softmax);
        ``fmm``      near field + far field, blended.
    bandwidth: near-field band k: keys with |i - j| < k (causal: i - k < j <= i).
    feature_maps: one far-field kernel per entry (rank r = len(feature_maps)), names from
        ``fmmformer_pl.attention.feature_maps.FEATURE_MAPS`` ("elu", "elu_flip", "tanh", ...).
    far_normalize: True divides by sum_j phi(q_i).phi(k_j); False is the variant of the
        paper's LRA runs (no denominator, scaled by 1/sqrt(length)).
    dropout: attention dropout on the near-field (and softmax) probabilities in training.
    near_weight / far_weights: the blend (see module docstring). ``far_weights`` holds one
        entry per feature map, or a single entry used (as separate parameters) for each.
    far_group_weight: optional weight on the blended far field as a whole,
        ``y = w_near * D + w_group * sum_l w_far[l] * L_l``; the released code's two-kernel
        schemes are written this way (one gate shared by both kernels). None: no group weight.
    backend: ``auto`` picks the fused GPU path on CUDA and the PyTorch reference elsewhere.
    """

    kind: AttentionKind = "fmm"
    bandwidth: int = 5
    feature_maps: list[str] = field(default_factory=lambda: ["elu"])
    far_normalize: bool = True
    dropout: float = 0.0
    near_weight: BlendWeight = field(default_factory=BlendWeight)
    far_weights: list[BlendWeight] = field(default_factory=lambda: [BlendWeight()])
    far_group_weight: Optional[BlendWeight] = None
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        # The errors a user meets from a YAML value, named by their config key.
        from .feature_maps import FEATURE_MAPS

        kinds = ("softmax", "linear", "band", "fmm")
        if self.kind not in kinds:
            raise ValueError(f"attention.kind must be one of {kinds}, got {self.kind!r}")
        near, far = self.kind in ("band", "fmm"), self.kind in ("linear", "fmm")
        if near and (isinstance(self.bandwidth, bool) or self.bandwidth < 1):
            raise ValueError(
                f"attention.bandwidth must be >= 1 (keys with |i - j| < bandwidth), got "
                f"{self.bandwidth}"
            )
        if far:
            if not self.feature_maps:
                raise ValueError(f"attention.feature_maps: kind {self.kind!r} needs at least one")
            unknown = [name for name in self.feature_maps if name not in FEATURE_MAPS]
            if unknown:
                raise ValueError(
                    f"attention.feature_maps: unknown feature map {', '.join(map(repr, unknown))}; "
                    "known: "
                    f"{', '.join(sorted(FEATURE_MAPS))}"
                )
            if len(self.far_weights) not in (1, len(self.feature_maps)):
                raise ValueError(
                    f"attention.far_weights has {len(self.far_weights)} entries for "
                    f"{len(self.feature_maps)} feature maps; give one entry per feature map, or a "
                    "single entry"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"attention.dropout must lie in [0, 1), got {self.dropout}")
        if self.backend not in ("auto", "reference", "cuda"):
            raise ValueError(
                f"attention.backend must be auto, reference or cuda, got {self.backend!r}"
            )
