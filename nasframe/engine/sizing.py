"""Models of equal size: pick ``blocks`` (and ``d_model`` where needed) to hit a parameter count.

The paper compares architectures "with similar model sizes"; comparing at one ``d_model``
instead favours whichever family packs more parameters into a layer (a reversible op runs at
width d/n, a Transformer sublayer at d). ``match_size`` keeps every rule a width must obey
(d divisible by every stack's splits, each op's own rules at its width, such as attention
heads dividing it) by asking the ops themselves, so a new op's rules are kept for free.

Counting is exact and cheap: for a fixed ``embed_dim`` the count is a quadratic in d for a
given number of blocks and affine in the number of blocks (every block repeats the same
layers), so six models built on the ``meta`` device (no memory) give it everywhere, and the
chosen size is checked with one more exact build.
"""
from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from nasframe.base.errors import ConfigError, SpaceError
from nasframe.dsl import ops
from nasframe.dsl.architecture import Architecture
from nasframe.dsl.space import OpSet, OpSpec, SearchSpace, Stack
from nasframe.engine.supernet import ModelConfig, Supernet, build_model, count_parameters

__all__ = ["match_size", "parameter_breakdown", "parse_count", "count_for", "format_count"]

TOLERANCE = 0.05
_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}
_COUNT = re.compile(r"^\s*([0-9][0-9_]*(?:\.[0-9]+)?(?:e[0-9]+)?)\s*([kmgb]?)\s*$", re.I)


def parse_count(value: str | int | float, what: str = "target") -> int:
    """``"1.1M"``, ``"250k"``, ``"2e6"``, ``"1_100_000"`` or a number -> a parameter count."""
    if isinstance(value, bool):
        raise ConfigError(f"{what}: {value!r} is not a parameter count")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        m = _COUNT.match(str(value))
        if not m:
            raise ConfigError(f"{what}: cannot read {value!r} as a parameter count "
                              "(write e.g. 1.1M, 250k, 2e6 or 1100000)")
        number = float(m.group(1).replace("_", "")) * _SUFFIX[m.group(2).lower()]
    if not math.isfinite(number) or number < 1:
        raise ConfigError(f"{what}: {value!r} is not a positive parameter count")
    return int(round(number))


def format_count(n: int) -> str:
    """1_151_440 -> ``1.15M``; 250_000 -> ``250k``."""
    if n >= 10**6:
        return f"{n / 10**6:.3g}M"
    return f"{n / 10**3:.3g}k" if n >= 10**3 else str(n)


def parameter_breakdown(model: nn.Module) -> dict[str, int]:
    """Embedding (token table and its projection to d, tied with the output layer),
    non-embedding (everything else) and total parameters of a built model."""
    total = count_parameters(model)
    embed = getattr(model, "embed", None)
    embedding = count_parameters(embed) if isinstance(embed, nn.Module) else 0
    return {"embedding": embedding, "non_embedding": total - embedding, "total": total}


# ----------------------------------------------------------------------------- counting

def _model(what: Architecture | SearchSpace, config: ModelConfig, vocab_size: int) -> nn.Module:
    """The model whose size is matched: an architecture's fixed model, or a space's supernet
    (a space with no choice nodes is its one architecture)."""
    with torch.device("meta"):  # shapes only: a billion-parameter candidate costs nothing
        if isinstance(what, Architecture):
            return build_model(what, config, vocab_size)
        if not what.choice_nodes():
            return build_model(Architecture(space=what, choices={}), config, vocab_size)
        return Supernet(what, config, vocab_size)


def count_for(what: Architecture | SearchSpace, config: ModelConfig, vocab_size: int) -> int:
    """Exact parameter count of ``what`` at ``config`` (built on the meta device)."""
    return count_parameters(_model(what, config, vocab_size))


def _used_ops(what: Architecture | SearchSpace) -> Iterator[tuple[Stack | object, OpSpec, bool]]:
    """(part spec, op, causal) for every op the model of ``what`` holds."""
    space = what.space if isinstance(what, Architecture) else what
    for part, spec in space.parts():
        for layer in range(1, spec.layers + 1):
            for unit, unit_ops in spec.units():
                if isinstance(unit_ops, OpSpec):
                    yield spec, unit_ops, part == "decoder"
                elif isinstance(what, Architecture):
                    label = what.choices[f"{part}.layer{layer}.{unit}"]
                    yield spec, unit_ops.get(label), part == "decoder"
                else:
                    assert isinstance(unit_ops, OpSet)
                    for o in unit_ops.ops:
                        yield spec, o, part == "decoder"


def _valid_d(what: Architecture | SearchSpace, d: int) -> bool:
    """Whether every op accepts its width at this d (the ops say, so new rules are kept)."""
    seen: set[tuple[int, str, bool]] = set()
    with torch.device("meta"):
        for spec, o, causal in _used_ops(what):
            splits = spec.splits if isinstance(spec, Stack) else 1
            if d % splits:
                return False
            key = (d // splits, o.label, causal)
            if key in seen:
                continue
            seen.add(key)
            try:
                ops.create_op(o.name, d // splits, causal=causal, memory_dim=d, **o.params)
            except SpaceError:
                return False
    return True


def _granularity(what: Architecture | SearchSpace) -> int:
    space = what.space if isinstance(what, Architecture) else what
    return math.lcm(*(s.splits if isinstance(s, Stack) else 1 for _, s in space.parts()), 2)


# ----------------------------------------------------------------------------- matching

def match_size(what: Architecture | SearchSpace, target_params: int | str,
               base: ModelConfig | None = None, vocab_size: int = 1000, *,
               tolerance: float = TOLERANCE, max_blocks: int = 32,
               max_d: int = 8192) -> ModelConfig:
    """``base`` with ``blocks`` and, if no block count alone comes within ``tolerance`` of the
    target, ``d_model`` changed so the model of ``what`` has about ``target_params``.

    Keeps ``embed_dim``, dropout and every other field. Of the sizes within ``tolerance``
    it takes ``base.d_model`` if it can (then the count nearest the target), else the one
    nearest ``base`` in log d + log blocks, so that neither width nor depth is pushed far
    alone (a narrow model of many blocks leaves its heads a few dimensions each). Raises
    ConfigError naming the target when no (blocks, d) lands within ``tolerance``.
    """
    base = base or ModelConfig()
    target = parse_count(target_params)
    g = _granularity(what)
    d0 = base.d_model
    valid: dict[int, bool] = {}

    def is_valid(d: int) -> bool:
        if d not in valid:
            valid[d] = _valid_d(what, d)
        return valid[d]

    def at(d: int, blocks: int) -> ModelConfig:
        return base.model_copy(update={"d_model": d, "blocks": blocks})

    # Three valid widths give the quadratic in d; two block counts give the slope in blocks.
    probes = list(itertools.islice((d for d in range(g, max_d + 1, g) if is_valid(d)), 3))
    if len(probes) < 3:
        raise ConfigError(f"target {format_count(target)} parameters: fewer than three widths "
                          f"up to {max_d} suit every op of {_name(what)}")
    one = [count_for(what, at(d, 1), vocab_size) for d in probes]
    two = [count_for(what, at(d, 2), vocab_size) for d in probes]
    fixed_part = np.polyfit(probes, [2 * a - b for a, b in zip(one, two)], 2)
    per_block = np.polyfit(probes, [b - a for a, b in zip(one, two)], 2)

    def predicted(d: int, blocks: int) -> float:
        return float(np.polyval(fixed_part, d) + blocks * np.polyval(per_block, d))

    best: tuple[tuple[float, float, float], int, int] | None = None
    nearest: tuple[float, int, int] | None = None
    for blocks in range(1, max_blocks + 1):
        for d in _widths_near(predicted, blocks, target, g, max_d):
            if not is_valid(d):
                continue
            err = abs(predicted(d, blocks) - target) / target
            if nearest is None or err < nearest[0]:
                nearest = (err, d, blocks)
            if err <= tolerance:
                key = (float(d != d0),
                       abs(math.log(d / d0)) + abs(math.log(blocks / base.blocks)), err)
                if best is None or key < best[0]:
                    best = (key, d, blocks)
    if best is None:
        near = f"; nearest: {_describe(nearest)}" if nearest else ""
        raise ConfigError(f"target {format_count(target)} parameters: no blocks <= {max_blocks} "
                          f"and d_model <= {max_d} give {_name(what)} within "
                          f"{tolerance:.0%}{near}")
    config = at(best[1], best[2])
    exact = count_for(what, config, vocab_size)
    if abs(exact - target) > tolerance * target:  # pragma: no cover - the count is quadratic
        raise ConfigError(f"target {format_count(target)} parameters: d_model={best[1]}, "
                          f"blocks={best[2]} gives {exact:,}, off by more than {tolerance:.0%}")
    return config


def _widths_near(f: Callable[[int, int], float], blocks: int, target: int, g: int,
                 max_d: int, span: int = 24) -> list[int]:
    """Multiples of g around the d where the count ``f(d, blocks)`` crosses the target
    (bisection: the count grows with d); ``span`` on each side, as some may be invalid."""
    lo, hi = 1, max_d // g
    while lo < hi:
        mid = (lo + hi) // 2
        if f(mid * g, blocks) < target:
            lo = mid + 1
        else:
            hi = mid
    return [k * g for k in range(max(1, lo - span), min(max_d // g, lo + span) + 1)]


def _name(what: Architecture | SearchSpace) -> str:
    space = what.space if isinstance(what, Architecture) else what
    kind = "architecture of space" if isinstance(what, Architecture) else "space"
    return f"the {kind} {space.name!r}"


def _describe(nearest: tuple[float, int, int]) -> str:
    err, d, blocks = nearest
    return f"d_model={d}, blocks={blocks}, {err:.1%} off"
