"""Built-in search spaces, found by name: ``nf.spaces.get("dartsformer")``.

Users add their own with ``nf.spaces.register("name", factory)``.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable

from nasframe.base.errors import SpaceError
from nasframe.dsl.space import SearchSpace

_SPACES: dict[str, Callable[..., SearchSpace]] = {}


def register(name: str, factory: Callable[..., SearchSpace]) -> None:
    _SPACES[name] = factory


def is_registered_factory(value: object) -> bool:
    """``value`` is a factory registered with ``register`` (the only callables a space named
    in a file may call)."""
    return any(value is factory for factory in _SPACES.values())


def names() -> list[str]:
    return sorted(_SPACES)


def get(name: str, **options: object) -> SearchSpace:
    """The built-in space ``name``; ``options`` go to its factory (e.g. ``layers=1``)."""
    if name not in _SPACES:  # perhaps an installed package registers it
        from nasframe.dsl.plugins import load_entry_points

        for entry, factory in load_entry_points("nasframe.spaces").items():
            if callable(factory):
                register(entry, factory)
    if name not in _SPACES:
        raise SpaceError(f"unknown space {name!r}; known spaces: {', '.join(names())}")
    factory = _SPACES[name]
    accepted = [p.name for p in inspect.signature(factory).parameters.values()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise SpaceError(f"space {name!r} has no option {', '.join(map(repr, unknown))}; its "
                         f"options: {', '.join(accepted) or 'none'}")
    return factory(**options)


from nasframe.spaces import darts_transformer, dartsformer, tiny, transformer  # noqa: E402,F401
