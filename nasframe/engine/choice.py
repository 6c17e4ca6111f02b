"""A choice node: the candidate ops of one architecture decision and how they are evaluated.

Two modes:
- ``weighted``: the DARTS relaxation, ``sum_o softmax(alpha)_o * o(x)`` (Zhao et al. 2021,
  Eq. 1);
- ``single``: the one candidate last ``select``-ed, whoever picked it: a strategy sampling a
  path per batch (single-path one-shot, SPOS) or an ``Architecture`` scored inside the
  supernet with the shared weights.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from nasframe.base.errors import ConfigError, SpaceError
from nasframe.dsl.ops import Context

Mode = Literal["weighted", "single"]
MODES: tuple[Mode, ...] = ("weighted", "single")


class ChoiceNode(nn.Module):
    """One architecture decision in a supernet: its candidate ops and their alphas, evaluated
    as the softmax(alpha)-weighted sum (``weighted``) or as the one selected candidate
    (``single``)."""

    def __init__(self, name: str, labels: list[str], candidates: list[nn.Module],
                 alpha: nn.Parameter) -> None:
        super().__init__()
        self.name = name
        self.labels = list(labels)
        self.candidates = nn.ModuleList(candidates)
        self.alpha = alpha  # shared by the same node in every repeated block
        self.mode: Mode = "weighted"
        self.active = 0

    def set_mode(self, mode: Mode, active: int | str | None = None) -> None:
        if mode not in MODES:
            raise ConfigError(f"choice mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        if active is not None:
            self.select(active)

    def select(self, op: int | str) -> None:
        """Pick the candidate that ``single`` mode evaluates (index or label)."""
        if isinstance(op, str):
            if op not in self.labels:
                raise SpaceError(f"{self.name}: {op!r} is not a candidate ({self.labels})")
            op = self.labels.index(op)
        if not 0 <= int(op) < len(self.labels):
            raise SpaceError(f"{self.name}: index {op} out of range for {len(self.labels)} "
                             "candidates")
        self.active = int(op)

    def weights(self) -> Tensor:
        return torch.softmax(self.alpha, dim=-1)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        if self.mode != "weighted":
            return self.candidates[self.active](x, ctx)
        w = self.weights().to(x.dtype)
        out = None
        for k, (label, op) in enumerate(zip(self.labels, self.candidates)):
            if label == "zero":  # contributes nothing; its alpha still gets a gradient via softmax
                continue
            term = w[k] * op(x, ctx)
            out = term if out is None else out + term
        return out if out is not None else x * w.sum() * 0.0

    def extra_repr(self) -> str:
        return f"{self.name}: {self.labels}, mode={self.mode}"
