"""nasframe: neural architecture search for sequence-to-sequence Transformers.

Everything a user needs is importable from here::

    import nasframe as nf
    space = nf.spaces.get("dartsformer")
"""
from __future__ import annotations

from nasframe import spaces
from nasframe.base.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DiskFullError,
    NasframeError,
    NonFiniteError,
    RunDirError,
    SpaceError,
)
from nasframe.base.runtime import rng_state, set_random_state, set_rng_state
from nasframe.compare.groundtruth import GroundTruth
from nasframe.dsl import ops
from nasframe.dsl.architecture import Architecture, derive
from nasframe.dsl.ops import Context, IncrementalState, Operation, Residual, register_op
from nasframe.dsl.space import OpSet, OpSpec, SearchSpace, Sequential, Stack, op
from nasframe.engine import reversible
from nasframe.engine.choice import ChoiceNode
from nasframe.engine.supernet import ModelConfig, Supernet, build_model, count_parameters
from nasframe.run.config import SearchConfig, TrainConfig
from nasframe.run.rundir import RunDir, RunKind
from nasframe.searching import updates
from nasframe.searching.api import SearchData, search
from nasframe.searching.executor import Executor, SearchResult
from nasframe.searching.strategy import (
    SearchContext,
    Strategy,
    available_strategies,
    get_strategy,
    register_strategy,
)
from nasframe.text.data import DataSpec
from nasframe.text.evaluation import evaluate_run as evaluate
from nasframe.text.evaluation import translate
from nasframe.text.loading import LoadedRun, load_run
from nasframe.text.training import TrainResult, train

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
    "GroundTruth",
]
