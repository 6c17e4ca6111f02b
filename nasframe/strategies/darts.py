"""Vanilla DARTS on the standard Transformer ("DARTS + Transformer", Zhao et al. 2021 §1): the same
bilevel search as DARTSformer under ordinary autograd, every candidate's output kept for
backward (the memory baseline of Fig. 1)."""
from __future__ import annotations

from typing import ClassVar

from nasframe.searching.strategy import Backbone
from nasframe.strategies._bilevel import BilevelDarts


class Darts(BilevelDarts):
    name: ClassVar[str] = "darts"
    description: ClassVar[str] = "vanilla DARTS on the standard Transformer (ordinary autograd)"
    backbone: ClassVar[Backbone] = "standard"
    default_space: ClassVar[str] = "darts-transformer"
    memory_saving: ClassVar[bool | None] = False
