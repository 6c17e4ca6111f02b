"""``ModelConfig``: how big a model built from a space is (the space says what).

Part of the run layer, so that configs and run directories record model sizes without
importing the engine that builds them. Its bounds keep a recorded config from asking for an
absurd model before the engine's parameter check (``nasframe.engine.model_size``) runs.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nasframe.base.errors import ConfigError, describe_validation_error
from nasframe.base.limits import MAX_BLOCKS, MAX_D_MODEL, MAX_EMBED_DIM

__all__ = ["ModelConfig"]


class ModelConfig(BaseModel):
    """Sizes of a model built from a space; the space says what, this says how big."""

    model_config = ConfigDict(extra="forbid")

    d_model: int = Field(64, ge=2, le=MAX_D_MODEL,
                         description="hidden size d of the searched layers")
    embed_dim: int | None = Field(None, ge=1, le=MAX_EMBED_DIM,
                                  description="factorised embedding E (None: d)")
    blocks: int = Field(1, ge=1, le=MAX_BLOCKS,
                        description="repeats of the block of L searched layers")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    memory_saving: bool = Field(True, description="backprop with reconstruction (reversible)")
    keep_layers: int = Field(0, ge=0, description="top K reversible layers of each stack keep "
                             "activations (ordinary autograd); the rest reconstruct")
    stream_dtype: Literal["float64", "model"] = Field(
        "float64", description="dtype of the reversible stream (the X/Y additions, the stored "
        "top output, the reconstruction) in a forward that builds a graph: float64 makes "
        "reconstruction exact in a float32 model, whose F_i still compute in float32 "
        "(gradients equal ordinary autograd's); model: the model's own dtype, which in "
        "float32 drifts ~1e-6 per layer. Inference keeps the model's dtype either way")
    split_norm: Literal["post", "branch"] = Field(
        "post", description="ops inside reversible splits: post: LayerNorm(x + f(x)), the "
        "paper's, which a supernet needs (its mixture compares candidates at one scale; DARTS "
        "with branch picks zero); branch: F_i = f(LayerNorm(x)), Y_i = X_i + F_i being the "
        "only residual, which re-trains a fixed model much better (README)")
    alpha_init_std: float = Field(1e-3, ge=0.0,
                                  description="alpha ~ N(0, std) (Zhao et al. 2021 §4)")
    pad_id: int = Field(0, ge=0)

    def __init__(self, **data: object) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise ConfigError(describe_validation_error(err, root="model", field_prefix="model.")
                              ) from None
