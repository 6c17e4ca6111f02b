"""Everything the compare package uses from the run layer, imported in this one place.

The run-directory layer (search, re-training, evaluation, sizing) is being reorganised; when
a name moves, only this file changes.
"""
from __future__ import annotations

from nasframe.config import SearchConfig, apply_overrides
from nasframe.data import ParallelCorpus, Vocab, encode_corpus, get_or_train_vocab, load_split
from nasframe.data.corpus import split_search
from nasframe.decode import DecodeOptions
from nasframe.evaluate import evaluate_run
from nasframe.executor import find_checkpoint
from nasframe.search import SearchData, resolve_space, search
from nasframe.sizing import match_size, parameter_breakdown
from nasframe.sizing import parse_count as parse_params
from nasframe.train import DataSpec, TrainConfig, cache_dir, iter_metrics, load_data, train

__all__ = [
    "DataSpec", "DecodeOptions", "ParallelCorpus", "SearchConfig", "SearchData", "TrainConfig",
    "Vocab", "apply_overrides", "cache_dir", "encode_corpus", "evaluate_run", "find_checkpoint",
    "get_or_train_vocab", "iter_metrics", "load_data", "load_split", "match_size",
    "parameter_breakdown", "parse_params", "resolve_space", "search", "split_search", "train",
]
