"""Random search's sanity baseline: one uniformly sampled architecture, no search at all.

NAS practice compares every search with an architecture drawn uniformly from the same space
and re-trained alike (Li & Talwalkar 2019; Yu et al. 2020): a search that does not beat it
has learnt nothing. The draw depends only on ``config.seed`` and the space, so a seed names
one architecture. ``step`` trains nothing; the executor still walks the data, so a random
row's search time is the data pipeline's and its budget matches the other rows' in updates.
"""
from __future__ import annotations

import random
from typing import Any, ClassVar

from nasframe.dsl.architecture import Architecture
from nasframe.searching.strategy import Backbone, SearchContext
from nasframe.strategies.evolution import ChoiceSpace
from nasframe.text.data import Batch


class RandomArchitecture:
    name: ClassVar[str] = "random"
    description: ClassVar[str] = ("Random: one architecture drawn uniformly per seed, no search "
                                  "(the sanity baseline)")
    backbone: ClassVar[Backbone] = "any"
    default_space: ClassVar[str] = "dartsformer"  # the same space as darts-reversible

    def setup(self, ctx: SearchContext) -> None:
        self.ctx = ctx
        net = ctx.supernet
        for a in net.arch_parameters():  # nothing is searched: alphas stay at their init
            a.requires_grad_(False)
        # A private RNG: the draw must not depend on what else consumed the global one.
        self.arch = sample_architecture(net.space, ctx.config.seed)
        net.set_mode("single")  # anything that evaluates the supernet sees the drawn path
        net.select(self.arch.choices)

    def step(self, train_batch: Batch, val_batch: Batch) -> dict[str, float]:
        return {}

    def derive(self) -> Architecture:
        return self.arch

    def state_dict(self) -> dict[str, Any]:
        return {"choices": dict(self.arch.choices)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        choices = {str(k): str(v) for k, v in state["choices"].items()}
        self.arch = self.arch.model_copy(update={"choices": choices})
        self.ctx.supernet.select(choices)


def sample_architecture(space: Any, seed: int) -> Architecture:
    """The architecture a ``random`` search with this seed returns: every node uniform."""
    arch = ChoiceSpace(space).random_sample(random.Random(seed))
    return arch.model_copy(update={"note": f"random: drawn uniformly with seed {seed}"})
