"""Bounds on what a recorded file may make nasframe allocate.

A run directory or a TOML may come from someone else, and its ``config.json`` says how big a
model to build. A model is checked against :func:`max_params` before a byte of it is
allocated (``nasframe.engine.supernet``), so a config asking for 10^11 parameters is one error line,
not an exhausted machine. The limit is ``NASFRAME_MAX_PARAMS`` from the environment, or
:data:`DEFAULT_MAX_PARAMS`; ``--max-params N`` on any command (``set_max_params``) raises it on
purpose for this process.
"""
from __future__ import annotations

import operator
import os

from nasframe.base.errors import ConfigError

__all__ = ["DEFAULT_MAX_PARAMS", "ENV_MAX_PARAMS", "MAX_BLOCKS", "MAX_D_MODEL", "MAX_EMBED_DIM",
           "MAX_VOCAB_SIZE", "check_params", "check_vocab_size", "format_count", "max_params",
           "parse_max_params", "set_max_params"]

DEFAULT_MAX_PARAMS = 2_000_000_000
"""Parameters a model may have unless the user raises the bound (the paper's largest models
have ~10^8; two billion leaves room for anything a single machine trains)."""
# Field bounds of ``ModelConfig``: far above any real model, low enough that no arithmetic
# on them (and no Python loop over blocks) runs away before the parameter check.
MAX_BLOCKS = 1024
"""The most blocks a ``ModelConfig`` may ask for."""
MAX_D_MODEL = 65_536
"""The largest ``ModelConfig.d_model``."""
MAX_EMBED_DIM = 65_536
"""The largest ``ModelConfig.embed_dim``."""
MAX_VOCAB_SIZE = 4_194_304
"""The largest vocabulary (sentencepiece's own practical limit is far below)."""

ENV_MAX_PARAMS = "NASFRAME_MAX_PARAMS"
"""The environment variable that sets the limit (``--max-params`` sets it for workers)."""
_override: int | None = None


def parse_max_params(text: str | int, where: str = "--max-params") -> int:
    """``"2e9"``, ``"2000000000"`` or ``"2_000_000_000"`` -> an int of at least 1."""
    try:
        value = float(str(text).replace("_", "")) if not isinstance(text, int) else text
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError
        count = int(value)
    except (ValueError, OverflowError):
        raise ConfigError(f"{where} {text!r}: expected a parameter count such as 2e9"
                          ) from None
    if count < 1 or count != value:
        raise ConfigError(f"{where} {text!r}: expected a whole parameter count of at least 1")
    return count


def set_max_params(count: int | str | None) -> None:
    """Raise (or lower) the limit for this process; None goes back to the environment's or
    the default."""
    global _override
    _override = None if count is None else parse_max_params(count)


def max_params() -> int:
    """The parameter limit now in force: ``set_max_params``, else ``NASFRAME_MAX_PARAMS``,
    else :data:`DEFAULT_MAX_PARAMS`."""
    if _override is not None:
        return _override
    env = os.environ.get(ENV_MAX_PARAMS)
    if env:
        return parse_max_params(env, where=ENV_MAX_PARAMS)
    return DEFAULT_MAX_PARAMS


def format_count(n: int) -> str:
    """``123456`` -> ``123,456``; ``120000000000`` -> ``1.2e11``."""
    if n < 10_000_000:
        return f"{n:,}"
    mantissa, _, exponent = f"{n:.3g}".partition("e")
    return f"{mantissa}e{int(exponent)}"


def check_params(count: int, what: str = "model") -> None:
    """Refuse a model of more than :func:`max_params` parameters with one ConfigError line."""
    limit = max_params()
    if count > limit:
        raise ConfigError(f"{what}: {format_count(count)} parameters, above the limit "
                          f"{format_count(limit)} (--max-params to raise it)")


def check_vocab_size(vocab_size: object, what: str = "vocab_size") -> int:
    """``vocab_size`` as an int in [1, MAX_VOCAB_SIZE], or a ConfigError."""
    try:
        if isinstance(vocab_size, bool):
            raise TypeError
        size = operator.index(vocab_size)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(f"{what}: {vocab_size!r} is not a whole number") from None
    if not 1 <= size <= MAX_VOCAB_SIZE:
        raise ConfigError(f"{what}: {size} is outside 1..{MAX_VOCAB_SIZE}")
    return size
