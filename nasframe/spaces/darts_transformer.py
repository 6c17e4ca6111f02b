"""Vanilla DARTS on a standard Transformer: 2 choice nodes per encoder and decoder block
(Zhao et al. 2021 §1, Fig. 1): encoder [choice, choice], decoder [choice, cross_attention,
choice]."""
from __future__ import annotations

from nasframe.dsl.space import OpSet, SearchSpace, Sequential, op
from nasframe.spaces import register

# 'zero' is left out: in a sequential layer it would erase the residual stream.
ENCODER_OPS = OpSet(["identity", "ffn", "glu", "self_attention", op("conv", kernel=3),
                     *[op("dynamic_conv", kernel=k) for k in (3, 7, 11, 15, 31)]])


def darts_transformer(layers: int = 1) -> SearchSpace:
    return SearchSpace(
        name="darts-transformer",
        encoder=Sequential([ENCODER_OPS, ENCODER_OPS], layers=layers),
        decoder=Sequential([ENCODER_OPS, "cross_attention", ENCODER_OPS], layers=layers),
    )


register("darts-transformer", darts_transformer)
