"""``DataSpec``: where a run's text comes from, as the user gave it (recorded in the run).

Part of the run layer, so that configs and run directories record it without importing the
text part that reads corpora (``nasframe.text.data``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from nasframe.base.errors import ConfigError, describe_validation_error

__all__ = ["EMBEDDED_NAME", "DataSpec"]

EMBEDDED_NAME = "lohelp"
"""The corpus that ships inside the package (LibreOffice help, en-de)."""


class DataSpec(BaseModel):
    """Where a run's text comes from, as given on the command line (recorded in the run).

    ``data``: ``lohelp``, a TSV file, a folder of split files or a ``{split}`` pattern;
    or ``src`` + ``tgt``: two aligned text files. A corpus without named splits (one file, or
    one pair of files) is partitioned by ``holdout_seed`` into train and held-out ``valid`` and
    ``test`` parts of ``holdout`` = (valid, test) fractions; search and training read only the
    train part, so ``evaluate --split test`` scores pairs no model has seen. ``valid``: one
    TSV or two aligned files to validate on instead of the held-out part.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str | None = None
    src: str | None = None
    tgt: str | None = None
    valid: tuple[str, ...] | None = None
    holdout: tuple[float, float] = (0.05, 0.05)
    holdout_seed: int = 0

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise ConfigError(describe_validation_error(err, root="data")) from None

    @field_validator("holdout")
    @classmethod
    def _fractions(cls, value: tuple[float, float]) -> tuple[float, float]:
        if any(not 0 <= f < 1 for f in value) or sum(value) >= 1:
            raise ValueError(f"holdout {value}: two fractions in [0, 1) (valid, test) that "
                             "leave some pairs to train on")
        return value

    def absolute(self) -> DataSpec:
        """Paths made absolute, so a recorded spec still works from another directory."""
        def fix(p: str | None) -> str | None:
            if p is None or p == EMBEDDED_NAME:
                return p
            return str(Path(p).expanduser().resolve()) if "{split}" not in p else \
                str(Path(p).expanduser().absolute())
        valid = tuple(fix(v) or v for v in self.valid) if self.valid else None
        return self.model_copy(update={"data": fix(self.data), "src": fix(self.src),
                                       "tgt": fix(self.tgt), "valid": valid})

    def has_splits(self) -> bool:
        """Whether the corpus names its splits (embedded corpus, folder or pattern)."""
        if self.src is not None:
            return False
        d = self.data or EMBEDDED_NAME
        return d == EMBEDDED_NAME or "{split}" in d or Path(d).is_dir()

    def describe(self) -> str:
        return f"{self.src} + {self.tgt}" if self.src else (self.data or EMBEDDED_NAME)
