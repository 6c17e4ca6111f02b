"""Errors meant for users: each message names the file, field or value at fault."""
from __future__ import annotations

from typing import Any


class NasframeError(Exception):
    """Base of every error nasframe raises on purpose; the CLI prints it without a traceback."""


class SpaceError(NasframeError, ValueError):
    """A search space, operation or architecture declaration is invalid."""


class ConfigError(NasframeError, ValueError):
    """A configuration value is invalid."""


class DataError(NasframeError, ValueError):
    """A corpus file is malformed; the message names the file and line."""


class CheckpointError(NasframeError):
    """A checkpoint or run directory cannot be used."""


class RunDirError(CheckpointError):
    """A run directory cannot be created, written or read as asked (wrong kind, not a run,
    a folder of the user's own files)."""


class DiskFullError(RunDirError):
    """No space left on the device while writing a run's file; nothing was half written."""


class NonFiniteError(NasframeError):
    """Training diverged: a loss or gradient is not finite. The CLI exits with code 3."""

    exit_code = 3


def describe_validation_error(err: Any, *, root: str, field_prefix: str = "",
                              skip: tuple[str, ...] = (), sep: str = "; ") -> str:
    """One ``field: message`` per error of a pydantic ``ValidationError``.

    ``root`` names an error that has no field (a model-level check); ``field_prefix`` is put
    before field paths (``model.``); ``skip`` drops location parts that are not fields (the
    tags of a discriminated union).
    """
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"] if p not in skip]
        where = field_prefix + ".".join(loc) if loc else root
        lines.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
    return sep.join(lines)
