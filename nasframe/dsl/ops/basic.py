"""The two parameter-free ops: Zero and Identity.

They are the only ops without their own residual connection and layer normalisation
(Zhao et al. 2021, section 4): Zero lets the search drop a split's update altogether,
Identity lets it pass the pooled input through unchanged. Both act position by position, so
they need no incremental-decoding state and are valid in causal and non-causal layers alike.
"""
from __future__ import annotations

from torch import Tensor

from nasframe.dsl.ops.base import Context, Operation, register_op

__all__ = ["Identity", "Zero", "identity", "zero"]


class Zero(Operation):
    """Returns zeros shaped like ``x``.

    ``x.mul(0.0)`` rather than ``torch.zeros_like(x)``: the result stays connected to the
    autograd graph (with a zero gradient), so the reversible engine can take the
    vector-Jacobian product of an F_i that is Zero exactly as for any other op.
    """

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        return x.mul(0.0)


class Identity(Operation):
    """Returns ``x`` itself."""

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        return x


@register_op("zero")
def zero(dim: int, *, causal: bool, dropout: float) -> Operation:
    """Zero: ``f(x) = 0``. ``dim``, ``causal`` and ``dropout`` are accepted and unused."""
    return Zero()


@register_op("identity")
def identity(dim: int, *, causal: bool, dropout: float) -> Operation:
    """Identity: ``f(x) = x``. ``dim``, ``causal`` and ``dropout`` are accepted and unused."""
    return Identity()
