"""nasframe: neural architecture search for sequence-to-sequence Transformers.

Everything a user needs is importable from here::

    import nasframe as nf
    space = nf.spaces.get("dartsformer")
"""
from __future__ import annotations

from nasframe import ops, reversible, spaces, updates
from nasframe.architecture import Architecture, derive
from nasframe.choice import ChoiceNode
from nasframe.config import SearchConfig, TrainConfig
from nasframe.data import DataSpec
from nasframe.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DiskFullError,
    NasframeError,
    NonFiniteError,
    RunDirError,
    SpaceError,
)
from nasframe.evaluation import evaluate_run as evaluate
from nasframe.evaluation import translate
from nasframe.executor import Executor, SearchResult
from nasframe.loading import LoadedRun, load_run
from nasframe.ops import Context, IncrementalState, Operation, Residual, register_op
from nasframe.rundir import RunDir, RunKind
from nasframe.runtime import rng_state, set_random_state, set_rng_state
from nasframe.search import SearchData, search
from nasframe.space import OpSet, OpSpec, SearchSpace, Sequential, Stack, op
from nasframe.strategy import (
    SearchContext,
    Strategy,
    available_strategies,
    get_strategy,
    register_strategy,
)
from nasframe.supernet import ModelConfig, Supernet, build_model, count_parameters
from nasframe.training import TrainResult, train

__version__ = "0.1.0"

__all__ = [
    "Architecture", "ChoiceNode", "CheckpointError", "ConfigError", "Context", "DataError",
    "IncrementalState", "ModelConfig", "NasframeError", "OpSet", "OpSpec", "Operation",
    "Residual", "SearchSpace", "Sequential", "SpaceError", "Stack", "Supernet", "build_model",
    "count_parameters", "derive", "op", "ops", "register_op", "reversible", "spaces",
    "Executor", "SearchConfig", "SearchContext", "SearchData", "SearchResult", "Strategy",
    "available_strategies", "get_strategy", "register_strategy", "search",
    "DataSpec", "DiskFullError", "LoadedRun", "NonFiniteError", "RunDir", "RunDirError",
    "RunKind", "TrainConfig", "TrainResult", "evaluate", "load_run", "rng_state",
    "set_random_state", "set_rng_state", "train", "translate", "updates",
]
