"""Token embeddings plus absolute positions (learned, or sinusoidal as in Vaswani et al.).

    x = s * E[token] + P[position],   s = sqrt(dim) with ``scale`` (Transformer-XL's emb_scale)

Positions:
    learned         a table of ``max_positions`` rows;
    sinusoidal      P[p, 2i] = sin(p w_i), P[p, 2i+1] = cos(p w_i), p = index in the sequence;
    transformer_xl  P[p] = [sin(p w), cos(p w)] concatenated (Transformer-XL's PositionalEmbedding)
                    with p counted down: p = max_positions - 1 - t. The released LM code counts
                    down to the end of its input (p = len - 1 - t); for windows of
                    ``max_positions`` tokens (training, sliding-window evaluation) the two agree.
                    Anchoring at max_positions keeps a token's embedding independent of the tokens
                    after it, so decoding can match the forward; past max_positions p < 0.
    w_i = 10000^(-2i/dim).

Shapes: input_ids ``(batch, seq)`` long -> ``(batch, seq, dim)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_positions(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(...); ``(len,) -> (len, dim)``.

    Defined for every position, so a model with sinusoidal positions can run past the
    ``max_positions`` it was built with (learned positions cannot).
    """
    half = torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32)
    inv_freq = torch.exp(-math.log(10000.0) * half / dim)  # (ceil(dim / 2),)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # (len, ceil(dim / 2))
    pe = torch.zeros(positions.shape[0], dim, device=positions.device)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return pe


def transformer_xl_positions(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """[sin(p w), cos(p w)] concatenated, w_i = 10000^(-2i/dim): ``(len,) -> (len, dim)``."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0.0, dim, 2.0, device=positions.device) / dim))
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # (len, ceil(dim / 2))
    return torch.cat([angles.sin(), angles.cos()], dim=-1)[:, :dim]


_POSITIONS = ("learned", "sinusoidal", "transformer_xl")


class TokenPositionEmbedding(nn.Module):
    """``x = s * E[token] + P[position]``, then dropout (module docstring)."""

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        max_positions: int,
        positions: str = "learned",
        dropout: float = 0.0,
        scale: bool = False,
    ):
        super().__init__()
        if vocab_size < 1 or dim < 1 or max_positions < 1:
            raise ValueError(
                f"vocab_size, dim and max_positions must be >= 1, got {vocab_size}, {dim}, "
                f"{max_positions}"
            )
        if positions not in _POSITIONS:
            raise ValueError(f"positions must be one of {_POSITIONS}, got {positions!r}")
        self.vocab_size, self.dim = vocab_size, dim
        self.max_positions, self.positions = max_positions, positions
        self.tokens = nn.Embedding(vocab_size, dim)
        self.learned = nn.Embedding(max_positions, dim) if positions == "learned" else None
        self.drop = nn.Dropout(dropout)
        self.scale = math.sqrt(dim) if scale else 1.0

    def position_embedding(self, start: int | torch.Tensor, length: int, device) -> torch.Tensor:
        """Embeddings of positions start .. start + length - 1: ``(length, dim)``.

        ``start`` may be a 0-dim long tensor (static decoding: no host synchronisation); the
        caller then keeps learned positions below ``max_positions`` (not checked).
        """
        if isinstance(start, torch.Tensor):
            pos = start + torch.arange(length, device=device)
        else:
            end = start + length
            if self.learned is not None and end > self.max_positions:
                raise ValueError(
                    f"position {end - 1} is beyond the {self.max_positions} learned positions "
                    "(use positions='sinusoidal' to run past max_length)"
                )
            pos = torch.arange(start, end, device=device)
        if self.learned is not None:
            return self.learned(pos)
        if self.positions == "transformer_xl":
            pe = transformer_xl_positions(self.max_positions - 1 - pos, self.dim)
        else:
            pe = sinusoidal_positions(pos, self.dim)
        return pe.to(self.tokens.weight.dtype)

    def token_embedding(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.dtype != torch.long:
            raise TypeError(f"input_ids must be torch.long, got {input_ids.dtype}")
        return self.tokens(input_ids)

    def forward(self, input_ids: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor:
        # input_ids: (batch, seq); positions start .. start + seq - 1
        x = self.token_embedding(input_ids) * self.scale  # (batch, seq, dim)
        x = x + self.position_embedding(start, input_ids.shape[1], input_ids.device)
        return self.drop(x)
