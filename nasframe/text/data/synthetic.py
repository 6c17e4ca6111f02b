"""Synthetic seq2seq tasks: copy, reverse and sort random token sequences.

They need no corpus or vocabulary, are learnable by a tiny model in seconds, and each probes
something: copy needs attention to the source, reverse needs position information, sort needs
content-based attention. Used by tests and to smoke-test a search before real text.
"""
from __future__ import annotations

import random
from typing import Literal, get_args

from nasframe.base.errors import ConfigError
from nasframe.text.data.batching import Pair
from nasframe.text.data.vocab import NUM_SPECIAL

__all__ = ["SyntheticTask", "synthetic_pairs"]

SyntheticTask = Literal["copy", "reverse", "sort"]
"""The synthetic tasks: the target is the source copied, reversed or sorted."""


def _target(task: SyntheticTask, src: list[int]) -> list[int]:
    if task == "copy":
        return list(src)
    if task == "reverse":
        return src[::-1]
    return sorted(src)


def _check_args(task: str, n: int, vocab_size: int, min_len: int, max_len: int) -> None:
    if task not in get_args(SyntheticTask):
        choices = ", ".join(get_args(SyntheticTask))
        raise ConfigError(f"synthetic task {task!r}: choose one of {choices}")
    if n < 0:
        raise ConfigError(f"n {n}: must not be negative")
    if vocab_size <= NUM_SPECIAL:
        raise ConfigError(
            f"vocab_size {vocab_size}: must exceed {NUM_SPECIAL} (ids 0..{NUM_SPECIAL - 1} "
            "are pad/unk/bos/eos)"
        )
    if not 1 <= min_len <= max_len:
        raise ConfigError(f"lengths {min_len}..{max_len}: need 1 <= min_len <= max_len")


def synthetic_pairs(
    task: SyntheticTask,
    n: int,
    vocab_size: int,
    min_len: int = 1,
    max_len: int = 10,
    seed: int = 0,
) -> list[Pair]:
    """``n`` random (source, target) pairs; tokens are in ``[4, vocab_size)`` and lengths in
    ``[min_len, max_len]``, both uniform. The same arguments always give the same pairs
    (:class:`random.Random`, independent of global random state)."""
    _check_args(task, n, vocab_size, min_len, max_len)
    rng = random.Random(seed)
    pairs: list[Pair] = []
    for _ in range(n):
        length = rng.randint(min_len, max_len)
        src = [rng.randrange(NUM_SPECIAL, vocab_size) for _ in range(length)]
        pairs.append((src, _target(task, src)))
    return pairs
