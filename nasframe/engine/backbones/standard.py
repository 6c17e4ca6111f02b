"""The standard Transformer backbone: residual sublayers in order (each op owns its residual
and layer norm), some of which may be choice nodes (vanilla DARTS on a Transformer)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from nasframe.dsl.ops import Context
from nasframe.dsl.space import Sequential


class SequentialLayer(nn.Module):
    """One searched layer of the standard backbone: its residual sublayers applied in order."""

    def __init__(self, sublayers: list[nn.Module]) -> None:
        super().__init__()
        self.sublayers = nn.ModuleList(sublayers)

    def forward(self, x: Tensor, **ctx: Any) -> Tensor:
        context = Context(**ctx)
        for sub in self.sublayers:
            x = sub(x, context)
        return x


class SequentialStack(nn.Module):
    """The standard (non-reversible) Transformer stack: ``SequentialLayer``s applied in order,
    trained by ordinary backprop."""

    def __init__(self, layers: list[SequentialLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, **ctx: Any) -> Tensor:
        for layer in self.layers:
            x = layer(x, **ctx)
        return x


def build_sequential_stack(spec: Sequential, blocks: int,
                           make_unit: Callable[[int, str], nn.Module]) -> SequentialStack:
    """``blocks`` repeats of the ``spec.layers`` searched layers; weights are never shared.

    ``make_unit(layer, unit)`` returns the module (op or choice node) of one sublayer.
    """
    layers = []
    for _ in range(blocks):
        for l in range(1, spec.layers + 1):
            layers.append(SequentialLayer([make_unit(l, unit) for unit, _ in spec.units()]))
    return SequentialStack(layers)
