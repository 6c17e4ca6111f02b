"""DARTSformer (Zhao et al. 2021 §4): DARTS on the multi-split reversible backbone, searched with
backprop with reconstruction so memory does not grow with the number of candidates."""
from __future__ import annotations

from typing import ClassVar

from nasframe.searching.strategy import Backbone
from nasframe.strategies._bilevel import BilevelDarts


class DartsReversible(BilevelDarts):
    name: ClassVar[str] = "darts-reversible"
    description: ClassVar[str] = ("DARTSformer: DARTS on the reversible backbone, backprop "
                                  "with reconstruction")
    backbone: ClassVar[Backbone] = "reversible"
    default_space: ClassVar[str] = "dartsformer"
    memory_saving: ClassVar[bool | None] = None  # model.memory_saving (default True)
