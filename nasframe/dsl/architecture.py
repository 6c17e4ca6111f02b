"""An architecture: the op chosen at every choice node of a space (the derived network)."""
from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from rich.console import Console
from rich.table import Table
from torch import Tensor

from nasframe.base.errors import SpaceError, describe_validation_error
from nasframe.base.files import MAX_JSON_BYTES, atomic_write_text, read_text
from nasframe.dsl.space import SearchSpace

__all__ = ["Architecture", "derive"]


class Architecture(BaseModel):
    """``choices``: node name -> op label. ``probabilities``: softmax(alpha) per node, if known."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    space: SearchSpace
    choices: dict[str, str]
    probabilities: dict[str, dict[str, float]] | None = None
    note: str = ""

    @model_validator(mode="after")
    def _check(self) -> Architecture:
        nodes = self.space.choice_nodes()
        missing = [n for n in nodes if n not in self.choices]
        extra = [n for n in self.choices if n not in nodes]
        if missing or extra:
            raise ValueError(f"choices: missing nodes {missing}, unknown nodes {extra}")
        for node, label in self.choices.items():
            if label not in nodes[node]:
                raise ValueError(f"choices.{node}: {label!r} is not a candidate {nodes[node]}")
        return self

    def __init__(self, **data: object) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise SpaceError(describe_validation_error(err, root="architecture")) from None

    # -- persistence ------------------------------------------------------------------------
    def to_json(self, indent: int | None = 2) -> str:
        return self.model_dump_json(indent=indent)

    @classmethod
    def from_json(cls, text: str, where: str = "architecture") -> Architecture:
        try:
            return cls.model_validate_json(text)
        except ValidationError as err:
            message = describe_validation_error(err, root="architecture")
            raise SpaceError(f"{where}: {message}") from None

    def save(self, path: str | Path) -> Path:
        atomic_write_text(self.to_json(), path)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Architecture:
        path = Path(path)
        text = read_text(path, MAX_JSON_BYTES, "architecture file", SpaceError)
        return cls.from_json(text, where=str(path))

    # -- presentation -----------------------------------------------------------------------
    def diff(self, other: Architecture) -> dict[str, tuple[str, str]]:
        """Nodes where the two architectures choose differently: node -> (self, other)."""
        return {n: (a, other.choices.get(n, "-")) for n, a in self.choices.items()
                if other.choices.get(n) != a}

    def __str__(self) -> str:
        """The table as plain text: ``print(arch)`` shows it."""
        console = Console(file=io.StringIO(), width=120, color_system=None)
        console.print(self.table())
        return console.file.getvalue()  # type: ignore[attr-defined]

    def __rich__(self) -> Table:
        return self.table()

    def table(self, top: int = 3) -> Table:
        t = Table(title=f"architecture of space {self.space.name!r}")
        t.add_column("node")
        t.add_column("op", style="bold")
        if self.probabilities:
            t.add_column(f"softmax(alpha), top {top}")
        for node, label in self.choices.items():
            row = [node, label]
            if self.probabilities:
                probs = sorted(self.probabilities[node].items(), key=lambda kv: -kv[1])[:top]
                row.append("  ".join(f"{k} {v:.3f}" for k, v in probs))
            t.add_row(*row)
        return t


def derive(space: SearchSpace, alphas: Mapping[str, Tensor], note: str = "") -> Architecture:
    """Eq. 2: the argmax op of every node, keeping softmax(alpha) so users see the ranking."""
    nodes = space.choice_nodes()
    choices, probs = {}, {}
    for node, labels in nodes.items():
        p = torch.softmax(alphas[node].detach().double().cpu(), dim=-1)
        choices[node] = labels[int(p.argmax())]
        probs[node] = {label: float(v) for label, v in zip(labels, p)}
    return Architecture(space=space, choices=choices, probabilities=probs, note=note)
