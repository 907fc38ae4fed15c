"""Task heads on the encoder, as in the LRA code (Nystromformer's ``SCHead``/``SCHeadDual``).

SequenceClassifier:   logits = MLP(pool(enc(x)))                      (batch, classes)
DualEncoderRetrieval: u = pool(enc(x1)), v = pool(enc(x2)) (one shared encoder),
                      logits = MLP([u, v, u * v, u - v])              (batch, classes)
MLP = Linear(in, ffn_dim) -> ReLU -> Linear(ffn_dim, classes); the LRA code's hidden size is
its ``transformer_hidden_dim``, our ``EncoderConfig.ffn_dim``.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import init_weights
from .config import EncoderConfig
from .encoder import FMMEncoder


def _mlp(in_dim: int, hidden: int, num_classes: int, init: str) -> nn.Sequential:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    if init == "normal":  # "lra": PyTorch's own init, as the released SCHead
        mlp.apply(init_weights)
    return mlp


class SequenceClassifier(nn.Module):
    def __init__(self, vocab_size: int, num_classes: int, max_length: int, config: EncoderConfig):
        super().__init__()
        self.encoder = FMMEncoder(vocab_size, max_length, config)
        self.head = _mlp(config.dim, config.ffn_dim, num_classes, config.init)

    def forward(
        self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        # input_ids, padding_mask: (batch, seq)
        return self.head(self.encoder(input_ids, padding_mask))  # (batch, classes)


class DualEncoderRetrieval(nn.Module):
    def __init__(self, vocab_size: int, num_classes: int, max_length: int, config: EncoderConfig):
        super().__init__()
        self.encoder = FMMEncoder(vocab_size, max_length, config)
        self.head = _mlp(4 * config.dim, config.ffn_dim, num_classes, config.init)

    def forward(
        self,
        input_ids_1: torch.Tensor,
        padding_mask_1: torch.Tensor | None,
        input_ids_2: torch.Tensor,
        padding_mask_2: torch.Tensor | None,
    ) -> torch.Tensor:
        # input_ids_k, padding_mask_k: (batch, seq_k)
        u = self.encoder(input_ids_1, padding_mask_1)  # (batch, dim)
        v = self.encoder(input_ids_2, padding_mask_2)  # (batch, dim)
        return self.head(torch.cat([u, v, u * v, u - v], dim=-1))  # (batch, classes)
