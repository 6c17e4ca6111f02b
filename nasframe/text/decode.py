"""Beam search and greedy decoding with incremental state.

The encoder runs once per batch; the decoder then runs one position at a time with an
``IncrementalState``, in which every op keeps what it needs from earlier positions (keys and
values for attention, the last k-1 inputs for convolutions). One step therefore costs
O(current length) rather than re-running the whole prefix. ``incremental=False`` recomputes
the prefix at every step instead: the reference for tests and for the speed comparison.

Hypotheses live in one batch of ``sentences x beams`` rows. After each step the kept beams
are gathered with ``state.reorder(index)``; the same call also drops the rows of sentences
that have finished, so the batch shrinks as decoding proceeds.

Scores follow fairseq: a finished hypothesis is ranked by ``log p(y|x) / lp(|y|)`` where
``|y|`` counts the end-of-sentence token and ``lp`` is ``|y|^alpha`` (``"fairseq"``) or
``((5 + |y|) / 6)^alpha`` (``"gnmt"``, Wu et al. 2016). A sentence stops when ``beam``
hypotheses have finished; every hypothesis is forced to end at ``a * source_length + b``.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from nasframe.base.errors import ConfigError
from nasframe.dsl.ops import IncrementalState
from nasframe.engine.supernet import Supernet
from nasframe.text.data.vocab import BOS_ID, EOS_ID, PAD_ID

__all__ = [
    "DecodeOptions",
    "Hypothesis",
    "beam_search",
    "decoding_speed",
    "greedy",
    "length_penalty",
    "translate_ids",
]

PenaltyStyle = Literal["fairseq", "gnmt"]


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode: beam size, length penalty, and the output length limit ``a*x + b``."""

    beam: int = 5
    alpha: float = 1.0
    style: PenaltyStyle = "fairseq"
    max_len_a: float = 1.2
    max_len_b: int = 10
    incremental: bool = True

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise ConfigError(f"beam {self.beam}: must be at least 1")
        if self.style not in ("fairseq", "gnmt"):
            raise ConfigError(f"length penalty style {self.style!r}: choose fairseq or gnmt")
        if self.max_len_a < 0 or self.max_len_b < 1:
            raise ConfigError(f"max length {self.max_len_a}*x + {self.max_len_b}: need a >= 0 "
                              "and b >= 1")


@dataclass
class Hypothesis:
    """A finished output: token ids (without bos/eos), summed log-probability, ranking score."""

    tokens: list[int]
    log_prob: float
    score: float


def length_penalty(length: int, alpha: float, style: PenaltyStyle = "fairseq") -> float:
    """The divisor of a hypothesis's log-probability; ``length`` includes the eos token."""
    if style == "gnmt":
        return ((5.0 + length) / 6.0) ** alpha
    return float(length) ** alpha


def _max_lengths(src: Tensor, options: DecodeOptions) -> list[int]:
    """Output tokens allowed per sentence (eos not counted): ``floor(a * |x| + b)``."""
    lengths = src.ne(PAD_ID).sum(dim=1).tolist()
    return [int(options.max_len_a * n + options.max_len_b) for n in lengths]


class _Decoder:
    """Next-token log-probabilities for a batch of prefixes, incremental or recomputed."""

    def __init__(self, model: Supernet, memory: Tensor, memory_mask: Tensor,
                 incremental: bool) -> None:
        self.model, self.memory, self.memory_mask = model, memory, memory_mask
        self.state = IncrementalState() if incremental else None

    def log_probs(self, prefixes: Tensor) -> Tensor:
        """(rows, t) prefixes starting with bos -> (rows, vocab) log p(next | prefix, x)."""
        tgt_in = prefixes[:, -1:] if self.state is not None else prefixes
        logits = self.model.decode(tgt_in, self.memory, self.memory_mask, self.state)[:, -1]
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return torch.log_softmax(logits, dim=-1)

    def reorder(self, index: Tensor) -> None:
        """Keep rows ``index`` (in that order) of every cached tensor and of the memory."""
        self.memory = self.memory.index_select(0, index)
        self.memory_mask = self.memory_mask.index_select(0, index)
        if self.state is not None:
            self.state.reorder(index)


def _forbid_specials(lp: Tensor, force_eos: Tensor) -> Tensor:
    """Never emit pad or bos; emit only eos where a row has reached its length limit."""
    lp[:, PAD_ID] = -math.inf
    lp[:, BOS_ID] = -math.inf
    if bool(force_eos.any()):
        eos = lp[force_eos, EOS_ID].clone()
        lp[force_eos] = -math.inf
        lp[force_eos, EOS_ID] = eos
    return lp


@torch.no_grad()
def beam_search(model: Supernet, src: Tensor, options: DecodeOptions | None = None
                ) -> list[list[Hypothesis]]:
    """Decode a padded batch of source ids; per sentence, its finished hypotheses, best first.

    The model should be in eval mode (dropout off) and on ``src``'s device.
    """
    opt = options or DecodeOptions()
    k, n = opt.beam, src.size(0)
    memory, memory_mask = model.encode(src)
    rows = torch.arange(n, device=src.device).repeat_interleave(k)
    decoder = _Decoder(model, memory.index_select(0, rows), memory_mask.index_select(0, rows),
                       opt.incremental)
    max_len = torch.tensor(_max_lengths(src, opt), device=src.device)
    finished: list[list[Hypothesis]] = [[] for _ in range(n)]
    active = torch.arange(n, device=src.device)            # sentences still decoding
    prefixes = torch.full((n * k, 1), BOS_ID, dtype=torch.long, device=src.device)
    # Only the first beam of each sentence is live at the start: the others would duplicate it.
    scores = torch.full((n, k), -math.inf, dtype=torch.float64, device=src.device)
    scores[:, 0] = 0.0
    step = 0
    while active.numel():
        lp = decoder.log_probs(prefixes)                   # (active * k, V)
        vocab = lp.size(-1)
        force = (max_len[active] <= step).repeat_interleave(k)
        lp = _forbid_specials(lp, force)
        total = (scores.unsqueeze(-1) + lp.view(-1, k, vocab)).view(active.numel(), -1)
        top_scores, top_ids = total.topk(min(2 * k, total.size(1)), dim=1)
        cands = zip(top_scores.tolist(), (top_ids // vocab).tolist(), (top_ids % vocab).tolist())
        rows: list[int] = []
        tokens: list[int] = []
        kept: list[float] = []
        still: list[int] = []
        for a, (sent, (s, b, t)) in enumerate(zip(active.tolist(), cands)):
            live = _advance(a * k, k, step, prefixes, s, b, t, finished[sent], opt)
            if live is None or len(finished[sent]) >= k:
                continue
            still.append(a)
            rows += live[0]
            tokens += live[1]
            kept += live[2]
        if not still:
            break
        index = torch.tensor(rows, device=src.device)
        new_tokens = torch.tensor(tokens, device=src.device)[:, None]
        prefixes = torch.cat([prefixes.index_select(0, index), new_tokens], dim=1)
        scores = torch.tensor(kept, dtype=torch.float64, device=src.device).view(-1, k)
        active = active[torch.tensor(still, device=src.device)]
        decoder.reorder(index)
        step += 1
    for hyps in finished:
        hyps.sort(key=lambda h: -h.score)
    return finished


def _advance(first_row: int, k: int, step: int, prefixes: Tensor, cand_scores: list[float],
             cand_beams: list[int], cand_tokens: list[int], finished: list[Hypothesis],
             opt: DecodeOptions) -> tuple[list[int], list[int], list[float]] | None:
    """Finish the eos candidates among the top ``k`` and keep the best ``k`` others alive.

    Candidates come best first. Returns (rows of the kept beams, their new tokens, their
    scores), or None when fewer than ``k`` live candidates remain (every continuation ended
    or was forbidden).
    """
    rows: list[int] = []
    tokens: list[int] = []
    scores: list[float] = []
    for rank, (s, b, t) in enumerate(zip(cand_scores, cand_beams, cand_tokens)):
        if s == -math.inf:
            break
        if t == EOS_ID:
            if rank < k and len(finished) < k:
                ids = prefixes[first_row + b, 1:].tolist()
                penalty = length_penalty(step + 1, opt.alpha, opt.style)
                finished.append(Hypothesis(ids, s, s / penalty))
            continue
        if len(rows) < k:
            rows.append(first_row + b)
            tokens.append(t)
            scores.append(s)
    return (rows, tokens, scores) if len(rows) == k else None


@torch.no_grad()
def greedy(model: Supernet, src: Tensor, options: DecodeOptions | None = None
           ) -> list[list[int]]:
    """The most probable next token at every step (beam search with one beam, but cheaper)."""
    opt = options or DecodeOptions(beam=1)
    n = src.size(0)
    memory, memory_mask = model.encode(src)
    decoder = _Decoder(model, memory, memory_mask, opt.incremental)
    max_len = torch.tensor(_max_lengths(src, opt), device=src.device)
    out: list[list[int]] = [[] for _ in range(n)]
    active = torch.arange(n, device=src.device)
    prefixes = torch.full((n, 1), BOS_ID, dtype=torch.long, device=src.device)
    step = 0
    while active.numel():
        lp = _forbid_specials(decoder.log_probs(prefixes), max_len[active] <= step)
        # topk, not argmax: the same tie-breaking as beam search, so beam 1 equals greedy.
        token = lp.topk(1, dim=-1).indices[:, 0]
        going = token.ne(EOS_ID)
        for sent, t in zip(active.tolist(), token.tolist()):
            if t != EOS_ID:
                out[sent].append(t)
        if not bool(going.any()):
            break
        index = going.nonzero()[:, 0]
        prefixes = torch.cat([prefixes[index], token[index, None]], dim=1)
        active = active[index]
        decoder.reorder(index)
        step += 1
    return out


def translate_ids(model: Supernet, sources: Sequence[Sequence[int]],
                  options: DecodeOptions | None = None, max_tokens: int = 16000,
                  max_sentences: int = 256,
                  on_batch: Callable[[int], None] | None = None) -> list[list[int]]:
    """Decode many sources in length-sorted batches; outputs follow the input order.

    ``max_tokens`` bounds ``sentences x beams x source length`` per batch (memory); sorting
    by length keeps padding, and hence wasted work, small. ``on_batch(n)`` is called after
    each batch with its number of sentences (for progress bars).
    """
    opt = options or DecodeOptions()
    device = next(model.parameters()).device
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    results: list[list[int]] = [[] for _ in sources]
    for batch in _batches(order, sources, opt.beam, max_tokens, max_sentences):
        width = max(1, max(len(sources[i]) for i in batch))
        src = torch.full((len(batch), width), PAD_ID, dtype=torch.long)
        for row, i in enumerate(batch):
            src[row, : len(sources[i])] = torch.as_tensor(list(sources[i]), dtype=torch.long)
        src = src.to(device)
        if opt.beam == 1:
            outs = greedy(model, src, opt)
        else:
            outs = [h[0].tokens if h else [] for h in beam_search(model, src, opt)]
        for i, ids in zip(batch, outs):
            results[i] = ids
        if on_batch is not None:
            on_batch(len(batch))
    return results


def _batches(order: list[int], sources: Sequence[Sequence[int]], beam: int, max_tokens: int,
             max_sentences: int) -> list[list[int]]:
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = max(len(sources[i]), 1)  # sorted: the newest is the longest
        if current and ((len(current) + 1) * beam * longest > max_tokens
                        or len(current) >= max_sentences):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def decoding_speed(model: Supernet, sources: Sequence[Sequence[int]], beam: int = 5,
                   repeats: int = 1) -> dict[str, float]:
    """Sentences per second with and without incremental state, measured side by side.

    Both modes decode the same sources with the same options (and must give the same output,
    which is checked); the better of ``repeats`` runs counts, to discount warm-up.
    """
    model.eval()
    result: dict[str, float] = {"sentences": float(len(sources)), "beam": float(beam)}
    outputs = {}
    for incremental in (True, False):
        opt = DecodeOptions(beam=beam, incremental=incremental)
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            outputs[incremental] = translate_ids(model, sources, opt)
            best = min(best, time.perf_counter() - start)
        key = "incremental" if incremental else "recompute"
        result[f"{key}_sentences_per_s"] = len(sources) / best
    result["speedup"] = result["incremental_sentences_per_s"] / result["recompute_sentences_per_s"]
    result["same_output"] = float(outputs[True] == outputs[False])
    return result
