"""The fixed Transformer baseline (Vaswani et al. 2017) as a space with no choices."""
from __future__ import annotations

from nasframe.dsl.space import SearchSpace, Sequential
from nasframe.spaces import register


def transformer(layers: int = 1) -> SearchSpace:
    return SearchSpace(
        name="transformer",
        encoder=Sequential(["self_attention", "ffn"], layers=layers),
        decoder=Sequential(["self_attention", "cross_attention", "ffn"], layers=layers),
    )


register("transformer", transformer)
