"""Bidirectional encoder (LRA): embeddings, pre-LN blocks, final LayerNorm, pooling.

Shapes: input_ids ``(batch, seq)`` long; padding_mask bool ``(batch, seq)``, True = padding
(or None: no padding). encode_sequence -> ``(batch, seq, dim)``; forward -> ``(batch, dim)``.

Pooling: ``mean`` averages the non-padding positions; ``mean_padded`` zeroes the padding
positions and averages over all ``seq`` of them, as the released LRA code does (so a short
sequence pools to a proportionally smaller vector); ``cls`` prepends a learned CLS vector
(at position 0, so the tokens take positions 1 .. seq and learned positions number
max_length + 1) and returns its final state.

Init (``EncoderConfig.init``): ``lra`` keeps PyTorch's default init of every Linear and
LayerNorm and draws token and position embeddings from N(0, 0.02) (the released LRA code's
``Embeddings``); ``normal`` is GPT-2's N(0, 0.02) for every Linear and embedding. With
``normal`` the paper's ListOps runs did not leave the majority baseline in 5,000 steps.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import block_stack, init_weights
from .config import EncoderConfig
from .embeddings import TokenPositionEmbedding

POOLINGS = ("mean", "mean_padded", "cls")
INITS = ("lra", "normal")


def init_embeddings(module: nn.Module) -> None:
    """The released LRA init for ``model.apply``: N(0, 0.02) embeddings; every other module
    keeps PyTorch's default (Linear: Kaiming-uniform weights, uniform biases)."""
    if isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


class FMMEncoder(nn.Module):
    def __init__(self, vocab_size: int, max_length: int, config: EncoderConfig):
        super().__init__()
        if config.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {config.pooling!r}")
        if config.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {config.init!r}")
        if config.depth < 1:
            raise ValueError(f"depth must be >= 1, got {config.depth}")
        self.config, self.max_length = config, max_length
        self.use_cls = config.pooling == "cls"
        self.embed = TokenPositionEmbedding(
            vocab_size, config.dim, max_length + int(self.use_cls), config.positions, config.dropout
        )
        self.blocks = block_stack(config, causal=False)
        self.ln_final = nn.LayerNorm(config.dim)
        self.apply(init_weights if config.init == "normal" else init_embeddings)
        self.cls = nn.Parameter(torch.randn(1, 1, config.dim) * 0.02) if self.use_cls else None

    def _check(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None) -> None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.max_length:
            raise ValueError(f"sequence length {input_ids.shape[1]} > max_length {self.max_length}")
        if padding_mask is not None:
            if padding_mask.dtype != torch.bool:
                raise TypeError(
                    f"padding_mask must be bool (True = padding), got {padding_mask.dtype}"
                )
            if padding_mask.shape != input_ids.shape:
                raise ValueError(
                    f"padding_mask shape {tuple(padding_mask.shape)} != input_ids shape "
                    f"{tuple(input_ids.shape)}"
                )

    def _hidden(self, input_ids, padding_mask):
        """Final states of every position, CLS included: ``(batch, seq (+1), dim)``, mask."""
        self._check(input_ids, padding_mask)
        x = self.embed.token_embedding(input_ids)  # (batch, seq, dim)
        if self.use_cls:
            x = torch.cat([self.cls.expand(x.shape[0], 1, -1).to(x.dtype), x], dim=1)
            if padding_mask is not None:
                padding_mask = torch.cat([padding_mask.new_zeros(x.shape[0], 1), padding_mask], 1)
        x = x + self.embed.position_embedding(0, x.shape[1], x.device)
        x = self.embed.drop(x)  # (batch, seq', dim)
        for block in self.blocks:
            x = block(x, padding_mask)
        return self.ln_final(x), padding_mask

    def encode_sequence(
        self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final states of the tokens ``(batch, seq, dim)`` (the CLS state is left out)."""
        h, _ = self._hidden(input_ids, padding_mask)
        return h[:, 1:] if self.use_cls else h

    def forward(
        self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        h, mask = self._hidden(input_ids, padding_mask)  # (batch, seq', dim)
        if self.use_cls:
            return h[:, 0]  # (batch, dim)
        if mask is None:
            return h.mean(dim=1)
        if self.config.pooling == "mean_padded":
            return h.masked_fill(mask.unsqueeze(-1), 0.0).mean(dim=1)  # (batch, dim)
        keep = (~mask).unsqueeze(-1).to(h.dtype)  # (batch, seq, 1)
        # An all-padding row has no position to average: it pools to zeros.
        return (h * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)  # (batch, dim)
