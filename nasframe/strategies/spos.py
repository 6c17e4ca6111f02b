"""Single-path one-shot (SPOS; Guo et al. 2020), the paper's "Sampling" baseline (Table 1).

Training: every batch, each choice node evaluates one candidate drawn uniformly (mode
``sampled``); only that path's weights get gradients; there are no alphas (they are frozen).
Selection: an evolutionary search over architectures, each scored by its search-valid loss
with the shared weights (mode ``fixed``); ``derive`` returns the best and ``candidates`` the
``top_k`` with their scores.
"""
from __future__ import annotations

import random
from typing import Any, ClassVar

from nasframe.base.runtime import set_random_state
from nasframe.dsl.architecture import Architecture
from nasframe.searching.strategy import Backbone, SearchContext
from nasframe.searching.updates import weight_optimizer, weight_update
from nasframe.strategies.evolution import Candidate, ChoiceSpace, Objective, evolve
from nasframe.text.data import Batch


class SupernetLoss(Objective):
    """Search-valid loss of an architecture inside the supernet, with the shared weights."""

    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx

    def evaluate(self, arch: Architecture) -> float:
        self.ctx.supernet.select(arch.choices)
        return self.ctx.validation_loss()


class Spos:
    name: ClassVar[str] = "spos"
    description: ClassVar[str] = ("SPOS: uniform single-path sampling, then evolution on "
                                  "search-valid loss")
    backbone: ClassVar[Backbone] = "any"
    default_space: ClassVar[str] = "dartsformer"

    def setup(self, ctx: SearchContext) -> None:
        self.ctx = ctx
        net = ctx.supernet
        for a in net.arch_parameters():  # no alphas: nothing may train or decay them
            a.requires_grad_(False)
        net.set_mode("single")
        self.weights = [p for p in net.weight_parameters() if p.requires_grad]
        self.w_opt, self.w_sched = weight_optimizer(self.weights, ctx.config.optim)
        # Seeded alike on every DDP process: all ranks train the same path, so their
        # gradients (None on the paths not taken) line up for averaging.
        self.rng = random.Random(ctx.config.seed)
        self.space = ChoiceSpace(net.space, ctx.config.evolution.mutation_prob)
        self.top: list[Candidate] = []
        self.evolved_at = -1

    def step(self, train_batch: Batch, val_batch: Batch) -> dict[str, float]:
        net, lr = self.ctx.supernet, self.w_opt.param_groups[0]["lr"]
        net.select(self.space.random_sample(self.rng).choices)
        loss = self.ctx.loss(train_batch)
        norm = weight_update(self.ctx, self.weights, loss, self.w_opt, self.w_sched)
        return {"loss_train": float(loss.detach()), "lr": lr, "grad_norm": norm}

    # -- selection --------------------------------------------------------------------------
    def candidates(self) -> list[Candidate]:
        """The ``top_k`` architectures of the evolution at the current update, best first."""
        if self.evolved_at != self.ctx.step or not self.top:
            self._evolve()
        return list(self.top)

    def derive(self) -> Architecture:
        best = self.candidates()[0]
        return best.arch.model_copy(update={
            "note": f"spos, update {self.ctx.step}: best of evolution, search-valid loss "
                    f"{best.score:.4f}"})

    def _evolve(self) -> None:
        cfg, net = self.ctx.config.evolution, self.ctx.supernet
        seed = cfg.seed if cfg.seed is not None else self.ctx.config.seed
        # Its own seeded RNG: deriving at a checkpoint must not change the training that
        # follows, or a resumed run would differ from an uninterrupted one.
        try:
            net.set_mode("single")
            self.top = evolve(self.space, SupernetLoss(self.ctx), cfg, random.Random(seed))
        finally:
            net.set_mode("single")
        self.evolved_at = self.ctx.step

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "w_opt": self.w_opt.state_dict(), "w_sched": self.w_sched.state_dict(),
            "rng": self.rng.getstate(), "evolved_at": self.evolved_at,
            "top": [{"choices": c.arch.choices, "score": c.score} for c in self.top],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.w_opt.load_state_dict(state["w_opt"])
        self.w_sched.load_state_dict(state["w_sched"])
        set_random_state(self.rng, state["rng"])
        self.evolved_at = int(state["evolved_at"])
        space = self.ctx.supernet.space
        self.top = [Candidate(Architecture(space=space, choices=c["choices"]), float(c["score"]))
                    for c in state["top"]]

