"""Equal-size models: parsing targets, matching within 5%, the embedding breakdown."""
from __future__ import annotations

import pytest

import nasframe as nf
from nasframe.base.errors import ConfigError
from nasframe.dsl.space import Stack
from nasframe.engine.sizing import count_for, match_size, parameter_breakdown, parse_count
from nasframe.engine.supernet import ModelConfig, build_model, count_parameters
from nasframe.strategies.random import sample_architecture

BASE = ModelConfig(d_model=144, embed_dim=128)
VOCAB = 4000


def handpicked() -> nf.Architecture:
    """Self attention and FFN in every reversible layer (the issue's hand-picked one)."""
    space = nf.spaces.get("dartsformer")
    choices = {n: ("self_attention" if n.endswith("split1") else "ffn")
               for n in space.choice_nodes()}
    return nf.Architecture(space=space, choices=choices)


def architectures() -> dict[str, nf.Architecture | nf.SearchSpace]:
    darts_t = nf.spaces.get("darts-transformer")
    return {
        "transformer": nf.Architecture(space=nf.spaces.get("transformer"), choices={}),
        "transformer-space": nf.spaces.get("transformer", layers=2),
        "dartsformer-hand": handpicked(),
        "dartsformer-random-0": sample_architecture(nf.spaces.get("dartsformer"), 0),
        "dartsformer-random-1": sample_architecture(nf.spaces.get("dartsformer"), 1),
        "dartsformer-3-4-random": sample_architecture(
            nf.spaces.get("dartsformer", encoder_splits=3, decoder_splits=4, layers=1), 2),
        "darts-transformer-derived": nf.derive(
            darts_t, {n: _onehot(len(labels), 3) for n, labels in darts_t.choice_nodes().items()}),
        "tiny-random": sample_architecture(nf.spaces.get("tiny"), 3),
        "tiny-supernet": nf.spaces.get("tiny"),
    }


def _onehot(n: int, k: int) -> object:
    import torch
    t = torch.zeros(n)
    t[k % n] = 5.0
    return t


@pytest.mark.parametrize("text, value", [
    ("1.1M", 1_100_000), ("250k", 250_000), ("250K", 250_000), ("2e6", 2_000_000),
    ("1_100_000", 1_100_000), (" 3m ", 3_000_000), (1_500, 1_500), ("0.5g", 500_000_000),
])
def test_parse_count(text: object, value: int) -> None:
    assert parse_count(text) == value  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "1.1X", "M", "-3k", "0", "1.2.3M", True])
def test_parse_count_rejects_with_the_value(bad: object) -> None:
    with pytest.raises(ConfigError, match="parameter count"):
        parse_count(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(architectures()))
@pytest.mark.parametrize("target", ["1.1M", "2.5M"])
def test_match_size_lands_within_five_percent_keeping_every_width_rule(name: str,
                                                                       target: str) -> None:
    what = architectures()[name]
    config = match_size(what, target, BASE, VOCAB)
    wanted = parse_count(target)
    # a real build (not the meta one): every op accepts its width, divisibility included
    model = build_model(what, config, VOCAB) if isinstance(what, nf.Architecture) \
        else nf.Supernet(what, config, VOCAB) if what.choice_nodes() \
        else build_model(nf.Architecture(space=what, choices={}), config, VOCAB)
    assert abs(count_parameters(model) - wanted) <= 0.05 * wanted, (name, config)
    assert count_for(what, config, VOCAB) == count_parameters(model)
    space = what.space if isinstance(what, nf.Architecture) else what
    for _, part in space.parts():
        if isinstance(part, Stack):
            assert config.d_model % part.splits == 0
    assert (config.embed_dim, config.dropout) == (BASE.embed_dim, BASE.dropout)


def test_match_size_keeps_d_when_blocks_suffice() -> None:
    arch = nf.Architecture(space=nf.spaces.get("transformer"), choices={})
    one = count_for(arch, BASE, VOCAB)
    three = count_for(arch, BASE.model_copy(update={"blocks": 3}), VOCAB)
    config = match_size(arch, three, BASE, VOCAB)
    assert (config.d_model, config.blocks) == (144, 3)
    assert match_size(arch, one, BASE, VOCAB).blocks == 1


def test_heads_rule_is_kept_at_the_split_width() -> None:
    # 8 heads at split widths d/2 and d/3: d must be a multiple of 48
    config = match_size(handpicked(), "1.1M", BASE, VOCAB)
    assert config.d_model % 48 == 0


def test_impossible_target_names_it() -> None:
    with pytest.raises(ConfigError, match="target 1k parameters"):
        match_size(handpicked(), "1k", BASE, VOCAB)


def test_parameter_breakdown() -> None:
    arch = nf.Architecture(space=nf.spaces.get("transformer"), choices={})
    model = build_model(arch, BASE, VOCAB)
    parts = parameter_breakdown(model)
    assert parts["embedding"] == VOCAB * 128 + 128 * 144  # token table + projection to d
    assert parts["embedding"] + parts["non_embedding"] == parts["total"] == \
        count_parameters(model)
