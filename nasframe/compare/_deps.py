"""Everything the compare package uses from the run layer, imported in this one place.

The run-directory layer (search, re-training, evaluation, sizing) moves now and then; when a
name moves, only this file changes.
"""
from __future__ import annotations

from pathlib import Path

from nasframe.engine.sizing import match_size, parameter_breakdown
from nasframe.engine.sizing import parse_count as parse_params
from nasframe.run.config import SearchConfig, TrainConfig, apply_overrides
from nasframe.run.lock import LOCK_FILE, RunLock
from nasframe.run.rundir import RunDir, RunKind
from nasframe.searching.api import SearchData, prepare_data, resolve_space, search
from nasframe.text.data import (
    DataSpec,
    ParallelCorpus,
    Vocab,
    cache_dir,
    get_or_train_vocab,
    load_data,
    load_split,
)
from nasframe.text.decode import DecodeOptions
from nasframe.text.evaluation import evaluate_run
from nasframe.text.training import train

__all__ = [
    "DataSpec", "DecodeOptions", "LOCK_FILE", "ParallelCorpus", "RunDir", "RunKind", "RunLock",
    "SearchConfig", "SearchData", "TrainConfig",
    "Vocab", "apply_overrides", "cache_dir", "evaluate_run", "has_checkpoint",
    "get_or_train_vocab", "load_data", "load_split", "match_size", "parameter_breakdown",
    "parse_params", "prepare_data", "resolve_space", "search", "train",
]


def has_checkpoint(run_dir: Path, kind: str) -> bool:
    """Whether ``run_dir`` holds a ``kind`` ("search" or "train") run with a checkpoint to
    resume from. A run that is there but cannot be opened (a link in it, code not imported)
    is an error, never a reason to start it over."""
    if not (run_dir / "run.json").is_file():
        return False
    return RunDir.open(run_dir, RunKind(kind)).latest() is not None
