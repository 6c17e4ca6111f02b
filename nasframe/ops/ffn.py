"""Position-wise feed-forward ops: the Transformer FFN and its gated variant GLU.

Both act on every position independently, so they are causal by construction, ignore the
padding mask (a padded position only affects its own output) and need no state for
incremental decoding. They differ only in the non-linearity, and share the same hidden width
``expansion * dim`` and the same dropout after it, so that a search choosing between them
compares gating with ReLU and nothing else.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from nasframe.errors import SpaceError
from nasframe.ops.base import Context, Operation, Residual, register_op
from nasframe.ops.dropout import Dropout

__all__ = ["FeedForward", "GatedFeedForward", "ffn", "glu"]


def _hidden_width(op: str, dim: int, expansion: int) -> int:
    if not isinstance(expansion, int) or isinstance(expansion, bool) or expansion < 1:
        raise SpaceError(f"op {op!r}: expansion must be a positive integer, got {expansion!r}")
    return expansion * dim


class FeedForward(nn.Module):
    """``Linear(dim, h) -> ReLU -> dropout -> Linear(h, dim)`` (Vaswani et al., 2017)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.inner = nn.Linear(dim, hidden)
        self.dropout = Dropout(dropout)
        self.outer = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        return self.outer(self.dropout(F.relu(self.inner(x))))


class GatedFeedForward(nn.Module):
    """``Linear(dim, 2h) -> GLU -> dropout -> Linear(h, dim)`` (Dauphin et al., 2017).

    GLU splits the projection into a value half ``a`` and a gate half ``b`` and returns
    ``a * sigmoid(b)``: the gate's linear path keeps gradients from vanishing.
    """

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.inner = nn.Linear(dim, 2 * hidden)
        self.dropout = Dropout(dropout)
        self.outer = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        return self.outer(self.dropout(F.glu(self.inner(x), dim=-1)))


@register_op("ffn")
def ffn(dim: int, *, causal: bool, dropout: float, expansion: int = 4) -> Operation:
    """Transformer feed-forward block with its own residual and layer norm."""
    hidden = _hidden_width("ffn", dim, expansion)
    return Residual(dim, FeedForward(dim, hidden, dropout), dropout)


@register_op("glu")
def glu(dim: int, *, causal: bool, dropout: float, expansion: int = 4) -> Operation:
    """Gated-linear-unit feed-forward block with its own residual and layer norm."""
    hidden = _hidden_width("glu", dim, expansion)
    return Residual(dim, GatedFeedForward(dim, hidden, dropout), dropout)
