"""Everything the compare package uses from the run layer, imported in this one place.

When a name of the run layer (search, re-training, evaluation, sizing) moves, only this file
changes.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nasframe.config import SearchConfig, TrainConfig, apply_overrides
from nasframe.data import (
    DataSpec,
    ParallelCorpus,
    Vocab,
    cache_dir,
    get_or_train_vocab,
    load_data,
    load_split,
)
from nasframe.decode import DecodeOptions
from nasframe.evaluation import evaluate_run
from nasframe.rundir import RunDir, RunKind, read_metrics
from nasframe.search import SearchData, prepare_data, resolve_space, search
from nasframe.sizing import match_size, parameter_breakdown
from nasframe.sizing import parse_count as parse_params
from nasframe.training import train


def find_checkpoint(run: str | Path, kind: RunKind = RunKind.SEARCH) -> Path | None:
    """The newest numbered checkpoint of a run directory (None: none yet, or no run)."""
    return RunDir(Path(run), kind).latest() if Path(run).is_dir() else None


def iter_metrics(run: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a run's metrics.jsonl, in order."""
    return iter(read_metrics(Path(run) / "metrics.jsonl"))

__all__ = [
    "DataSpec", "DecodeOptions", "ParallelCorpus", "RunKind", "SearchConfig", "SearchData",
    "TrainConfig",
    "Vocab", "apply_overrides", "cache_dir", "evaluate_run", "find_checkpoint",
    "get_or_train_vocab", "iter_metrics", "load_data", "load_split", "match_size",
    "parameter_breakdown", "parse_params", "prepare_data", "resolve_space", "search",
    "train",
]
