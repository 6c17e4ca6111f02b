"""The paper's space (Zhao et al. 2021 §4): 2-split encoder, 3-split decoder, L searched layers."""
from __future__ import annotations

from nasframe.dsl.space import OpSet, SearchSpace, Stack, op
from nasframe.spaces import register

# Zhao et al. 2021 §4 (ours where the copy lost the list): 11 encoder ops, 12 decoder ops.
ENCODER_OPS = OpSet(["zero", "identity", "ffn", "glu", "self_attention", op("conv", kernel=3),
                     *[op("dynamic_conv", kernel=k) for k in (3, 7, 11, 15, 31)]])
DECODER_OPS = ENCODER_OPS + ["cross_attention"]


def dartsformer(layers: int = 2, encoder_splits: int = 2, decoder_splits: int = 3,
                pool: str = "max") -> SearchSpace:
    return SearchSpace(
        name="dartsformer",
        encoder=Stack(splits=encoder_splits, layers=layers, choices=ENCODER_OPS, pool=pool),
        decoder=Stack(splits=decoder_splits, layers=layers, choices=DECODER_OPS, pool=pool,
                      fixed={decoder_splits: "cross_attention"}),
    )


register("dartsformer", dartsformer)
