"""The Strategy protocol, what the executor hands a strategy, and the strategy registry.

A strategy decides how choice nodes are evaluated, which parameters it owns, how it updates
them and how it derives an architecture; the executor owns everything else (data, progress,
metrics, checkpoints, resume, DDP). Built-in strategies are registered through the
``nasframe.strategies`` entry-point group exactly as a third-party package would::

    [project.entry-points."nasframe.strategies"]
    my-strategy = "my_package.module:MyStrategy"

or, in-process, with ``register_strategy("my-strategy", MyStrategy)``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from nasframe.base.errors import ConfigError
from nasframe.base.runtime import autocast
from nasframe.text.output_loss import seq2seq_loss, seq2seq_loss_terms

if TYPE_CHECKING:
    from nasframe.dsl.architecture import Architecture
    from nasframe.engine.supernet import Supernet
    from nasframe.run.config import SearchConfig
    from nasframe.text.data import Batch

__all__ = [
    "Strategy", "SearchContext", "Backbone", "ENTRY_POINT_GROUP", "register_strategy",
    "get_strategy", "available_strategies", "seq2seq_loss", "seq2seq_loss_terms",
]

ENTRY_POINT_GROUP = "nasframe.strategies"
"""The entry-point group where installed packages register strategies."""
Backbone = Literal["reversible", "standard", "any"]
"""Which backbone a strategy trains: the reversible stack, the standard one, or either."""


@runtime_checkable
class Strategy(Protocol):
    """A search algorithm driven by the executor.

    ``backbone`` says what the strategy searches on: ``"reversible"`` needs a space of
    reversible ``Stack`` parts, ``"standard"`` runs every space under ordinary autograd,
    ``"any"`` accepts both as configured. ``default_space`` is used when none is given.
    ``step`` returns scalar metrics (``loss_train``, ``loss_val``, ``lr``, ...), which the
    executor logs. ``state_dict`` must hold everything the strategy owns besides the supernet
    weights and alphas (optimisers, schedules, private RNGs) for an exact resume, as plain
    data (tensors, numbers, strings, lists, tuples, dicts): checkpoints load with
    ``torch.load(weights_only=True)``. ``derive`` is called at every checkpoint and must not
    change the training state. Optional: ``candidates() -> list`` of objects with ``arch``
    and ``score`` (best first), reported in ``SearchResult.candidates``.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    backbone: ClassVar[Backbone]
    default_space: ClassVar[str]

    def setup(self, ctx: SearchContext) -> None: ...
    def step(self, train_batch: Batch, val_batch: Batch) -> dict[str, float]: ...
    def derive(self) -> Architecture: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class SearchContext:
    """What the executor gives a strategy: the supernet, the config and shared services.

    One object rather than many arguments so that the protocol stays one method wide and a
    third-party strategy needs no executor internals: the loss, a fixed set of search-valid
    batches to score architectures on, and gradient averaging across DDP processes (a no-op
    in a single process) that a strategy calls between backward and its optimiser step.
    """

    supernet: Supernet
    config: SearchConfig
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    world_size: int = 1
    rank: int = 0
    #: Deterministic search-valid batches (same every call), for scoring architectures.
    valid_batches: Callable[[], Iterable[Batch]] = lambda: ()
    #: Averages the ``.grad`` of the given parameters over DDP processes.
    sync_grads: Callable[[Iterable[Tensor]], None] = lambda params: None
    #: The update being computed (1-based), kept current by the executor.
    step: int = 0

    def loss(self, batch: Batch) -> Tensor:
        with autocast(self.config.precision, self.device):
            return seq2seq_loss(self.supernet, batch, self.config.optim.label_smoothing)

    @torch.no_grad()
    def validation_loss(self, batches: Iterable[Batch] | None = None) -> float:
        """Mean loss per target token over ``batches`` (default: ``valid_batches()``), in eval
        mode (no dropout), restoring the training mode after."""
        net, was_training = self.supernet, self.supernet.training
        net.eval()
        total, tokens = 0.0, 0
        try:
            for batch in (self.valid_batches() if batches is None else batches):
                n = batch.n_tgt_tokens
                total += float(self.loss(batch)) * n
                tokens += n
        finally:
            net.train(was_training)
        return total / tokens if tokens else math.nan


# ----------------------------------------------------------------------------- registry

_REGISTERED: dict[str, type] = {}


def register_strategy(name: str, cls: type, *, replace: bool = False) -> None:
    """Make ``cls`` available as ``name`` in this process (entry points do it across packages).

    ``cls`` needs the class attributes ``description`` and ``default_space`` and the methods
    of :class:`Strategy`; it is created with no arguments.
    """
    missing = [m for m in ("setup", "step", "derive", "state_dict", "load_state_dict")
               if not callable(getattr(cls, m, None))]
    missing += [a for a in ("description", "default_space") if not hasattr(cls, a)]
    if missing:
        raise ConfigError(f"strategy {name!r}: {cls.__name__} lacks {', '.join(missing)}")
    if not replace and name in _REGISTERED and _REGISTERED[name] is not cls:
        raise ConfigError(f"strategy {name!r} is already registered (pass replace=True)")
    cls.name = name
    if not hasattr(cls, "backbone"):
        cls.backbone = "any"
    _REGISTERED[name] = cls


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def get_strategy(name: str) -> type:
    """The strategy class registered as ``name`` (in-process first, then entry points)."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    eps = _entry_points()
    if name not in eps:
        known = sorted({*_REGISTERED, *eps})
        raise ConfigError(f"strategy: unknown strategy {name!r}; installed: {', '.join(known)}")
    try:
        cls = eps[name].load()
    except Exception as err:  # a broken plugin must not hide which one it is
        raise ConfigError(f"strategy {name!r}: cannot load {eps[name].value}: {err}") from err
    register_strategy(name, cls)
    return cls


def available_strategies() -> dict[str, str]:
    """Installed strategy name -> one-line description (loading each plugin)."""
    out: dict[str, str] = {}
    for name in sorted({*_entry_points(), *_REGISTERED}):
        try:
            out[name] = str(get_strategy(name).description).strip().splitlines()[0]
        except ConfigError as err:
            out[name] = f"(broken: {err})"
    return out

