"""Position-wise feed-forward ops: the Transformer FFN and its gated variant GLU.

Both act on every position independently, so they are causal by construction, ignore the
padding mask (a padded position only affects its own output) and need no state for
incremental decoding. They differ only in the non-linearity, and share the same hidden width
``expansion * dim`` and the same dropout after it, so that a search choosing between them
compares gating with ReLU and nothing else.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from nasframe.base.errors import SpaceError
from nasframe.dsl.ops.base import Context, Operation, Residual, positive_int, register_op
from nasframe.dsl.ops.dropout import Dropout, keep_mask, keep_scale, masked_scale

__all__ = ["FeedForward", "GatedFeedForward", "activate_drop_project", "ffn", "glu"]

Activation = Literal["relu", "glu"]


def _hidden_width(op: str, dim: int, expansion: int) -> int:
    if not isinstance(expansion, int) or isinstance(expansion, bool) or expansion < 1:
        raise SpaceError(f"op {op!r}: expansion must be a positive integer, got {expansion!r}")
    return expansion * dim


class FeedForward(nn.Module):
    """``Linear(dim, h) -> ReLU -> dropout -> Linear(h, dim)`` (Vaswani et al., 2017)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.inner = nn.Linear(dim, hidden)
        self.dropout = Dropout(dropout)
        self.outer = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        return activate_drop_project(self.inner(x), "relu", self.dropout, self.outer)


class GatedFeedForward(nn.Module):
    """``Linear(dim, 2h) -> GLU -> dropout -> Linear(h, dim)`` (Dauphin et al., 2017).

    GLU splits the projection into a value half ``a`` and a gate half ``b`` and returns
    ``a * sigmoid(b)``: the gate's linear path keeps gradients from vanishing.
    """

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.inner = nn.Linear(dim, 2 * hidden)
        self.dropout = Dropout(dropout)
        self.outer = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        return activate_drop_project(self.inner(x), "glu", self.dropout, self.outer)


def _activate(h: Tensor, kind: Activation) -> Tensor:
    return F.relu(h) if kind == "relu" else F.glu(h, dim=-1)


def _plain_linear(m: nn.Module) -> bool:
    """Whether calling ``m`` is ``F.linear`` with its own weight and bias: an ``nn.Linear``
    (not a subclass with its own forward) with no hooks of its own."""
    return type(m) is nn.Linear and not (m._forward_hooks or m._forward_pre_hooks)


def activate_drop_project(h: Tensor, kind: Activation, dropout: Dropout,
                          outer: nn.Linear) -> Tensor:
    """``outer(dropout(act(h)))``. In training, through ``_ActivateDropProject``: the dropped
    activation, the largest tensor ordinary autograd keeps here (the ``outer`` layer's input,
    ``hidden`` wide), is not kept but recomputed in backward from the mask."""
    if not dropout.draws_mask() or not _plain_linear(outer):
        return outer(dropout(_activate(h, kind)))
    p = dropout.p
    width = h.size(-1) if kind == "relu" else h.size(-1) // 2
    keep = keep_mask((*h.shape[:-1], width), p, h.device)
    w, b = outer.weight, outer.bias
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (h, w, b)):
        return _ActivateDropProject.apply(h, w, b, keep, keep_scale(p), kind)
    return F.linear(masked_scale(_activate(h, kind), keep, keep_scale(p)), w, b)  # no graph


class _ActivateDropProject(torch.autograd.Function):
    """``F.linear(masked_scale(act(h), keep, scale), w, b)`` keeping the ReLU's output (which
    ordinary autograd keeps for the ReLU anyway) or the GLU's input (likewise), the ``bool``
    mask and ``w``. Backward recomputes the dropped activation (two passes, a third for the GLU,
    whose output is dropped in place: one hidden-wide temporary), then calls the products and
    derivative kernels ordinary autograd calls, so the gradients are autograd's to the bit
    (tested) for the 2-D and contiguous 3-D inputs ``F.linear`` folds into one ``addmm``.
    Under autocast the product runs in the autocast dtype, as ``F.linear`` would. One cost:
    this one node holds the incoming gradient and the mask until the activation's backward,
    which autograd's separate nodes had freed by then (the GLU's peak: 24.2 against 22.2
    inputs at d=240, 64x64)."""

    @staticmethod
    def forward(ctx: Any, h: Tensor, w: Tensor, b: Tensor | None, keep: Tensor, scale: float,
                kind: Activation) -> Tensor:
        a = _activate(h, kind)
        out = F.linear(masked_scale(a, keep, scale), w, b)
        ctx.save_for_backward(a if kind == "relu" else h, keep, w)
        ctx.scale, ctx.kind, ctx.dtype = scale, kind, out.dtype
        ctx.has_bias = b is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        saved, keep, w = ctx.saved_tensors
        dtype, kind = ctx.dtype, ctx.kind
        g2 = g.to(dtype).reshape(-1, g.size(-1))
        g_h = g_w = g_b = None
        if ctx.needs_input_grad[1]:
            if kind == "relu":  # the saved output itself: not in place
                dropped = masked_scale(saved, keep, ctx.scale).to(dtype)
            else:  # a fresh GLU output: dropped in place, one hidden-wide temporary
                dropped = masked_scale(F.glu(saved, dim=-1), keep, ctx.scale, inplace=True)
                dropped = dropped.to(dtype)
            g_w = g2.t().mm(dropped.reshape(-1, dropped.size(-1))).to(w.dtype)
            del dropped
        if ctx.has_bias and ctx.needs_input_grad[2]:
            g_b = g2.sum(0).to(w.dtype)
        if ctx.needs_input_grad[0]:
            g_a = g2.mm(w.to(dtype)).view(*keep.shape).to(saved.dtype)
            masked_scale(g_a, keep, ctx.scale, inplace=True)
            if kind == "relu":
                g_h = torch.ops.aten.threshold_backward(g_a, saved, 0)
            else:
                g_h = torch.ops.aten.glu_backward(g_a, saved, -1)
        return g_h, g_w, g_b, None, None, None


@register_op("ffn", checks={"expansion": positive_int})
def ffn(dim: int, *, causal: bool, dropout: float, expansion: int = 4) -> Operation:
    """Transformer feed-forward block with its own residual and layer norm."""
    hidden = _hidden_width("ffn", dim, expansion)
    return Residual(dim, FeedForward(dim, hidden, dropout), dropout)


@register_op("glu", checks={"expansion": positive_int})
def glu(dim: int, *, causal: bool, dropout: float, expansion: int = 4) -> Operation:
    """Gated-linear-unit feed-forward block with its own residual and layer norm."""
    hidden = _hidden_width("glu", dim, expansion)
    return Residual(dim, GatedFeedForward(dim, hidden, dropout), dropout)
