"""The ``random`` strategy: one uniformly drawn architecture per seed, no training."""
from __future__ import annotations

from typing import Any

import torch

import nasframe as nf
from nasframe.run.config import SearchConfig, apply_overrides
from nasframe.searching.api import search
from nasframe.searching.strategy import available_strategies, get_strategy
from nasframe.strategies.random import RandomArchitecture, sample_architecture


def tiny_config(seed: int, **extra: Any) -> SearchConfig:
    return apply_overrides(SearchConfig.preset_config("tiny"), {
        "device": "cpu", "seed": seed, "steps": 3, "log_every": 1, "checkpoint_every": 2,
        "data.source": "synthetic:reverse", "data.vocab_size": 12,
        "data.synthetic_len": [2, 6], "data.synthetic_pairs": 120, "data.max_tokens": 48,
        "model.d_model": 48, "model.embed_dim": 16, **extra})


def test_random_is_a_built_in_strategy_on_the_darts_reversible_space() -> None:
    assert get_strategy("random") is RandomArchitecture
    assert "random" in available_strategies()
    assert RandomArchitecture.default_space == get_strategy("darts-reversible").default_space


def test_draw_is_deterministic_per_seed_and_differs_across_seeds() -> None:
    space = nf.spaces.get("dartsformer")
    nodes = space.choice_nodes()
    draws = {seed: sample_architecture(space, seed).choices for seed in range(6)}
    assert draws[0] == sample_architecture(space, 0).choices
    assert len({tuple(sorted(c.items())) for c in draws.values()}) == 6
    for choices in draws.values():
        assert set(choices) == set(nodes)
        assert all(label in nodes[node] for node, label in choices.items())


def test_runs_through_search_without_changing_a_weight(tmp_path: Any) -> None:
    first = search("tiny", "random", config=tiny_config(seed=5), out=tmp_path / "a")
    again = search("tiny", "random", config=tiny_config(seed=5, steps=1))
    other = search("tiny", "random", config=tiny_config(seed=6))
    assert (first.steps, again.steps) == (3, 1)
    assert first.architecture.choices == again.architecture.choices
    assert first.architecture.choices == sample_architecture(nf.spaces.get("tiny"), 5).choices
    assert first.architecture.choices != other.architecture.choices
    assert first.alphas == {}  # nothing searched
    # no update: after 3 steps the weights are those after 1 (the same seeded init)
    for (name, p), (_, q) in zip(first.supernet.named_parameters(),
                                 again.supernet.named_parameters()):
        assert torch.equal(p, q), name
    assert (tmp_path / "a" / "arch.json").is_file()
    resumed = search("tiny", "random", config=tiny_config(seed=5, steps=4), out=tmp_path / "a",
                     resume=True)
    assert resumed.steps == 4
    assert resumed.architecture.choices == first.architecture.choices
