"""The blend: how the near field D and the far-field kernels L_1..L_r are mixed.

    y = w_near * D + w_group * sum_l w_l * L_l

Each weight is a ``BlendWeight`` (config.py): one scalar, one value per head, or one per
channel of the model dimension (heads * head_dim); an initial value; a learnable parameter or
a fixed buffer. Products are element-wise, broadcast over batch and sequence. No sigmoid or
softmax is applied to any weight: the released code uses raw weights throughout.

Shapes: every field output is ``(batch, heads, seq, head_dim)``; a weight is stored as
``(1,)`` (scalar; not 0-dim, which DeepSpeed's flat bf16 buffers cannot view), ``(heads,)`` (head) or ``(heads * head_dim,)`` (channel) and viewed as
``(1, heads, 1, head_dim)`` to multiply it (channel c of the model dimension is head
c // head_dim, lane c % head_dim: the order in which heads are concatenated).

The paper's schemes are below as factories returning an ``AttentionConfig``. The released
code picks them with a float flag ``sparse_ratio`` (integer part = scheme number); their
defaults reproduce the runs of the paper, as read from the code:

* LRA: the FMMformer authors' LRA ``SparseLowrankAttention`` (Nystromformer-style LRA code;
  the run commands are in ``LRA/README.md`` of github.com/minhtannguyen/fmmformer-code-submission).
  ListOps used ``--sparse_ratio 11.5`` (1 kernel) and ``13.5`` (2 kernels), Text used ``4.5``
  (1 and 2 kernels), Retrieval ``18.5`` / ``19.5``, Image ``4.5`` / ``17.5``, Pathfinder
  ``2.5`` / ``15.5``; ``6.5`` is "band 5" alone. ``diag_size 5`` masks ``|i - j| >= 5``.
* WikiText-103: ``MultiHeadAttnSparseLowrank`` in ``lmtool-fwms/src/mem_transformer.py``
  (same repository, commit 92bc369); the "…-sqk-final" runs in
  ``lmtool-fwms/example_scripts/small_sparse_lowrank_attention_final.sh`` use
  ``--sparse_ratio 2.5`` with ``--kernels 'elu'`` or ``'elu' 'elu_flip'`` and
  ``--diag_size 5`` or ``20``; ``4.5`` is the band-only baseline (the README's "Band_5").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import dispatch
from .config import AttentionConfig, BlendWeight
from .ops.plan import DEFAULT_PLAN, KernelPlan

_GRANULARITIES = ("scalar", "head", "channel")


class FieldWeight(nn.Module):
    """One blend weight w, applied as ``field * w``; a parameter or a fixed buffer ``weight``."""

    def __init__(self, spec: BlendWeight, num_heads: int, head_dim: int):
        super().__init__()
        if spec.granularity not in _GRANULARITIES:
            raise ValueError(
                f"blend weight granularity must be one of {_GRANULARITIES}, got {spec.granularity!r}"
            )
        self.granularity = spec.granularity
        self.num_heads, self.head_dim = num_heads, head_dim
        # A scalar is stored as (1,): DeepSpeed ZeRO flattens parameters into bf16 buffers and
        # fails on 0-dim ones ("self.dim() cannot be 0 to view BFloat16 as Byte").
        shape = {"scalar": (1,), "head": (num_heads,), "channel": (num_heads * head_dim,)}
        value = torch.full(shape[spec.granularity], float(spec.init))
        if spec.learnable:
            self.weight = nn.Parameter(value)
        else:
            self.register_buffer("weight", value)

    def forward(self, field: torch.Tensor) -> torch.Tensor:
        # field: (batch, heads, seq, head_dim)
        if self.granularity == "scalar":
            w = self.weight
        elif self.granularity == "head":
            w = self.weight.view(1, self.num_heads, 1, 1)
        else:
            w = self.weight.view(1, self.num_heads, 1, self.head_dim)
        return field * w.to(field.dtype)

    def coefficient(self) -> torch.Tensor:
        """The weight per (head, lane) as float32 ``(heads, head_dim)`` (differentiable)."""
        w = self.weight.float()
        if self.granularity == "scalar":
            return w.view(1, 1).expand(self.num_heads, self.head_dim)
        if self.granularity == "head":
            return w.view(self.num_heads, 1).expand(self.num_heads, self.head_dim)
        return w.view(self.num_heads, self.head_dim)

    def extra_repr(self) -> str:
        learnable = isinstance(self.weight, nn.Parameter)
        return f"granularity={self.granularity}, shape={tuple(self.weight.shape)}, learnable={learnable}"


class ComplementWeight(nn.Module):
    """A weight tied to the near weight: ``1 - w_near``, with no parameter of its own (the
    released Pathfinder blends, ``w D + (1 - w) L``). The near weight's gradient collects
    both uses."""

    def __init__(self, near: FieldWeight):
        super().__init__()
        self._near = (near,)  # a tuple: not registered twice as a submodule
        self.granularity, self.num_heads, self.head_dim = (
            near.granularity, near.num_heads, near.head_dim
        )  # fmt: skip

    @property
    def weight(self) -> torch.Tensor:
        return 1.0 - self._near[0].weight

    def forward(self, field: torch.Tensor) -> torch.Tensor:
        # field: (batch, heads, seq, head_dim)
        return field - self._near[0](field)

    def coefficient(self) -> torch.Tensor:
        return 1.0 - self._near[0].coefficient()

    def extra_repr(self) -> str:
        return "1 - near"


def _field_weight(
    spec: BlendWeight, num_heads: int, head_dim: int, near: FieldWeight | None
) -> nn.Module:
    if spec.tied is None:
        return FieldWeight(spec, num_heads, head_dim)
    if spec.tied != "one_minus_near":
        raise ValueError(f"blend weight tied must be 'one_minus_near' or null, got {spec.tied!r}")
    if near is None:
        raise ValueError("a weight tied to the near weight needs kind 'fmm' (a near field)")
    return ComplementWeight(near)


class Blend(nn.Module):
    """``y = w_near * D + w_group * sum_l w_l * L_l`` for the fields that ``config.kind`` uses.

    ``fmm``: near and far; ``linear``: far only (no ``near`` weight); ``band`` and ``softmax``
    have a single field and no blend (building one raises).
    """

    def __init__(self, config: AttentionConfig, num_heads: int, head_dim: int):
        super().__init__()
        if config.kind not in ("fmm", "linear"):
            raise ValueError(
                f"attention kind {config.kind!r} has no blend (only 'fmm' and 'linear')"
            )
        rank = len(config.feature_maps)
        if rank < 1:
            raise ValueError(f"kind {config.kind!r} needs at least one far-field feature map")
        far_specs = list(config.far_weights)
        if len(far_specs) == 1:
            far_specs = far_specs * rank  # one spec, separate parameters per kernel
        if len(far_specs) != rank:
            raise ValueError(
                f"far_weights has {len(config.far_weights)} entries for {rank} feature maps "
                f"{list(config.feature_maps)}; give one entry per feature map, or a single entry"
            )
        if config.near_weight.tied is not None:
            raise ValueError("the near weight cannot be tied (only far weights can be 1 - near)")
        self.near = (
            FieldWeight(config.near_weight, num_heads, head_dim) if config.kind == "fmm" else None
        )
        self.far = nn.ModuleList(
            _field_weight(s, num_heads, head_dim, self.near) for s in far_specs
        )
        group = config.far_group_weight
        self.far_group = (
            None if group is None else _field_weight(group, num_heads, head_dim, self.near)
        )
        self.config = config  # its backend is read at each call (the layer shares it)

    def forward(
        self,
        near: torch.Tensor | None,
        far: Sequence[torch.Tensor],
        *,
        plan: KernelPlan = DEFAULT_PLAN,
    ) -> torch.Tensor:
        # near: (batch, heads, seq, head_dim) or None; far: r tensors of that shape
        if len(far) != len(self.far):
            raise ValueError(f"expected {len(self.far)} far-field outputs, got {len(far)}")
        if self.near is not None and near is None:
            raise ValueError("this blend needs the near field")
        fields = ([near] if self.near is not None else []) + list(far)
        # The blend kernel where it covers the fields (dispatch.blend), else PyTorch.
        fused = dispatch.blend(fields, self.coefficients, self.config.backend, plan)
        if fused is not None:
            return fused
        y = sum(w(f) for w, f in zip(self.far, far, strict=True))
        if self.far_group is not None:
            y = self.far_group(y)
        if self.near is not None:
            y = self.near(near) + y
        return y  # (batch, heads, seq, head_dim)

    def coefficients(self, far_scale: float = 1.0) -> torch.Tensor:
        """Each field's weight per (head, lane), float32 ``(fields, heads, head_dim)``: the
        near field first (kind ``fmm``), then the far fields, w_group * w_l (times
        ``far_scale``). Differentiable: the weights' gradients flow back through it.

        The paper's schemes (one granularity for every weight, no group weight) take one
        ``stack`` and a broadcast view, whose backward is one reduction (per-weight views and
        a ``stack`` of them cost three reductions and ten autograd nodes of host time, which a
        short sequence's step is bound by). The result may be a broadcast view:
        ``.contiguous()`` it where memory order matters."""
        weights = ([] if self.near is None else [self.near]) + list(self.far)
        kinds = {w.granularity for w in weights}
        if self.far_group is None and far_scale == 1.0 and len(kinds) == 1:
            heads, dim = weights[0].num_heads, weights[0].head_dim
            rows = torch.stack([w.weight for w in weights]).float()  # (fields, 1 | h | h * d)
            shape = {"scalar": (1, 1), "head": (heads, 1), "channel": (heads, dim)}[kinds.pop()]
            return rows.view(len(weights), *shape).expand(len(weights), heads, dim)
        group = self.far_group.coefficient() if self.far_group is not None else None
        coeffs = [w.coefficient() if group is None else w.coefficient() * group for w in self.far]
        if far_scale != 1.0:
            coeffs = [c * far_scale for c in coeffs]
        if self.near is not None:
            coeffs.insert(0, self.near.coefficient())
        return torch.stack(coeffs)


# ----------------------------------------------------------------------------------------
# The paper's schemes. ``feature_maps`` has 1 or 2 entries; 2-kernel weights follow the code.


def _fixed(value: float) -> BlendWeight:
    return BlendWeight(value, "scalar", learnable=False)


def band_scheme(bandwidth: int = 5, dropout: float = 0.1) -> AttentionConfig:
    """Near field alone ("Band 5"): LRA ``sparse_ratio 6.5``, LM ``sparse_ratio 4.5``."""
    return AttentionConfig(kind="band", bandwidth=bandwidth, dropout=dropout)


def linear_scheme(
    feature_maps: Sequence[str] = ("elu",), far_normalize: bool = True, far_scale: float = 1.0
) -> AttentionConfig:
    """Far field alone; r kernels averaged with fixed weights ``far_scale / r``.

    The LM code's "lowrank only" (``sparse_ratio 5.5``) averages two kernels ``0.5 L1 + 0.5 L2``;
    The paper's "linear transformer" baseline is one ``elu`` kernel: normalised in the LM code
    (``--attn_type 34``, ``CudaFastWeightSumLinearTransformerLayer``, which also multiplies by
    1/sqrt(d_head): ``far_scale``), unnormalised in the LRA code (Nystromformer's
    ``LinearAttention``: no denominator).
    """
    rank = len(feature_maps)
    return AttentionConfig(
        kind="linear",
        feature_maps=list(feature_maps),
        far_normalize=far_normalize,
        far_weights=[_fixed(far_scale / rank)],
    )


def weighted_near_far_scheme(
    feature_maps: Sequence[str] = ("elu", "elu_flip"),
    bandwidth: int = 5,
    far_normalize: bool = False,
    dropout: float = 0.1,
) -> AttentionConfig:
    """``w1 * D + w2 * L`` with per-head learnable w1 (init 1) and w2 (init 0): LRA ListOps.

    1 kernel (``sparse_ratio 11.5``, type_blend 11): ``w1 * D + w2 * L1``.
    2 kernels (``13.5``, type_blend 13): ``w1 * D + w2 * (a * L1 + b * L2)`` with learnable
    scalars a = 1, b = 0: w2 is the far group weight, a and b the per-kernel weights.
    """
    config = AttentionConfig(
        kind="fmm",
        bandwidth=bandwidth,
        feature_maps=list(feature_maps),
        far_normalize=far_normalize,
        dropout=dropout,
        near_weight=BlendWeight(1.0, "head"),
    )
    if len(feature_maps) == 1:
        config.far_weights = [BlendWeight(0.0, "head")]
    else:
        config.far_group_weight = BlendWeight(0.0, "head")
        config.far_weights = [BlendWeight(1.0, "scalar")] + [
            BlendWeight(0.0, "scalar") for _ in feature_maps[1:]
        ]
    return config


def near_plus_gated_far_scheme(
    feature_maps: Sequence[str] = ("elu",),
    bandwidth: int = 5,
    far_normalize: bool = False,
    dropout: float = 0.1,
) -> AttentionConfig:
    """``D + w (.) L`` with w per channel, learnable, init 0: LRA Text (``sparse_ratio 4.5``).

    type_blend 4: ``w`` has shape (1, heads, 1, head_dim); with 2 kernels the code averages
    them first, ``L = 0.5 L1 + 0.5 L2`` (fixed), so w is the far group weight.
    """
    rank = len(feature_maps)
    config = AttentionConfig(
        kind="fmm",
        bandwidth=bandwidth,
        feature_maps=list(feature_maps),
        far_normalize=far_normalize,
        dropout=dropout,
        near_weight=_fixed(1.0),
    )
    if rank == 1:
        config.far_weights = [BlendWeight(0.0, "channel")]
    else:
        config.far_group_weight = BlendWeight(0.0, "channel")
        config.far_weights = [_fixed(1.0 / rank)]
    return config


def lra_fmm_scheme(
    near: BlendWeight,
    far: Sequence[BlendWeight],
    group: BlendWeight | None = None,
    feature_maps: Sequence[str] = ("elu",),
) -> AttentionConfig:
    """An LRA FMM blend ``near * D + group * sum_l far_l * L_l`` with the released LRA
    settings (band 5, unnormalised far field, attention dropout 0.1)."""
    return AttentionConfig(
        kind="fmm",
        bandwidth=5,
        feature_maps=list(feature_maps),
        far_normalize=False,
        dropout=0.1,
        near_weight=near,
        far_weights=list(far),
        far_group_weight=group,
    )


def _learn(init: float, granularity: str = "scalar") -> BlendWeight:
    return BlendWeight(init, granularity)  # type: ignore[arg-type]


_ONE_MINUS_NEAR = BlendWeight(tied="one_minus_near")
_ELU2 = ("elu", "elu_flip")


def gated_near_plus_far_scheme(
    feature_maps: Sequence[str] = ("elu", "elu_flip"),
    bandwidth: int = 20,
    far_scale: float = 0.25,
    dropout: float = 0.0,
) -> AttentionConfig:
    """``w (.) D + L`` with w per channel, learnable, init 0: WikiText-103 (``sparse_ratio 2.5``).

    type_blend 2 of ``MultiHeadAttnSparseLowrank``: ``sparse_ratio`` is a (1, 1, heads *
    head_dim) parameter of zeros on the near field; the far field is normalised and, in that
    code, multiplied by ``self.scale = 1 / sqrt(d_head)`` (1/4 for the paper's d_head 16):
    ``far_scale``. Two kernels are averaged with fixed 0.5, so each gets ``far_scale / 2``.
    That code also divides phi(q) and phi(k) by their sums over features and adds 1e-5 to the
    denominator: decoder options (``DecoderConfig.far_feature_normalize``, ``far_eps``), set
    in configs/wikitext103.
    """
    rank = len(feature_maps)
    return AttentionConfig(
        kind="fmm",
        bandwidth=bandwidth,
        feature_maps=list(feature_maps),
        far_normalize=True,
        dropout=dropout,
        near_weight=BlendWeight(0.0, "channel"),
        far_weights=[_fixed(far_scale / rank)],
    )


# Named runs of the paper -> their attention config (the defaults above, made explicit).
PAPER_SCHEMES = {
    "lra_band5": lambda: band_scheme(bandwidth=5),
    "lra_linear": lambda: linear_scheme(("elu",), far_normalize=False),
    "lra_listops_fmm_1kernel": lambda: weighted_near_far_scheme(("elu",)),
    "lra_listops_fmm_2kernel": lambda: weighted_near_far_scheme(("elu", "elu_flip")),
    "lra_text_fmm_1kernel": lambda: near_plus_gated_far_scheme(("elu",)),
    "lra_text_fmm_2kernel": lambda: near_plus_gated_far_scheme(("elu", "elu_flip")),
    # Retrieval 18.5: w D + L1; 19.5: w D + (a L1 + b L2); w per head (init 0), a = 1, b = 0.
    "lra_retrieval_fmm_1kernel": lambda: lra_fmm_scheme(_learn(0.0, "head"), [_fixed(1.0)]),
    "lra_retrieval_fmm_2kernel": lambda: lra_fmm_scheme(
        _learn(0.0, "head"), [_learn(1.0), _learn(0.0)], feature_maps=_ELU2
    ),
    # Image 4.5 as Text; 17.5: D + w (.) (L1 + c L2), w per channel (init 0), c scalar (init 0).
    "lra_image_fmm_1kernel": lambda: near_plus_gated_far_scheme(("elu",)),
    "lra_image_fmm_2kernel": lambda: lra_fmm_scheme(
        _fixed(1.0), [_fixed(1.0), _learn(0.0)], _learn(0.0, "channel"), _ELU2
    ),
    # Pathfinder 2.5: w D + (1 - w) L1; 15.5: w D + (1 - w) (L1 + c L2); w scalar 0.5, c 0.
    "lra_pathfinder_fmm_1kernel": lambda: lra_fmm_scheme(_learn(0.5), [_ONE_MINUS_NEAR]),
    "lra_pathfinder_fmm_2kernel": lambda: lra_fmm_scheme(
        _learn(0.5), [_fixed(1.0), _learn(0.0)], _ONE_MINUS_NEAR, _ELU2
    ),
    "wt103_band5": lambda: band_scheme(bandwidth=5, dropout=0.0),
    "wt103_band20": lambda: band_scheme(bandwidth=20, dropout=0.0),
    "wt103_linear": lambda: linear_scheme(("elu",), far_normalize=True, far_scale=0.25),
    "wt103_fmm_1kernel_band20": lambda: gated_near_plus_far_scheme(("elu",)),
    "wt103_fmm_2kernel_band20": lambda: gated_near_plus_far_scheme(("elu", "elu_flip")),
}


def paper_scheme(name: str) -> AttentionConfig:
    """The attention config of one named run of the paper (see ``PAPER_SCHEMES``)."""
    try:
        return PAPER_SCHEMES[name]()
    except KeyError:
        raise ValueError(
            f"unknown paper scheme {name!r}; expected one of {sorted(PAPER_SCHEMES)}"
        ) from None
