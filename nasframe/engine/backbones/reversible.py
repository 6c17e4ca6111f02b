"""The reversible multi-split backbone (DARTSformer): each F_i pools its inputs and applies an
op or a choice node (Zhao et al. 2021 Eq. 5)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from nasframe.dsl.ops import Context
from nasframe.dsl.space import Stack
from nasframe.engine.reversible import ReversibleStack, SplitLayer, parse_inputs


class SplitFunction(nn.Module):
    """F_i(inputs) = op(pool(inputs)): element-wise max or mean over the split's inputs."""

    def __init__(self, op: nn.Module, pool: str) -> None:
        super().__init__()
        self.op = op
        self.pool = pool

    def forward(self, inputs: list[Tensor], **ctx: Any) -> Tensor:
        # A chain of binary ops: no stacked copy of the inputs, and nothing saved for the
        # mean (a sum's backward needs no tensors).
        pooled = inputs[0]
        if self.pool == "max":
            for t in inputs[1:]:
                pooled = torch.maximum(pooled, t)
        elif len(inputs) > 1:
            for t in inputs[1:]:
                pooled = pooled + t
            pooled = pooled / len(inputs)
        return self.op(pooled, Context(**ctx))


def build_reversible_stack(spec: Stack, blocks: int, memory_saving: bool,
                           make_unit: Callable[[int, str], nn.Module],
                           keep_layers: int = 0, stream_dtype: torch.dtype | None = None
                           ) -> ReversibleStack:
    """``blocks`` repeats of the ``spec.layers`` searched layers, each split's F_i built by
    ``make_unit(layer, "split<i>")``; weights are separate, choices shared per layer index.
    The top ``keep_layers`` layers keep their activations (ordinary autograd); the stream is
    carried in ``stream_dtype`` (None: the input's)."""
    inputs = parse_inputs(spec.inputs)
    layers = []
    for _ in range(blocks):
        for l in range(1, spec.layers + 1):
            fns = [SplitFunction(make_unit(l, unit), spec.pool) for unit, _ in spec.units()]
            layers.append(SplitLayer(fns, inputs))
    return ReversibleStack(layers, memory_saving=memory_saving, keep_last=keep_layers,
                           stream_dtype=stream_dtype)
