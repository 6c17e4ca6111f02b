"""Factorised token embedding (V x E, then E x d) with sinusoidal positions, tied output layer."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from nasframe.dsl.ops.dropout import Dropout


def sinusoidal_positions(length: int, dim: int, start: int = 0) -> Tensor:
    """(length, dim) table of Vaswani et al.'s sin/cos positions, beginning at ``start``."""
    pos = torch.arange(start, start + length, dtype=torch.float64).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table


class FactorisedEmbedding(nn.Module):
    """Tokens -> (V x E) -> (E x d) + positions. A small E keeps a large vocabulary cheap
    while the searched layers work at width d (Zhao et al. 2021 §5: search (E, d) = (256, 960))."""

    def __init__(self, vocab_size: int, embed_dim: int, d_model: int, pad_id: int = 0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        nn.init.normal_(self.tokens.weight, std=embed_dim ** -0.5)
        with torch.no_grad():
            self.tokens.weight[pad_id].zero_()
        self.project = nn.Linear(embed_dim, d_model, bias=False) if embed_dim != d_model else None
        self.scale = math.sqrt(embed_dim)
        self.d_model = d_model
        self.dropout = Dropout(dropout)

    def forward(self, tokens: Tensor, start: int = 0) -> Tensor:
        h = self.tokens(tokens) * self.scale
        if self.project is not None:
            h = self.project(h)
        pos = sinusoidal_positions(tokens.size(1), self.d_model, start).to(h)
        return self.dropout(h + pos)

    def logits(self, h: Tensor) -> Tensor:
        """Output layer tied to the embedding: (d -> E) with the projection's transpose."""
        h, weight = self.output_features(h)
        return h @ weight.t()

    def output_features(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``h`` in the output layer's width E and the (vocabulary, E) weight: ``logits`` is
        the first times the second's transpose (``nasframe.text.output_loss`` takes them apart)."""
        if self.project is not None:
            h = h @ self.project.weight
        return h, self.tokens.weight
