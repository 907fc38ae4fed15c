"""Model hyper-parameters as dataclasses (read by LightningCLI from YAML).

Sizes that come from the data (vocabulary, classes, maximum length) are NOT here: the
models take them as constructor arguments and the CLI links them from the data module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

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


@dataclass
class DecoderConfig:
    """Causal decoder LM (WikiText-103). Paper: 16 layers, d 128, 8 heads x 16, FFN 2,048."""

    dim: int = 128
    depth: int = 16
    num_heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.1
    activation: Literal["gelu", "relu"] = "gelu"
    positions: Literal["learned", "sinusoidal"] = "learned"
    tie_embeddings: bool = True
    # None: a full softmax over the vocabulary. WikiText-103: [20000, 40000, 200000].
    adaptive_softmax_cutoffs: Optional[list[int]] = None
    adaptive_softmax_div_value: float = 4.0
    attention: AttentionConfig = field(default_factory=lambda: AttentionConfig(bandwidth=20))
