"""A small reversible space for tests and CPU demos: few, cheap candidates."""
from __future__ import annotations

from nasframe.dsl.space import OpSet, SearchSpace, Stack, op
from nasframe.spaces import register

TINY_OPS = OpSet(["zero", "identity", "ffn", "self_attention", op("conv", kernel=3)])


def tiny(layers: int = 1, pool: str = "max") -> SearchSpace:
    return SearchSpace(
        name="tiny",
        encoder=Stack(splits=2, layers=layers, choices=TINY_OPS, pool=pool),
        decoder=Stack(splits=3, layers=layers, choices=TINY_OPS + ["cross_attention"], pool=pool,
                      fixed={3: "cross_attention"}),
    )


register("tiny", tiny)
