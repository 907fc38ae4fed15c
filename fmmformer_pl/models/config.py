"""Model hyper-parameters as dataclasses (read by LightningCLI from YAML).

Sizes that come from the data (vocabulary, classes, maximum length) are NOT here: the
models take them as constructor arguments and the CLI links them from the data module.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from fmmformer_pl.attention.config import AttentionConfig


@dataclass
class EncoderConfig:
    """Bidirectional encoder (LRA). Paper: 2 layers, dim 64, FFN 128, 2 heads x 32.

    pooling: ``mean`` averages the real tokens; ``mean_padded`` zeroes the padding and
        averages over every position of the padded length (the released LRA code:
        ``(LN(x) * mask).mean(dim=1)``); ``cls`` reads a learned CLS token's final state.
    init: ``lra`` is the released LRA code's: PyTorch's own init of every Linear and
        LayerNorm (the task head's too), N(0, 0.02) token and position embeddings;
        ``normal`` is GPT-2's: N(0, 0.02) on every Linear and embedding, zero biases.
    """

    dim: int = 64
    depth: int = 2
    num_heads: int = 2
    ffn_dim: int = 128
    dropout: float = 0.1
    activation: Literal["gelu", "relu"] = "gelu"
    positions: Literal["learned", "sinusoidal"] = "learned"
    pooling: Literal["mean", "mean_padded", "cls"] = "mean_padded"
    init: Literal["lra", "normal"] = "lra"
    attention: AttentionConfig = field(default_factory=AttentionConfig)

    def __post_init__(self) -> None:
        check_sizes("encoder", self)


@dataclass
class DecoderConfig:
    """Causal decoder LM (WikiText-103). Paper: 16 layers, d 128, 8 heads x 16, FFN 2,048.

    The defaults are our design (pre-LN, GELU, learned positions, final LayerNorm). The
    released LM code (``lmtool-fwms``, a Transformer-XL fork) differs in the options below;
    ``configs/wikitext103/*.yaml`` set them as it runs (docs/models.md):

    norm: ``"pre"`` x + f(LN(x)); ``"post"`` LN(x + f(x)) (Transformer-XL's pre_lnorm=False).
    final_norm: a LayerNorm on the last block's output (the released code has none).
    final_dropout: dropout on the last hidden state before the output layer (it has one).
    positions: ``learned``; ``sinusoidal`` (sin/cos interleaved, position = index);
        ``transformer_xl``: [sin(p f), cos(p f)] concatenated with p counted down to the end
        of a ``max_length`` window, p = max_length - 1 - t (see embeddings.py).
    embedding_scale: token embeddings times sqrt(dim) before the positions are added.
    attention_bias: biases on the q/k/v and output projections (none in the released code).
    far_feature_normalize, far_eps: the released far field, phi(x) / sum_d phi(x)_d for
        queries and keys, and a denominator + eps (1e-5 there); see attention/far_field.py.
    layer_norm_init_std: LayerNorm weights start at N(1, std) (Transformer-XL's init_std 0.02);
        0 keeps them at 1.

    Memory for long contexts (the results do not change, only what is kept for backward):
    checkpoint_blocks: blocks whose activations are recomputed in backward instead of kept
        (``torch.utils.checkpoint``): ``"none"``, ``"all"``, ``"every_k"`` (blocks 0, k, 2k,
        ...) or a list of block indices.
    loss_chunk_size: the output layer's loss runs over this many tokens at a time, each chunk
        recomputed in backward, so no (tokens x vocabulary) logits are ever held at once;
        None runs every token together.
    """

    dim: int = 128
    depth: int = 16
    num_heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.1
    activation: Literal["gelu", "relu"] = "gelu"
    positions: Literal["learned", "sinusoidal", "transformer_xl"] = "learned"
    tie_embeddings: bool = True
    # None: a full softmax over the vocabulary. WikiText-103: [20000, 40000, 200000].
    adaptive_softmax_cutoffs: Optional[list[int]] = None
    adaptive_softmax_div_value: float = 4.0
    attention: AttentionConfig = field(default_factory=lambda: AttentionConfig(bandwidth=20))
    norm: Literal["pre", "post"] = "pre"
    final_norm: bool = True
    final_dropout: bool = False
    embedding_scale: bool = False
    attention_bias: bool = True
    far_feature_normalize: bool = False
    far_eps: float = 0.0
    layer_norm_init_std: float = 0.0
    checkpoint_blocks: Union[str, list[int]] = "none"
    loss_chunk_size: Optional[int] = None

    def __post_init__(self) -> None:
        check_sizes("decoder", self)
        self.checkpointed_blocks()  # raises on a bad value
        size = self.loss_chunk_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"decoder.loss_chunk_size must be None or an int >= 1, got {size!r}")
        cutoffs = list(self.adaptive_softmax_cutoffs or [])
        if any(c < 1 for c in cutoffs) or cutoffs != sorted(set(cutoffs)):
            raise ValueError(
                "decoder.adaptive_softmax_cutoffs must be increasing positive token ids, got "
                f"{self.adaptive_softmax_cutoffs}"
            )
        if self.adaptive_softmax_div_value <= 0:
            raise ValueError(
                "decoder.adaptive_softmax_div_value must be > 0, got "
                f"{self.adaptive_softmax_div_value}"
            )

    def checkpointed_blocks(self) -> frozenset[int]:
        """The indices of the blocks ``checkpoint_blocks`` selects."""
        spec = self.checkpoint_blocks
        error = ValueError(
            "decoder.checkpoint_blocks must be 'none', 'all', 'every_<k>' (k >= 1) or a list "
            f"of block indices in [0, {self.depth}), got {spec!r}"
        )
        if isinstance(spec, str):
            if spec == "none":
                return frozenset()
            if spec == "all":
                return frozenset(range(self.depth))
            k = spec[len("every_") :]
            if not spec.startswith("every_") or not k.isdigit() or int(k) < 1:
                raise error
            return frozenset(range(0, self.depth, int(k)))
        if not isinstance(spec, (list, tuple)) or any(
            isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.depth for i in spec
        ):
            raise error
        return frozenset(spec)


def check_sizes(name: str, config: EncoderConfig | DecoderConfig) -> None:
    """Raises ValueError, naming the config key, for a size or rate no model can have."""
    for key in ("dim", "depth", "num_heads", "ffn_dim"):
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}.{key} must be a positive integer, got {value!r}")
    if config.dim % config.num_heads:
        raise ValueError(
            f"{name}.dim ({config.dim}) must be a multiple of {name}.num_heads "
            f"({config.num_heads}): each head gets dim / num_heads channels"
        )
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"{name}.dropout must lie in [0, 1), got {config.dropout}")


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """``cls(**data)`` with nested dataclasses (e.g. ``attention``, blend weights) built from
    their dicts too: a config as a checkpoint written by the CLI stores it. ValueError for a
    key ``cls`` does not have."""
    if isinstance(data, cls):
        return data
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
    return cls(**{key: _convert(hints[key], value) for key, value in data.items()})


def _convert(hint: Any, value: Any) -> Any:
    if isinstance(value, dict):
        for option in (hint, *typing.get_args(hint)):  # Optional[X] / Union[...]: the dataclass
            if dataclasses.is_dataclass(option):
                return config_from_dict(option, value)
    if isinstance(value, list):
        for option in (hint, *typing.get_args(hint)):
            if typing.get_origin(option) is list:
                (item,) = typing.get_args(option)
                return [_convert(item, v) for v in value]
    return value
