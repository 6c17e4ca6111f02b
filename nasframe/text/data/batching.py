"""Token-budget batches of subword ids, with an exactly resumable position.

Sentences are grouped by length so that little of a batch is padding, and a batch holds as
many sentences as fit a token budget, so memory use is about the same for every batch. The
batcher's position (epoch and index) is all the state it has: a search killed and resumed
from a checkpoint sees the same batches as one that never stopped.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nasframe.base.errors import CheckpointError, ConfigError, DataError
from nasframe.text.data.corpus import ParallelCorpus
from nasframe.text.data.vocab import BOS_ID, EOS_ID, PAD_ID, Vocab

__all__ = ["Batch", "Pair", "TokenBatcher", "batch_cost", "collate", "encode_corpus"]

Pair = tuple[list[int], list[int]]
"""A sentence pair as subword ids, without bos or eos."""


@dataclass(eq=False)  # tensors have no single truth value, so no field-wise ==
class Batch:
    """Padded ids of a batch; ``tgt_in`` is ``bos + target`` and ``tgt_out`` is ``target + eos``
    (teacher forcing: the decoder reads ``tgt_in`` and is scored against ``tgt_out``)."""

    src: Tensor  # (B, S) long
    tgt_in: Tensor  # (B, T) long
    tgt_out: Tensor  # (B, T) long
    pad_id: int = PAD_ID

    def __len__(self) -> int:
        return self.src.shape[0]

    @property
    def n_src_tokens(self) -> int:
        return int((self.src != self.pad_id).sum())

    @property
    def n_tgt_tokens(self) -> int:
        """Non-pad target positions, i.e. the tokens the loss is computed on."""
        return int((self.tgt_out != self.pad_id).sum())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            self.src.to(device, non_blocking=non_blocking),
            self.tgt_in.to(device, non_blocking=non_blocking),
            self.tgt_out.to(device, non_blocking=non_blocking),
            self.pad_id,
        )


def collate(
    pairs: Sequence[Pair], pad_id: int = PAD_ID, bos_id: int = BOS_ID, eos_id: int = EOS_ID
) -> Batch:
    """Pad a list of pairs into a :class:`Batch` (right padding)."""
    if not pairs:
        raise DataError("cannot collate an empty list of sentence pairs")
    src_len = max(len(s) for s, _ in pairs)
    tgt_len = max(len(t) for _, t in pairs) + 1
    src = torch.full((len(pairs), src_len), pad_id, dtype=torch.long)
    tgt_in = torch.full((len(pairs), tgt_len), pad_id, dtype=torch.long)
    tgt_out = torch.full((len(pairs), tgt_len), pad_id, dtype=torch.long)
    for row, (s, t) in enumerate(pairs):
        src[row, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        tgt_in[row, : len(t) + 1] = torch.as_tensor([bos_id, *t], dtype=torch.long)
        tgt_out[row, : len(t) + 1] = torch.as_tensor([*t, eos_id], dtype=torch.long)
    return Batch(src, tgt_in, tgt_out, pad_id)


def encode_corpus(
    corpus: ParallelCorpus, vocab: Vocab, max_len: int = 250
) -> tuple[list[Pair], int]:
    """Encode both sides and drop pairs with a side longer than ``max_len`` subword tokens
    (not counting bos/eos). Returns the kept pairs and how many were dropped, for the caller
    to report: a filter that drops silently hides a broken corpus."""
    if max_len < 1:
        raise ConfigError(f"max_len {max_len}: must be at least 1")
    src_ids = vocab.encode_many(corpus.src)
    tgt_ids = vocab.encode_many(corpus.tgt)
    pairs: list[Pair] = []
    for s, t in zip(src_ids, tgt_ids):
        if 0 < len(s) <= max_len and 0 < len(t) <= max_len:
            pairs.append((s, t))
    return pairs, len(corpus) - len(pairs)


def batch_cost(pairs: Sequence[Pair]) -> int:
    """Padded size of the larger of the two tensors of a batch: B * max(S, T), where T counts
    the added bos/eos. This is what the token budget bounds."""
    src_len = max(len(s) for s, _ in pairs)
    tgt_len = max(len(t) for _, t in pairs) + 1
    return len(pairs) * max(src_len, tgt_len)


def _pack_by_length(pairs: Sequence[Pair], max_tokens: int) -> list[list[int]]:
    """Indices of ``pairs`` grouped into batches of similar length within the budget.

    Greedy over pairs sorted by (source, target) length: a batch grows while
    ``size * longest <= max_tokens``. A pair longer than the budget on its own still gets
    a batch of one; dropping it here would be a silent filter.
    """
    order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i][0]), len(pairs[i][1])))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        length = max(len(pairs[i][0]), len(pairs[i][1]) + 1)
        grown = max(longest, length)
        if current and (len(current) + 1) * grown > max_tokens:
            batches.append(current)
            current, grown = [], length
        current.append(i)
        longest = grown
    if current:
        batches.append(current)
    return batches


class TokenBatcher:
    """An endless, exactly resumable stream of token-budget batches.

    Batches are formed once (by length); each epoch visits all of them in an order drawn from
    ``(seed, epoch)``, so the order of any epoch can be recomputed from the position alone.
    Under DDP, ``rank``/``world_size`` give each process every ``world_size``-th batch of the
    same order, cut to an equal count so all ranks take the same number of steps.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        max_tokens: int,
        shuffle: bool = True,
        seed: int = 0,
        *,
        rank: int = 0,
        world_size: int = 1,
        pad_id: int = PAD_ID,
        bos_id: int = BOS_ID,
        eos_id: int = EOS_ID,
    ) -> None:
        if max_tokens < 1:
            raise ConfigError(f"max_tokens {max_tokens}: must be at least 1")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank}: must be in [0, world_size={world_size})")
        if not pairs:
            raise DataError("no sentence pairs to batch (is the corpus empty or all filtered?)")
        self.pairs = list(pairs)
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self._special = (pad_id, bos_id, eos_id)
        self.batches = _pack_by_length(self.pairs, max_tokens)
        if len(self.batches) < world_size:
            raise DataError(
                f"{len(self.batches)} batches cannot feed {world_size} processes; "
                "lower max_tokens or use more data"
            )
        self.epoch = 0
        self.index = 0
        self._order = self._epoch_order(0)

    def __len__(self) -> int:
        """Batches per epoch for this rank."""
        return len(self.batches) // self.world_size

    def _epoch_order(self, epoch: int) -> list[int]:
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.batches)).tolist()
        else:
            order = list(range(len(self.batches)))
        return order[self.rank :: self.world_size][: len(self)]

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self.index >= len(self):
            self._start_epoch(self.epoch + 1)
        batch = self.batches[self._order[self.index]]
        self.index += 1
        return collate([self.pairs[i] for i in batch], *self._special)

    def _start_epoch(self, epoch: int) -> None:
        self.epoch, self.index = epoch, 0
        self._order = self._epoch_order(epoch)

    def iter_epoch(self) -> Iterator[Batch]:
        """The batches left in the current epoch (all of them on a fresh batcher), e.g. one
        validation pass; afterwards the position is at the start of the next epoch."""
        if self.index >= len(self):
            self._start_epoch(self.epoch + 1)
        epoch = self.epoch
        while self.epoch == epoch and self.index < len(self):
            yield next(self)

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """The position; with the same pairs and settings it determines every later batch."""
        return {
            "epoch": self.epoch,
            "index": self.index,
            "seed": self.seed,
            "num_batches": len(self.batches),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = state.get("num_batches", len(self.batches))
        if expected != len(self.batches):
            raise CheckpointError(
                f"data position was saved with {expected} batches per epoch, but this data "
                f"gives {len(self.batches)}; the corpus, vocabulary or max_tokens changed"
            )
        self.seed = int(state["seed"])
        self._start_epoch(int(state["epoch"]))
        self.index = int(state["index"])
