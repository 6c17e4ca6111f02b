"""Backbones turn one part of a search space (encoder or decoder) into modules.

``build_stack(spec, make_unit, ...)`` is dispatched on the layer kind: a reversible ``Stack``
becomes a ``ReversibleStack`` of split layers, a ``Sequential`` layer a standard Transformer
stack. Both are called the same way: ``stack(x, padding_mask=..., memory=..., memory_mask=...,
state=...)``.
"""
from __future__ import annotations

from nasframe.engine.backbones.embedding import FactorisedEmbedding, sinusoidal_positions
from nasframe.engine.backbones.reversible import SplitFunction, build_reversible_stack
from nasframe.engine.backbones.standard import (
    SequentialLayer,
    SequentialStack,
    build_sequential_stack,
)

__all__ = [
    "FactorisedEmbedding", "sinusoidal_positions", "SplitFunction", "build_reversible_stack",
    "SequentialLayer", "SequentialStack", "build_sequential_stack",
]
