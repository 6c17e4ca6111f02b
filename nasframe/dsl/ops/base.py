"""The operation interface, the context every op sees, and the op registry.

An operation maps ``x`` of shape (batch, time, dim) to a tensor of the same shape. Every op
except Zero and Identity carries its own layer normalisation, and in a sequential layer its own
residual connection, because nothing else can sit around it (Zhao et al. 2021, section 4). Where the
norm sits is the ``norm`` style of ``create_op`` (see ``Residual``).
"""
from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from torch import Tensor, nn

from nasframe.base.errors import SpaceError
from nasframe.dsl.ops.dropout import Dropout

__all__ = [
    "Context", "IncrementalState", "NORM_STYLES", "NormStyle", "Operation", "Residual",
    "register_op", "create_op", "available_ops", "op_factory", "check_op_params",
    "positive_int", "zeros_at_padding",
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


NormStyle = Literal["post", "pre", "branch"]
"""Where an op puts its layer norm: after the residual sum, before the op, or on the branch."""
NORM_STYLES: tuple[str, ...] = get_args(NormStyle)
"""The values of ``NormStyle``."""


class Residual(Operation):
    """The layer norm (and residual) around a sublayer ``f``, in one of three styles.

    ``post``: ``LayerNorm(x + dropout(f(x)))`` (Vaswani et al.; the paper's ops).
    ``pre``: ``x + dropout(f(LayerNorm(x)))``.
    ``branch``: ``dropout(f(LayerNorm(x)))``, no residual of its own: for an F_i of a
    reversible layer, whose ``Y_i = X_i + F_i`` already is the residual. Post-norm there adds a
    second copy of the input to the stream at every layer and makes F_i's output O(1) whatever
    the op does, so the stream grows with depth and an op cannot start as a near-identity.
    All three have the same parameters, so a checkpoint loads under any of them.

    The dropout falls on the sublayer's output in every style, so a sublayer may apply it
    itself: one with ``take_output_dropout(p) -> bool`` that returns True gets ``p`` and the
    residual applies none (``DynamicConv`` does, to redraw its mask from a seed instead of
    keeping it).
    """

    def __init__(self, dim: int, sublayer: nn.Module, dropout: float,
                 style: NormStyle = "post") -> None:
        super().__init__()
        self.sublayer = sublayer
        take = getattr(sublayer, "take_output_dropout", None)
        if dropout > 0 and callable(take) and take(dropout):
            dropout = 0.0
        self.dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.style = check_norm_style(style)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        if self.style == "post":
            return self.norm(x + self.dropout(self.sublayer(x, ctx)))
        out = self.dropout(self.sublayer(self.norm(x), ctx))
        return x + out if self.style == "pre" else out


def check_norm_style(style: str) -> NormStyle:
    if style not in NORM_STYLES:
        raise SpaceError(f"norm style must be one of {', '.join(NORM_STYLES)}, got {style!r}")
    return style  # type: ignore[return-value]


# ----------------------------------------------------------------------------- registry

OpFactory = Callable[..., Operation]
ParamCheck = Callable[[Any], "str | None"]
"""Checks one argument's value at declaration: None if fine, else what is wrong with it
(``"is not a positive integer"``), completed as ``op 'conv': kernel=0 is not a ...``."""
_REGISTRY: dict[str, OpFactory] = {}
_CHECKS: dict[str, dict[str, ParamCheck]] = {}
# Keywords the framework passes to a factory when its signature accepts them.
_STANDARD_KEYWORDS = ("causal", "dropout", "memory_dim", "norm")


def register_op(name: str, *, replace: bool = False,
                checks: dict[str, ParamCheck] | None = None,
                ) -> Callable[[OpFactory], OpFactory]:
    """Register ``factory(dim, *, causal, dropout, [memory_dim], **params) -> Operation``.

    Each argument is checked when a space declares the op: its type against the factory's
    annotation or default (``Literal[...]`` annotations give the accepted values), then by
    ``checks[argument]`` if given (see ``ParamCheck``).
    """

    def decorate(factory: OpFactory) -> OpFactory:
        if name in _REGISTRY and not replace and _REGISTRY[name] is not factory:
            raise SpaceError(f"op {name!r} is already registered (pass replace=True to override)")
        _REGISTRY[name] = factory
        _CHECKS[name] = dict(checks or {})
        return factory

    return decorate


def available_ops() -> list[str]:
    """Names of the registered operations, sorted."""
    return sorted(_REGISTRY)


def op_factory(name: str) -> OpFactory:
    """The factory registered under ``name`` (looking in installed plugins if needed); a
    ``SpaceError`` names the known ops otherwise."""
    if name not in _REGISTRY:  # perhaps an installed package registers it
        from nasframe.dsl.plugins import load_entry_points

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


def positive_int(value: Any) -> str | None:
    """A ``ParamCheck``: the value must be an integer of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return "is not a positive integer"
    return None


_KINDS: dict[type, tuple[str, Callable[[Any], bool]]] = {
    bool: ("a boolean", lambda v: isinstance(v, bool)),
    int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    float: ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    str: ("a string", lambda v: isinstance(v, str)),
}


def _hints(factory: OpFactory) -> dict[str, Any]:
    try:
        return typing.get_type_hints(factory)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve is just not used
        return {}


def _type_problem(factory: OpFactory, key: str, value: Any) -> str | None:
    """What is wrong with ``value`` for argument ``key`` judged by the factory's signature."""
    try:
        param = inspect.signature(factory).parameters.get(key)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return None
    if param is None:
        return None
    hint = _hints(factory).get(key)
    if get_origin(hint) is Literal:
        allowed = get_args(hint)
        if value not in allowed or type(value) not in {type(a) for a in allowed}:
            return "is not one of " + ", ".join(repr(a) for a in allowed)
        return None
    kind = hint if hint in _KINDS else None
    if kind is None and param.default is not param.empty and type(param.default) in _KINDS:
        kind = type(param.default)
    if kind is not None and not _KINDS[kind][1](value):
        return f"is not {_KINDS[kind][0]}"
    return None


def check_op_params(name: str, params: dict[str, Any]) -> None:
    """Raise SpaceError if ``name`` is unknown, ``params`` names an argument it does not take,
    or a value is not one its factory accepts (one line: op, argument and value)."""
    factory = op_factory(name)
    names, var_kw = _parameters(factory)
    for key in params:
        if not var_kw and (key in _STANDARD_KEYWORDS or key not in names):
            allowed = sorted(names - set(_STANDARD_KEYWORDS)) or ["none"]
            raise SpaceError(
                f"op {name!r} takes no parameter {key!r} (its parameters: {', '.join(allowed)})"
            )
    checks = _CHECKS.get(name, {})
    for key, value in params.items():
        problem = _type_problem(factory, key, value)
        if problem is None and key in checks:
            problem = checks[key](value)
        if problem:
            raise SpaceError(f"op {name!r}: {key}={value!r} {problem}")


def create_op(name: str, dim: int, *, causal: bool = False, dropout: float = 0.0,
              memory_dim: int | None = None, norm: NormStyle = "post",
              **params: Any) -> Operation:
    """Build op ``name`` at width ``dim``; ``norm`` sets the style of every ``Residual`` in it,
    so an op written for the default style works unchanged in the others."""
    check_norm_style(norm)
    factory = op_factory(name)
    names, var_kw = _parameters(factory)
    standard = {"causal": causal, "dropout": dropout, "memory_dim": memory_dim}
    kwargs = {k: v for k, v in standard.items() if var_kw or k in names}
    op = factory(dim, **kwargs, **params)
    if not isinstance(op, nn.Module):
        raise SpaceError(f"op {name!r}: its factory returned {type(op).__name__}, not an nn.Module")
    for m in op.modules():
        if isinstance(m, Residual):
            m.style = norm
    return op


def zeros_at_padding(x: Tensor, padding_mask: Tensor | None) -> Tensor:
    """Zero the padded positions of ``x`` (batch, time, dim) so they cannot leak into neighbours."""
    if padding_mask is None:
        return x
    return x.masked_fill(padding_mask.unsqueeze(-1), 0.0)


