"""Transformer block: the attention of ``fmmformer_pl.attention`` plus an FFN.

    pre-LN (norm="pre", ours):   x = x + Dropout(Attention(LN(x)))
                                 x = x + Dropout(FFN(LN(x)))
    post-LN (norm="post", the released LM code, Transformer-XL's pre_lnorm=False):
                                 x = LN(x + Dropout(Attention(x)))
                                 x = LN(x + Dropout(FFN(x)))
    FFN(x) = W2 Dropout(act(W1 x))

Shapes: x ``(batch, seq, dim)``; key_padding_mask bool ``(batch, seq)``, True = padding.
"""

from __future__ import annotations

import torch
from torch import nn

from fmmformer_pl.attention.config import AttentionConfig
from fmmformer_pl.attention.layer import AttentionState, FMMAttention

from .config import DecoderConfig, EncoderConfig

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class FeedForward(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, dropout: float, activation: str = "gelu"):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
            )
        self.net = nn.Sequential(
            nn.Linear(dim, ffn_dim),
            _ACTIVATIONS[activation](),
            nn.Dropout(dropout),
            nn.Linear(ffn_dim, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (batch, seq, dim) -> (batch, seq, dim)


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float,
        attention: AttentionConfig,
        causal: bool,
        activation: str = "gelu",
        norm: str = "pre",
        **attention_options,
    ):
        super().__init__()
        if norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post', got {norm!r}")
        self.post_norm = norm == "post"
        self.ln_attn = nn.LayerNorm(dim)
        self.attn = FMMAttention(dim, num_heads, attention, causal=causal, **attention_options)
        self.ln_ffn = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout, activation)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        # x: (batch, seq, dim)
        if self.post_norm:
            return self._ffn(self.ln_attn(x + self.drop(self.attn(x, key_padding_mask))))
        return self._ffn(x + self.drop(self.attn(self.ln_attn(x), key_padding_mask)))

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, seq, dim), after the attention's residual
        if self.post_norm:
            return self.ln_ffn(x + self.drop(self.ffn(x)))
        return x + self.drop(self.ffn(self.ln_ffn(x)))  # (batch, seq, dim)

    def prefill(
        self, x: torch.Tensor, far_length: int | None = None
    ) -> tuple[torch.Tensor, AttentionState]:
        # x: (batch, seq, dim), a causal context without padding
        if self.post_norm:
            y, state = self.attn.prefill(x, far_length)
            return self._ffn(self.ln_attn(x + self.drop(y))), state
        y, state = self.attn.prefill(self.ln_attn(x), far_length)
        return self._ffn(x + self.drop(y)), state

    def step(self, x_t: torch.Tensor, state: AttentionState) -> tuple[torch.Tensor, AttentionState]:
        # x_t: (batch, 1, dim)
        if self.post_norm:
            y, state = self.attn.step(x_t, state)
            return self._ffn(self.ln_attn(x_t + self.drop(y))), state
        y, state = self.attn.step(self.ln_attn(x_t), state)
        return self._ffn(x_t + self.drop(y)), state

    def step_(self, x_t: torch.Tensor, state: AttentionState) -> torch.Tensor:
        # x_t: (batch, 1, dim); state: a static state, updated in place (FMMAttention.step_)
        if self.post_norm:
            return self._ffn(self.ln_attn(x_t + self.drop(self.attn.step_(x_t, state))))
        return self._ffn(x_t + self.drop(self.attn.step_(self.ln_attn(x_t), state)))


def block_stack(config: EncoderConfig | DecoderConfig, causal: bool) -> nn.ModuleList:
    """``config.depth`` blocks of the encoder (causal=False) or the decoder (True)."""
    options = {}
    if isinstance(config, DecoderConfig):
        options = dict(
            norm=config.norm, bias=config.attention_bias,
            far_feature_normalize=config.far_feature_normalize, far_eps=config.far_eps,
        )  # fmt: skip
    return nn.ModuleList(
        Block(
            config.dim,
            config.num_heads,
            config.ffn_dim,
            config.dropout,
            config.attention,
            causal=causal,
            activation=config.activation,
            **options,
        )  # fmt: skip
        for _ in range(config.depth)
    )


def init_layer_norms(module: nn.Module, std: float) -> None:
    """LayerNorm weights ~ N(1, std), biases 0 (Transformer-XL's init; std 0: left at 1)."""
    if std > 0:
        for m in module.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.normal_(m.weight, 1.0, std)
                nn.init.zeros_(m.bias)


def init_weights(module: nn.Module) -> None:
    """GPT-2 style init for ``model.apply``: N(0, 0.02) linear and embedding weights, zero biases.

    (PyTorch's N(0, 1) embedding init gives huge logits when the output layer is tied to it.)
    Blend weights and LayerNorms keep their own initialisation.
    """
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
