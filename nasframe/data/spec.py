"""Where a run's text comes from: the data options a user gives (``DataSpec``), the corpora
they name (``load_data``) and the vocabulary cache (``cache_dir``), shared by search and
re-training."""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from nasframe.data.corpus import (
    EMBEDDED_NAME,
    ParallelCorpus,
    load_split,
    read_pair,
    read_tsv,
    split_search,
)
from nasframe.errors import DataError

__all__ = ["DataSpec", "cache_dir", "load_data"]


def cache_dir() -> Path:
    """Where trained vocabularies are cached: ``$NASFRAME_CACHE`` or ``~/.cache/nasframe``."""
    root = os.environ.get("NASFRAME_CACHE") or Path.home() / ".cache" / "nasframe"
    return Path(root) / "vocab"


class DataSpec(BaseModel):
    """Where training data come from, as given on the command line (recorded for --resume).

    ``data``: ``lohelp``, a TSV file, a folder of split files or a ``{split}`` pattern;
    or ``src`` + ``tgt``: two aligned text files. ``valid``: one TSV or two aligned files;
    when absent, the corpus's own ``valid`` split, or else 2% of the training pairs (at most
    1,000) held out.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str | None = None
    src: str | None = None
    tgt: str | None = None
    valid: tuple[str, ...] | None = None

    def absolute(self) -> DataSpec:
        """Paths made absolute, so a recorded spec still works from another directory."""
        def fix(p: str | None) -> str | None:
            if p is None or p == EMBEDDED_NAME:
                return p
            return str(Path(p).expanduser().resolve()) if "{split}" not in p else \
                str(Path(p).expanduser().absolute())
        valid = tuple(fix(v) or v for v in self.valid) if self.valid else None
        return DataSpec(data=fix(self.data), src=fix(self.src), tgt=fix(self.tgt), valid=valid)

    def has_splits(self) -> bool:
        """Whether ``data`` names its splits (embedded corpus, folder or pattern)."""
        d = self.data or EMBEDDED_NAME
        return d == EMBEDDED_NAME or "{split}" in d or Path(d).is_dir()


def load_data(spec: DataSpec, seed: int = 0) -> tuple[ParallelCorpus, ParallelCorpus]:
    """(train, valid) corpora of a spec; errors are DataError naming the file at fault."""
    if (spec.src is None) != (spec.tgt is None):
        raise DataError("give both --src and --tgt (two aligned files), or --data")
    if spec.src is not None and spec.data is not None:
        raise DataError("give either --data or --src/--tgt, not both")
    if spec.src is not None:
        train_corpus = read_pair(spec.src, spec.tgt)  # type: ignore[arg-type]
    else:
        train_corpus = load_split(spec.data or EMBEDDED_NAME, "train")
    if spec.valid:
        if len(spec.valid) not in (1, 2):
            raise DataError(f"--valid takes one TSV or two aligned files, got {len(spec.valid)}")
        valid = read_tsv(spec.valid[0]) if len(spec.valid) == 1 else read_pair(*spec.valid)
        return train_corpus, valid
    if spec.src is None and spec.has_splits():
        return train_corpus, load_split(spec.data or EMBEDDED_NAME, "valid")
    held_out = min(1000, max(1, len(train_corpus) // 50))
    if len(train_corpus) < 2:
        raise DataError(f"corpus {train_corpus.name!r} has {len(train_corpus)} pair(s); "
                        "need at least 2 to hold some out for validation (or give --valid)")
    return split_search(train_corpus, (len(train_corpus) - held_out, held_out), seed)
