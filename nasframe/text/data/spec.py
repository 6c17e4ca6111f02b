"""Where a run's text comes from: the data options a user gives (``DataSpec``), the corpora
they name (``load_data``) and the vocabulary cache (``cache_dir``), shared by search and
re-training."""
from __future__ import annotations

import os
import random
from pathlib import Path

from nasframe.base.errors import DataError
from nasframe.run.data_spec import EMBEDDED_NAME, DataSpec
from nasframe.text.data.corpus import (
    ParallelCorpus,
    load_split,
    read_pair,
    read_tsv,
)

__all__ = ["DataSpec", "cache_dir", "corpus_split", "holdout_split", "load_data"]


def cache_dir() -> Path:
    """Where trained vocabularies are cached: ``$NASFRAME_CACHE`` or ``~/.cache/nasframe``."""
    root = os.environ.get("NASFRAME_CACHE") or Path.home() / ".cache" / "nasframe"
    return Path(root) / "vocab"


def holdout_split(corpus: ParallelCorpus, fractions: tuple[float, float], seed: int
                  ) -> dict[str, ParallelCorpus]:
    """``train``, ``valid`` and ``test`` parts of a corpus without splits: a seeded
    permutation (the same on every platform), the valid and test parts cut from its front."""
    n = len(corpus)
    sizes = [max(1, round(n * f)) if f > 0 else 0 for f in fractions]
    if n - sum(sizes) < 1:
        raise DataError(f"corpus {corpus.name!r} has {n} pair(s): too few to hold out "
                        f"{sizes[0]} for validation and {sizes[1]} for test and train on the "
                        "rest (give --holdout smaller fractions, or --valid)")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    cut = [0, sizes[0], sizes[0] + sizes[1], n]
    parts = {}
    for name, lo, hi in (("valid", cut[0], cut[1]), ("test", cut[1], cut[2]),
                         ("train", cut[2], cut[3])):
        keep = sorted(order[lo:hi])  # file order within a part
        parts[name] = ParallelCorpus([corpus.src[i] for i in keep],
                                     [corpus.tgt[i] for i in keep], f"{corpus.name}-{name}")
    return parts


def corpus_split(spec: DataSpec, split: str) -> ParallelCorpus:
    """One split of the corpus a spec names; errors are DataError naming the file at fault."""
    if (spec.src is None) != (spec.tgt is None):
        raise DataError("give both --src and --tgt (two aligned files), or --data")
    if spec.src is not None and spec.data is not None:
        raise DataError("give either --data or --src/--tgt, not both")
    if spec.has_splits():
        return load_split(spec.data or EMBEDDED_NAME, split)
    if split not in ("train", "valid", "test"):
        raise DataError(f"{spec.describe()}: a single corpus has the splits train, valid and "
                        f"test (held out with --holdout), not {split!r}")
    whole = read_pair(spec.src, spec.tgt) if spec.src is not None \
        else load_split(spec.data, "train")  # type: ignore[arg-type]
    return holdout_split(whole, spec.holdout, spec.holdout_seed)[split]


def load_data(spec: DataSpec) -> tuple[ParallelCorpus, ParallelCorpus]:
    """(train, valid) corpora of a spec: its own valid split, the held-out part, or
    ``spec.valid``."""
    train_corpus = corpus_split(spec, "train")
    if spec.valid:
        if len(spec.valid) not in (1, 2):
            raise DataError(f"--valid takes one TSV or two aligned files, got {len(spec.valid)}")
        valid = read_tsv(spec.valid[0]) if len(spec.valid) == 1 else read_pair(*spec.valid)
        return train_corpus, valid
    return train_corpus, corpus_split(spec, "valid")
