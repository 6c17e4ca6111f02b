"""Errors meant for users: each message names the file, field or value at fault."""
from __future__ import annotations


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
