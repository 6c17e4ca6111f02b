"""The search-space DSL: operation sets, split topologies, stacks of searched layers.

A space is a tree of frozen pydantic models, validated on construction (errors name the field
and the value), serialisable to JSON and compiled to a networkx graph on demand::

    space = nf.SearchSpace(
        name="mine",
        encoder=nf.Stack(splits=2, layers=2, choices=nf.OpSet(["ffn", "self_attention"])),
        decoder=nf.Stack(splits=3, layers=2, choices=nf.OpSet(["ffn", "cross_attention"]),
                         fixed={3: "cross_attention"}),
    )

Two layer kinds exist. ``Stack`` is the multi-split reversible layer of DARTSformer (Zhao et
al. 2021, Eq. 3): split i computes ``Y_i = X_i + F_i(pool(inputs_i))`` where ``inputs_i``
is, by default, ``Y_1..Y_{i-1}, X_{i+1}..X_n``, or a declared subset of those.
``Sequential`` is the standard Transformer layer: residual sublayers applied in order, any of
which may be a choice.
"""
from __future__ import annotations

import hashlib
import math
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import networkx as nx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from nasframe.base.errors import SpaceError
from nasframe.base.files import MAX_JSON_BYTES, read_text
from nasframe.dsl import ops
from nasframe.dsl.messages import format_validation_error

__all__ = ["OpSpec", "op", "OpSet", "Stack", "Sequential", "SearchSpace", "default_topology"]

Scalar = bool | int | float | str


_VALIDATING: ContextVar[bool] = ContextVar("nasframe_space_validating", default=False)


class _Model(BaseModel):
    """Frozen, strict-about-extras model whose validation errors become SpaceError."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        # pydantic calls a custom __init__ for nested models too; only the outermost call
        # converts, so the message keeps the full path (``decoder.fixed``).
        outermost = not _VALIDATING.get()
        token = _VALIDATING.set(True)
        try:
            super().__init__(**data)
        except ValidationError as err:
            if not outermost:
                raise
            root = "" if isinstance(self, OpSpec) else type(self).__name__  # op errors say "op"
            raise SpaceError(format_validation_error(err, root, type(self), _KINDS)) from None
        finally:
            _VALIDATING.reset(token)


# ----------------------------------------------------------------------------- operations

class OpSpec(_Model):
    """A named op from the registry with its parameters, e.g. ``op("dynamic_conv", kernel=7)``."""

    name: str
    params: dict[str, Scalar] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> OpSpec:
        ops.check_op_params(self.name, self.params)
        return self

    @property
    def label(self) -> str:
        """Unique, human-readable name: ``dynamic_conv:kernel=7``."""
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))

    @classmethod
    def parse(cls, value: Any) -> Any:
        """Accept ``"ffn"``, ``"conv:kernel=3"`` or a mapping wherever an op is expected."""
        if isinstance(value, str):
            name, _, rest = value.partition(":")
            params: dict[str, Scalar] = {}
            for item in filter(None, rest.split(",")):
                key, _, raw = item.partition("=")
                params[key] = _parse_scalar(raw)
            return {"name": name, "params": params}
        return value


def _parse_scalar(raw: str) -> Scalar:
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)


def op(name: str, **params: Scalar) -> OpSpec:
    """Declare an op with parameters: ``nf.op("conv", kernel=3)``."""
    return OpSpec(name=name, params=params)



class OpSet(_Model):
    """The candidate ops of a choice node. ``OpSet([...]) + ["cross_attention"]`` extends it."""

    ops: list[OpSpec]

    def __init__(self, ops: Any = None, **data: Any) -> None:
        if ops is not None:
            data["ops"] = ops
        super().__init__(**data)

    @field_validator("ops", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        return [OpSpec.parse(v) for v in value] if isinstance(value, (list, tuple)) else value

    @field_validator("ops")
    @classmethod
    def _unique(cls, value: list[OpSpec]) -> list[OpSpec]:
        if not value:
            raise ValueError("an op set needs at least one op")
        labels = [o.label for o in value]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"duplicate ops {dupes}")
        return value

    def __add__(self, other: OpSet | list[Any]) -> OpSet:
        extra = other.ops if isinstance(other, OpSet) else [OpSpec.parse(v) for v in other]
        return OpSet(list(self.ops) + list(extra))

    def __len__(self) -> int:
        return len(self.ops)

    @property
    def labels(self) -> list[str]:
        return [o.label for o in self.ops]

    def get(self, label: str) -> OpSpec:
        for o in self.ops:
            if o.label == label:
                return o
        raise SpaceError(f"op {label!r} is not in the set {self.labels}")


# ----------------------------------------------------------------------------- split topology

_REF = re.compile(r"^([XY])(\d+)$")


def default_topology(splits: int) -> list[list[str]]:
    """The paper's inputs (Eq. 3): F_i reads Y_1..Y_{i-1} and X_{i+1}..X_n."""
    return [[f"Y{j}" for j in range(1, i)] + [f"X{k}" for k in range(i + 1, splits + 1)]
            for i in range(1, splits + 1)]


def split_graph(splits: int, topology: list[list[str]]) -> nx.DiGraph:
    """X_i -> Y_i, F_i -> Y_i, and each declared input -> F_i."""
    g = nx.DiGraph()
    for i in range(1, splits + 1):
        g.add_node(f"X{i}", kind="input", split=i)
        g.add_node(f"Y{i}", kind="output", split=i)
        g.add_node(f"F{i}", kind="function", split=i)
        g.add_edge(f"X{i}", f"Y{i}")
        g.add_edge(f"F{i}", f"Y{i}")
    for i, refs in enumerate(topology, start=1):
        for ref in refs:
            g.add_edge(ref, f"F{i}")
    return g


def check_invertible(g: nx.DiGraph, splits: int) -> None:
    """Eq. 4 inverts split n first; F_i may read only outputs before i and inputs after i."""
    for i in range(1, splits + 1):
        for ref in g.predecessors(f"F{i}"):
            kind, j = ref[0], int(ref[1:])
            if (kind == "X" and j <= i) or (kind == "Y" and j >= i):
                raise ValueError(
                    f"split {i} reads {ref}: not invertible (F_{i} may read only "
                    f"Y_1..Y_{i - 1} and X_{i + 1}..X_{splits})"
                )
        if g.in_degree(f"F{i}") == 0:
            raise ValueError(f"split {i} has no inputs")
    if not nx.is_directed_acyclic_graph(g):  # pragma: no cover - implied by the rule above
        raise ValueError("topology has a cycle")


# ----------------------------------------------------------------------------- layers

class Stack(_Model):
    """L searched multi-split reversible layers (the block that repeats)."""

    kind: Literal["reversible"] = "reversible"
    splits: int = Field(2, ge=2, le=32)
    layers: int = Field(1, ge=1, description="L: searched consecutive layers, each its own choices")
    choices: OpSet
    pool: Literal["max", "avg"] = "max"
    fixed: dict[int, OpSpec] = Field(default_factory=dict, description="split (1-based) -> op")
    topology: list[list[str]] | None = None

    @field_validator("choices", mode="before")
    @classmethod
    def _opset(cls, value: Any) -> Any:
        return OpSet(value) if isinstance(value, (list, tuple)) else value

    @field_validator("fixed", mode="before")
    @classmethod
    def _fixed(cls, value: Any) -> Any:
        return {k: OpSpec.parse(v) for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("fixed")
    @classmethod
    def _check_fixed(cls, value: dict[int, OpSpec], info: ValidationInfo) -> dict[int, OpSpec]:
        splits, choices = info.data.get("splits"), info.data.get("choices")
        if splits is None or choices is None:  # already reported on their own fields
            return value
        for i, spec in value.items():
            if not 1 <= i <= splits:
                raise ValueError(f"split {i} out of range for {splits} splits")
            if spec.label not in choices.labels:
                raise ValueError(f"op {spec.label!r} of split {i} is not in choices "
                                 f"{choices.labels}")
        return value

    @field_validator("topology")
    @classmethod
    def _check_topology(cls, value: list[list[str]] | None,
                        info: ValidationInfo) -> list[list[str]] | None:
        splits = info.data.get("splits")
        if splits is None:
            return value
        topology = value if value is not None else default_topology(splits)
        if len(topology) != splits:
            raise ValueError(f"{len(topology)} entries for {splits} splits")
        for i, refs in enumerate(topology, start=1):
            for ref in refs:
                m = _REF.match(ref)
                if not m or not 1 <= int(m.group(2)) <= splits:
                    raise ValueError(f"split {i} input {ref!r} is not one of "
                                     f"X1..X{splits}, Y1..Y{splits}")
            if len(set(refs)) != len(refs):
                raise ValueError(f"split {i} lists an input twice: {refs}")
        check_invertible(split_graph(splits, topology), splits)
        return value

    @property
    def inputs(self) -> list[list[str]]:
        return self.topology if self.topology is not None else default_topology(self.splits)

    def units(self) -> list[tuple[str, OpSet | OpSpec]]:
        """(unit name, candidates or fixed op) for one layer: one unit per split."""
        return [(f"split{i}", self.fixed.get(i, self.choices)) for i in range(1, self.splits + 1)]


class Sequential(_Model):
    """A standard Transformer layer: residual sublayers in order; an OpSet sublayer is a choice."""

    kind: Literal["sequential"] = "sequential"
    sublayers: list[OpSet | OpSpec]
    layers: int = Field(1, ge=1)

    def __init__(self, sublayers: Any = None, **data: Any) -> None:
        if sublayers is not None:
            data["sublayers"] = sublayers
        super().__init__(**data)

    @field_validator("sublayers", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            return value
        out = []
        for v in value:
            if isinstance(v, (list, tuple)):
                out.append(OpSet(v))
            elif isinstance(v, dict) and "ops" in v:
                out.append(OpSet(**v))
            else:
                out.append(OpSpec.parse(v))
        return out

    @field_validator("sublayers")
    @classmethod
    def _nonempty(cls, value: list[Any]) -> list[Any]:
        if not value:
            raise ValueError("a sequential layer needs at least one sublayer")
        for k, sub in enumerate(value, start=1):
            opset = sub if isinstance(sub, OpSet) else None
            if opset is not None and "zero" in opset.labels:
                raise ValueError(f"sublayer {k}: 'zero' would erase the residual stream of a "
                                 "sequential layer (use 'identity' to skip a sublayer)")
        return value

    def units(self) -> list[tuple[str, OpSet | OpSpec]]:
        return [(f"sub{k}", s) for k, s in enumerate(self.sublayers, start=1)]


LayerSpec = Annotated[Stack | Sequential, Field(discriminator="kind")]


class SearchSpace(_Model):
    """An encoder and a decoder part; each a reversible ``Stack`` or a ``Sequential`` layer."""

    name: str = "custom"
    encoder: LayerSpec
    decoder: LayerSpec

    @model_validator(mode="after")
    def _check(self) -> SearchSpace:
        for label in _all_labels(self.encoder):
            if label.split(":")[0] == "cross_attention":
                raise ValueError("encoder: cross_attention needs an encoder output; "
                                 "it is only allowed in the decoder")
        if not any(lbl.split(":")[0] == "cross_attention" for lbl in _all_labels(self.decoder)):
            raise ValueError("decoder: no op reads the encoder; add cross_attention")
        return self

    # -- structure --------------------------------------------------------------------------
    def parts(self) -> list[tuple[str, Stack | Sequential]]:
        return [("encoder", self.encoder), ("decoder", self.decoder)]

    def units(self) -> list[tuple[str, OpSet | OpSpec]]:
        """Every unit of the searched block: (``encoder.layer1.split2``, candidates or op)."""
        return [(f"{part}.layer{l}.{unit}", what)
                for part, spec in self.parts()
                for l in range(1, spec.layers + 1)
                for unit, what in spec.units()]

    def choice_nodes(self) -> dict[str, list[str]]:
        """Node name -> candidate op labels, for every unit that is a choice."""
        return {name: what.labels for name, what in self.units() if isinstance(what, OpSet)}

    def size(self) -> int:
        """Number of distinct architectures: the product of the choice nodes' set sizes."""
        return math.prod(len(c) for c in self.choice_nodes().values())

    def graph(self) -> nx.DiGraph:
        """X_i, Y_i, F_i (and their choice nodes) of every searched layer, invertibility checked."""
        g = nx.DiGraph(name=self.name)
        for part, spec in self.parts():
            prev: list[str] = [f"{part}.input"]
            g.add_node(prev[0], kind="input")
            for l in range(1, spec.layers + 1):
                prefix = f"{part}.layer{l}"
                if isinstance(spec, Stack):
                    sub = split_graph(spec.splits, spec.inputs)
                    check_invertible(sub, spec.splits)
                    g.add_nodes_from((f"{prefix}.{n}", d) for n, d in sub.nodes(data=True))
                    g.add_edges_from((f"{prefix}.{a}", f"{prefix}.{b}") for a, b in sub.edges)
                    for i in range(1, spec.splits + 1):
                        g.add_edge(prev[0] if len(prev) == 1 else prev[i - 1], f"{prefix}.X{i}")
                    prev = [f"{prefix}.Y{i}" for i in range(1, spec.splits + 1)]
                    units = [(f"{prefix}.F{i}", w) for i, (_, w) in enumerate(spec.units(), 1)]
                else:
                    chain = [f"{prefix}.sub{k}" for k in range(1, len(spec.sublayers) + 1)]
                    for a, b in zip(prev[-1:] + chain[:-1], chain):
                        g.add_node(b, kind="sublayer")
                        g.add_edge(a, b)
                    prev = chain[-1:]
                    units = list(zip(chain, spec.sublayers))
                for node, what in units:
                    if isinstance(what, OpSet):
                        g.add_node(f"{node}.choice", kind="choice", candidates=what.labels)
                    else:
                        g.add_node(f"{node}.op", kind="fixed", op=what.label)
                    g.add_edge(f"{node}.{'choice' if isinstance(what, OpSet) else 'op'}", node)
            g.add_node(f"{part}.output", kind="output")
            for p in prev:
                g.add_edge(p, f"{part}.output")
        return g

    # -- persistence ------------------------------------------------------------------------
    def to_json(self, indent: int | None = 2) -> str:
        return self.model_dump_json(indent=indent)

    @classmethod
    def from_json(cls, source: str | Path) -> SearchSpace:
        """Parse a JSON string, or read it from a file path."""
        text, prefix = str(source), ""
        if isinstance(source, Path) or (not text.lstrip().startswith("{") and Path(text).exists()):
            prefix = f"{source}: "
            text = read_text(Path(source), MAX_JSON_BYTES, "space file", SpaceError)
        token = _VALIDATING.set(True)
        try:
            return cls.model_validate_json(text)
        except ValidationError as err:
            message = format_validation_error(err, "SearchSpace", cls, _KINDS)
            raise SpaceError(prefix + message) from None
        finally:
            _VALIDATING.reset(token)

    def digest(self) -> str:
        """Short content hash, recorded by runs so a search names the exact space it used."""
        return hashlib.sha256(self.to_json(indent=None).encode()).hexdigest()[:12]


def _all_labels(spec: Stack | Sequential) -> list[str]:
    labels: list[str] = []
    for _, what in spec.units():
        labels += what.labels if isinstance(what, OpSet) else [what.label]
    return labels


#: The part classes by the tag a JSON or mapping declaration gives (``kind``), for messages.
_KINDS: dict[str, type[BaseModel]] = {"reversible": Stack, "sequential": Sequential}
