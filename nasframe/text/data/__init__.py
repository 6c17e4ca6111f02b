"""Data: parallel corpora, the joint sentencepiece vocabulary, token-budget batches, the
embedded LibreOffice-help English-German corpus and synthetic tasks."""
from __future__ import annotations

from nasframe.text.data.batching import (
    Batch,
    Pair,
    TokenBatcher,
    batch_cost,
    collate,
    encode_corpus,
)
from nasframe.text.data.corpus import (
    EMBEDDED_NAME,
    EMBEDDED_SPLITS,
    ParallelCorpus,
    embedded_corpus_dir,
    load_split,
    read_pair,
    read_tsv,
    split_search,
    write_pair,
    write_tsv,
)
from nasframe.text.data.spec import DataSpec, cache_dir, corpus_split, holdout_split, load_data
from nasframe.text.data.synthetic import SyntheticTask, synthetic_pairs
from nasframe.text.data.vocab import (
    BOS_ID,
    EOS_ID,
    NUM_SPECIAL,
    PAD_ID,
    UNK_ID,
    Vocab,
    get_or_train_vocab,
    vocab_cache_key,
)

__all__ = [
    "BOS_ID",
    "EMBEDDED_NAME",
    "EMBEDDED_SPLITS",
    "EOS_ID",
    "NUM_SPECIAL",
    "PAD_ID",
    "UNK_ID",
    "Batch",
    "DataSpec",
    "Pair",
    "ParallelCorpus",
    "SyntheticTask",
    "TokenBatcher",
    "Vocab",
    "batch_cost",
    "cache_dir",
    "collate",
    "corpus_split",
    "embedded_corpus_dir",
    "encode_corpus",
    "get_or_train_vocab",
    "holdout_split",
    "load_data",
    "load_split",
    "read_pair",
    "read_tsv",
    "split_search",
    "synthetic_pairs",
    "vocab_cache_key",
    "write_pair",
    "write_tsv",
]
