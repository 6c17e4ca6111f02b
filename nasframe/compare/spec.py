"""What a comparison runs: shared settings and rows, from flags or a TOML file.

A TOML file has one ``[compare]`` table (the settings every row shares) and one ``[[rows]]``
table per row::

    [compare]
    data = "lohelp"
    seeds = 3
    search_steps = 300        # the search budget, updates, the same for every searched row
    train_steps = 1500        # the re-training budget, updates, the same for every row
    params = "1.1M"           # parameter target; left out: matched to the first baseline

    [[rows]]
    name = "DARTSformer, max pooling, L=2"
    strategy = "darts-reversible"
    space = "dartsformer"
    space_options = { pool = "max", layers = 2 }
    search = { "optim.alpha_lr" = 1e-2 }   # dotted search-config overrides of this row

    [[rows]]
    name = "Transformer"
    architecture = "transformer"          # a space without choices, or an architecture JSON

Errors are ``ConfigError`` naming the file and the field (``rows[2].strategy: ...``).
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nasframe.base.errors import ConfigError, NasframeError
from nasframe.base.files import MAX_TOML_BYTES, read_text
from nasframe.compare._deps import parse_params, resolve_space
from nasframe.searching.strategy import get_strategy

__all__ = ["CompareSettings", "Row", "CompareSpec", "load_spec", "miniature", "row_space",
           "spec_from_names", "slug"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CompareSettings(_Strict):
    """What every row shares: data, budgets, parameter target, evaluation."""

    data: str = Field("lohelp", description="corpus with train/valid/test splits")
    seeds: int = Field(1, ge=1, description="seeds per row: first_seed, first_seed + 1, ...")
    first_seed: int = 1
    params: int | None = Field(None, description="parameter target of every re-trained model; "
                               "None: the first baseline row's size at the train preset")
    params_tolerance: float = Field(0.05, gt=0, lt=1, description="how far from the target "
                                    "a re-trained model may be (relative)")
    search_preset: str = "tiny"
    search_steps: int | None = Field(None, ge=1, description="search updates; None: preset's")
    search_minutes: float | None = Field(None, gt=0, description="cap the search updates to "
                                         "what this time allows (timed on a few updates)")
    train_preset: str = "tiny"
    train_steps: int | None = Field(1500, ge=1, description="re-training updates")
    train_minutes: float | None = Field(None, gt=0, description="re-training time limit")
    vocab_size: int = Field(4000, ge=5, description="joint sentencepiece vocabulary size")
    test_sentences: int | None = Field(500, ge=1, description="first N test sentences; "
                                       "None: all")
    beam: int = Field(5, ge=1)
    device: str = "auto"
    quick: bool = Field(False, description="miniature run (--quick): tiny re-trained models")

    @model_validator(mode="before")
    @classmethod
    def _parse_params(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("params"), str | float):
            data = {**data, "params": parse_params(data["params"], "params")}
        return data

    @model_validator(mode="after")
    def _an_end(self) -> CompareSettings:
        if self.train_steps is None and self.train_minutes is None:
            raise ValueError("give train_steps or train_minutes: re-training needs an end")
        return self

    def seed_list(self) -> list[int]:
        return [self.first_seed + i for i in range(self.seeds)]


class Row(_Strict):
    """One row: a strategy searching a space, or a fixed architecture."""

    name: str = Field(min_length=1)
    strategy: str | None = Field(None, description="registered strategy; omit for a fixed "
                                 "architecture")
    architecture: str | None = Field(None, description="space without choices or "
                                     "architecture JSON (a fixed row, not searched)")
    space: str | None = Field(None, description="space searched (default: the strategy's)")
    space_options: dict[str, Any] = Field(default_factory=dict,
                                          description="options of a built-in space")
    search: dict[str, Any] = Field(default_factory=dict,
                                   description="dotted search-config overrides")
    train: dict[str, Any] = Field(default_factory=dict,
                                  description="re-training overrides (lr, warmup, ...)")

    @model_validator(mode="after")
    def _one_kind(self) -> Row:
        if (self.strategy is None) == (self.architecture is None):
            raise ValueError("give exactly one of strategy (a searched row) or architecture "
                             "(a fixed row)")
        if self.architecture is not None and (self.space or self.search):
            raise ValueError("a fixed row (architecture) takes no space or search settings; "
                             "use space_options for options such as layers")
        return self

    @property
    def searched(self) -> bool:
        return self.strategy is not None


class CompareSpec(_Strict):
    """A whole comparison: the shared settings (the TOML's ``[compare]`` table) and its rows
    (``[[rows]]``)."""

    settings: CompareSettings = Field(default_factory=CompareSettings)
    rows: list[Row]

    @model_validator(mode="after")
    def _rows(self) -> CompareSpec:
        if not self.rows:
            raise ValueError("no rows to compare")
        names = [slug(r.name) for r in self.rows]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"row names must differ (as folder names): {', '.join(dup)}")
        return self

    def baseline(self) -> Row | None:
        """The first fixed row: the parameter target when ``settings.params`` is None."""
        return next((r for r in self.rows if not r.searched), None)


def slug(name: str) -> str:
    """A row name as a folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-").lower() or "row"


def _build(data: dict[str, Any], where: str) -> CompareSpec:
    try:
        spec = CompareSpec(**data)
    except ValidationError as err:
        raise ConfigError(_describe(err, where)) from None
    except NasframeError as err:  # parse_params
        raise ConfigError(f"{where}: compare.{err}") from None
    _check_rows(spec, where)
    return spec


def _describe(err: ValidationError, where: str) -> str:
    """``FILE: compare.train_steps: ...`` / ``FILE: rows[2].name: ...``, one line per error."""
    lines = []
    for e in err.errors():
        field = ""
        for part in e["loc"]:
            if isinstance(part, int):
                field += f"[{part}]"
            else:
                field += ("." if field else "") + ("compare" if part == "settings" else part)
        lines.append(f"{where}: {field or 'compare'}: "
                     f"{e['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def _check_rows(spec: CompareSpec, where: str) -> None:
    """Names that resolve only at run time (strategies, spaces) are checked now, not after
    an hour of the other rows."""
    for i, row in enumerate(spec.rows):
        field = f"rows[{i}]"
        try:
            if row.strategy is not None:
                get_strategy(row.strategy)
        except NasframeError as err:
            raise ConfigError(f"{where}: {field}.strategy: {err}") from None
        except KeyError as err:
            raise ConfigError(f"{where}: {field}.strategy: {err}") from None
        try:
            space = row_space(row)
        except (NasframeError, TypeError) as err:
            what = "architecture" if row.architecture else "space"
            raise ConfigError(f"{where}: {field}.{what}: {err}") from None
        if row.architecture is not None and space is not None and space.choice_nodes():
            raise ConfigError(f"{where}: {field}.architecture: space {row.architecture!r} has "
                              "choices; a fixed row needs a space without choices or an "
                              "architecture JSON (or give it a strategy)")


def row_space(row: Row) -> Any:
    """The space a row searches (or the fixed row's space); None for an architecture JSON."""
    if row.architecture is not None:
        if row.architecture.endswith(".json") or Path(row.architecture).is_file():
            if not Path(row.architecture).is_file():
                raise ConfigError(f"{row.architecture}: no such architecture file")
            return None
        return resolve_space(row.architecture, **row.space_options)
    name = row.space or get_strategy(row.strategy).default_space  # type: ignore[arg-type]
    return resolve_space(name, **row.space_options)


def load_spec(path: str | Path, **settings: Any) -> CompareSpec:
    """Read a comparison TOML; ``settings`` (not None) override its ``[compare]`` table."""
    path = Path(path)
    try:
        table = tomllib.loads(read_text(path, MAX_TOML_BYTES, "compare file", ConfigError))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: {err}") from None
    unknown = sorted(set(table) - {"compare", "rows"})
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown table (expected [compare] and "
                          "[[rows]])")
    merged = {**table.get("compare", {}), **{k: v for k, v in settings.items() if v is not None}}
    return _build({"settings": merged, "rows": table.get("rows", [])}, str(path))


def spec_from_names(strategies: list[str], baselines: list[str], space: str | None = None,
                    space_options: dict[str, Any] | None = None,
                    **settings: Any) -> CompareSpec:
    """Rows from ``--strategies`` and ``--baselines``: baselines first (the parameter target
    is the first baseline), then one row per strategy on its default space (or ``space``)."""
    rows: list[dict[str, Any]] = [{"name": b, "architecture": b} for b in baselines]
    for s in strategies:
        row: dict[str, Any] = {"name": s, "strategy": s}
        if space is not None:
            row["space"] = space
        if space_options:
            row["space_options"] = dict(space_options)
        rows.append(row)
    given = {k: v for k, v in settings.items() if v is not None}
    return _build({"settings": given, "rows": rows}, "compare")


def miniature(spec: CompareSpec) -> CompareSpec:
    """Every row in miniature: a few updates, few test sentences, a small vocabulary and
    re-trained models the size of a tiny Transformer (the target is the first baseline, or
    the Transformer, at the quick size)."""
    s = spec.settings.model_copy(update={
        "search_steps": 4, "search_minutes": None, "train_steps": 4, "train_minutes": None,
        "test_sentences": min(spec.settings.test_sentences or 8, 8), "beam": 2,
        "vocab_size": min(spec.settings.vocab_size, 1000), "params": None,
        "search_preset": "tiny", "quick": True})
    return spec.model_copy(update={"settings": s})


#: The re-trained model at ``--quick``: smaller than the tiny preset (d = 144).
QUICK_MODEL = {"d_model": 48, "embed_dim": 32, "blocks": 1}
