"""The operation interface, the context every op sees, and the op registry.

An operation maps ``x`` of shape (batch, time, dim) to a tensor of the same shape. Every op
except Zero and Identity carries its own residual connection and layer normalisation
(post-norm: ``LayerNorm(x + dropout(f(x)))``), because inside a reversible layer nothing can
sit around it (paper.md, section 4).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from nasframe.errors import SpaceError

__all__ = [
    "Context", "IncrementalState", "Operation", "Residual",
    "register_op", "create_op", "available_ops", "op_factory", "check_op_params",
    "zeros_at_padding",
]


class IncrementalState:
    """Per-op caches for step-by-step decoding.

    Each op stores a dict of tensors whose first dimension is the batch (sentences x beams);
    ``reorder`` follows the beams that beam search keeps.
    """

    def __init__(self) -> None:
        self._store: dict[int, dict[str, Tensor]] = {}
        self.step = 0  # number of target positions already decoded

    def get(self, owner: nn.Module) -> dict[str, Tensor] | None:
        return self._store.get(id(owner))

    def set(self, owner: nn.Module, value: dict[str, Tensor]) -> None:
        self._store[id(owner)] = value

    def reorder(self, index: Tensor) -> None:
        for cache in self._store.values():
            for key, t in cache.items():
                cache[key] = t.index_select(0, index)


@dataclass
class Context:
    """What every op sees besides its input.

    padding_mask: (batch, time) bool, True where ``x`` is padding (None: no padding).
    memory, memory_mask: encoder output (batch, src_time, memory_dim) and its padding mask.
    state: incremental decoding state; when given, ``x`` holds only the newest position(s),
        ``padding_mask`` (if any) covers only those positions, and the caller advances
        ``state.step``; ops find their position from their own caches.
    """

    padding_mask: Tensor | None = None
    memory: Tensor | None = None
    memory_mask: Tensor | None = None
    state: IncrementalState | None = None


class Operation(nn.Module):
    """Base class of all ops: ``forward(x, ctx) -> tensor shaped like x``."""

    def forward(self, x: Tensor, ctx: Context) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class Residual(Operation):
    """``LayerNorm(x + dropout(f(x, ctx)))`` around a sublayer ``f``: the op's own residual."""

    def __init__(self, dim: int, sublayer: nn.Module, dropout: float) -> None:
        super().__init__()
        self.sublayer = sublayer
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        return self.norm(x + self.dropout(self.sublayer(x, ctx)))


# ----------------------------------------------------------------------------- registry

OpFactory = Callable[..., Operation]
_REGISTRY: dict[str, OpFactory] = {}
# Keywords the framework passes to a factory when its signature accepts them.
_STANDARD_KEYWORDS = ("causal", "dropout", "memory_dim")


def register_op(name: str, *, replace: bool = False) -> Callable[[OpFactory], OpFactory]:
    """Register ``factory(dim, *, causal, dropout, [memory_dim], **params) -> Operation``."""

    def decorate(factory: OpFactory) -> OpFactory:
        if name in _REGISTRY and not replace and _REGISTRY[name] is not factory:
            raise SpaceError(f"op {name!r} is already registered (pass replace=True to override)")
        _REGISTRY[name] = factory
        return factory

    return decorate


def available_ops() -> list[str]:
    return sorted(_REGISTRY)


def op_factory(name: str) -> OpFactory:
    if name not in _REGISTRY:  # perhaps an installed package registers it
        from nasframe.plugins import load_entry_points

        load_entry_points("nasframe.ops")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SpaceError(
            f"unknown op {name!r}; registered ops: {', '.join(available_ops())}"
        ) from None


def _parameters(factory: OpFactory) -> tuple[set[str], bool]:
    sig = inspect.signature(factory)
    names = {p.name for p in list(sig.parameters.values())[1:]
             if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    return names, var_kw


def check_op_params(name: str, params: dict[str, Any]) -> None:
    """Raise SpaceError if ``name`` is unknown or ``params`` names an argument it does not take."""
    names, var_kw = _parameters(op_factory(name))
    if var_kw:
        return
    for key in params:
        if key in _STANDARD_KEYWORDS or key not in names:
            allowed = sorted(names - set(_STANDARD_KEYWORDS)) or ["none"]
            raise SpaceError(
                f"op {name!r} takes no parameter {key!r} (its parameters: {', '.join(allowed)})"
            )


def create_op(name: str, dim: int, *, causal: bool = False, dropout: float = 0.0,
              memory_dim: int | None = None, **params: Any) -> Operation:
    factory = op_factory(name)
    names, var_kw = _parameters(factory)
    standard = {"causal": causal, "dropout": dropout, "memory_dim": memory_dim}
    kwargs = {k: v for k, v in standard.items() if var_kw or k in names}
    op = factory(dim, **kwargs, **params)
    if not isinstance(op, nn.Module):
        raise SpaceError(f"op {name!r}: its factory returned {type(op).__name__}, not an nn.Module")
    return op


def zeros_at_padding(x: Tensor, padding_mask: Tensor | None) -> Tensor:
    """Zero the padded positions of ``x`` (batch, time, dim) so they cannot leak into neighbours."""
    if padding_mask is None:
        return x
    return x.masked_fill(padding_mask.unsqueeze(-1), 0.0)


