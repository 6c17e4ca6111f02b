"""Evolutionary search over discrete architectures, behind two small interfaces.

``DiscreteSpace`` knows how to sample, mutate, cross over, save and load an architecture;
``Objective`` scores one (lower is better). ``evolve`` knows neither the supernet nor the
data, so another space encoding or another score (latency, BLEU of a short re-training) plugs
in without touching it (in the spirit of archai's ``discrete_search`` API).
"""
from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nasframe.dsl.architecture import Architecture
from nasframe.dsl.space import SearchSpace
from nasframe.run.config import EvolutionConfig

__all__ = ["DiscreteSpace", "Objective", "ChoiceSpace", "Candidate", "evolve"]


class DiscreteSpace(ABC):
    """What evolution searches: architectures it can sample, mutate, cross and save."""

    @abstractmethod
    def random_sample(self, rng: random.Random) -> Architecture: ...

    @abstractmethod
    def mutate(self, arch: Architecture, rng: random.Random) -> Architecture: ...

    @abstractmethod
    def crossover(self, a: Architecture, b: Architecture, rng: random.Random) -> Architecture: ...

    def save_arch(self, arch: Architecture, path: str | Path) -> Path:
        return arch.save(path)

    def load_arch(self, path: str | Path) -> Architecture:
        return Architecture.load(path)


class Objective(ABC):
    """Scores an architecture for evolution (lower is better)."""

    @abstractmethod
    def evaluate(self, arch: Architecture) -> float:
        """The score of ``arch``; lower is better."""


class ChoiceSpace(DiscreteSpace):
    """Architectures of a ``SearchSpace``: one label per choice node, every node independent."""

    def __init__(self, space: SearchSpace, mutation_prob: float = 0.1) -> None:
        self.space = space
        self.nodes = space.choice_nodes()
        self.mutation_prob = mutation_prob

    def _arch(self, choices: dict[str, str]) -> Architecture:
        return Architecture(space=self.space, choices=choices)

    def random_sample(self, rng: random.Random) -> Architecture:
        return self._arch({n: rng.choice(labels) for n, labels in self.nodes.items()})

    def mutate(self, arch: Architecture, rng: random.Random) -> Architecture:
        """Resample each node with probability ``mutation_prob`` (at least one node changes
        when it can, so a mutation is never a copy)."""
        choices = dict(arch.choices)
        for node, labels in self.nodes.items():
            if rng.random() < self.mutation_prob:
                choices[node] = rng.choice(labels)
        if choices == arch.choices:
            movable = [n for n, labels in self.nodes.items() if len(labels) > 1]
            if movable:
                node = rng.choice(movable)
                choices[node] = rng.choice([x for x in self.nodes[node] if x != choices[node]])
        return self._arch(choices)

    def crossover(self, a: Architecture, b: Architecture, rng: random.Random) -> Architecture:
        """Uniform crossover: each node from either parent."""
        return self._arch({n: (a if rng.random() < 0.5 else b).choices[n] for n in self.nodes})


@dataclass(frozen=True)
class Candidate:
    """An architecture evolution scored, with its score (lower is better)."""

    arch: Architecture
    score: float


def _key(arch: Architecture) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(arch.choices.items()))


def evolve(space: DiscreteSpace, objective: Objective, cfg: EvolutionConfig,
           rng: random.Random) -> list[Candidate]:
    """A random first generation of ``population`` architectures, then ``iterations``
    generations bred from the ``parents`` best seen so far (``crossover_rate`` of each by
    crossover, the rest by mutation). Every architecture is scored once. Returns the
    ``top_k`` best, best first (ties keep discovery order, so the result is seeded)."""
    seen: dict[tuple[tuple[str, str], ...], Candidate] = {}

    def add(arch: Architecture) -> bool:
        key = _key(arch)
        if key in seen:
            return False
        seen[key] = Candidate(arch, float(objective.evaluate(arch)))
        return True

    def best(k: int) -> list[Candidate]:
        return sorted(seen.values(), key=lambda c: c.score)[:k]

    _fill(lambda: add(space.random_sample(rng)), cfg.population)
    for _ in range(cfg.iterations):
        parents = [c.arch for c in best(cfg.parents)]
        n_cross = round(cfg.population * cfg.crossover_rate) if len(parents) > 1 else 0
        _fill(lambda ps=parents: add(space.crossover(*rng.sample(ps, 2), rng)), n_cross)
        _fill(lambda ps=parents: add(space.mutate(rng.choice(ps), rng)),
              cfg.population - n_cross)
    return best(cfg.top_k)


def _fill(try_add: Callable[[], bool], n: int) -> None:
    """Call ``try_add`` until it has added ``n`` new architectures or keeps failing (a small
    space runs out of unseen architectures)."""
    added, attempts = 0, 0
    while added < n and attempts < 20 * n:
        attempts += 1
        added += try_add()
