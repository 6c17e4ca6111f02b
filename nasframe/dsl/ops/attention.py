"""Multi-head attention ops: self attention and (decoder) cross attention.

Attention is written with plain matrix products rather than a fused kernel so that float64
works everywhere, masks behave the same on every device, and a query whose keys are all masked
(a padded query under causal masking, or a sentence whose memory is all padding) yields zeros
instead of NaN, which would otherwise poison the gradients of the whole batch.

Padding never leaks: keys and values are projected from inputs whose padded positions are
zeroed first, and the scores of padded keys are masked, so whatever a padded position holds
cannot reach a non-padded output.

Incremental decoding (``ctx.state`` given, ``x`` = the newest positions): self attention
appends the new keys and values to its cache and attends over the whole cache, costing
O(current length) per step; cross attention projects the encoder output once, on the first
step, and reuses it. Every cached tensor has the batch as dimension 0, so
``IncrementalState.reorder`` follows the beams. In that mode ``ctx.padding_mask``, if given,
covers the positions in ``x`` only.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from nasframe.base.errors import NasframeError, SpaceError
from nasframe.dsl.ops.base import (
    Context,
    Operation,
    Residual,
    positive_int,
    register_op,
    zeros_at_padding,
)
from nasframe.dsl.ops.dropout import Dropout, keep_mask, keep_scale, masked_scale

__all__ = [
    "CrossAttention",
    "MultiHeadAttention",
    "SelfAttention",
    "check_heads",
    "check_mask",
    "cross_attention",
    "self_attention",
    "weigh_values",
]


def check_heads(op: str, dim: int, heads: int) -> None:
    """Raise SpaceError unless ``heads`` is a positive integer dividing ``dim``."""
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        raise SpaceError(f"op {op!r}: heads must be a positive integer, got {heads!r}")
    if dim % heads != 0:
        raise SpaceError(f"op {op!r}: dim {dim} is not divisible by heads {heads}")


def check_mask(op: str, mask: Tensor | None, x: Tensor, what: str) -> Tensor:
    """Return ``mask`` as (batch, time) bool, all False when absent; fail clearly on a mismatch."""
    batch, time = x.shape[:2]
    if mask is None:
        return torch.zeros(batch, time, dtype=torch.bool, device=x.device)
    if mask.shape != (batch, time):
        raise NasframeError(
            f"op {op!r}: {what} has shape {tuple(mask.shape)} but its input has (batch, time) = "
            f"{(batch, time)}; in incremental decoding the padding mask covers only the new "
            "positions"
        )
    return mask.bool()


class MultiHeadAttention(nn.Module):
    """What self and cross attention share: head splitting, masked softmax, output projection."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.attention_dropout = Dropout(dropout)  # a no-op in eval mode
        self.out_proj = nn.Linear(dim, dim)

    def split_heads(self, t: Tensor) -> Tensor:
        """(batch, time, dim) -> (batch, heads, time, head_dim)."""
        batch, time, _ = t.shape
        return t.view(batch, time, self.heads, self.head_dim).transpose(1, 2)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, masked: Tensor) -> Tensor:
        """Scaled dot-product attention over heads; ``masked`` broadcasts to the score shape.

        Masked scores get the dtype's most negative finite value rather than -inf (no NaN in
        a fully masked row), so their probabilities underflow to exactly zero in any row with
        a visible key; a query without one gets zeros, set on its (small) context row rather
        than on its probabilities. The scale falls on ``q`` and the mask is written in place:
        every pass over the (batch, heads, time, time) scores is memory-bound, and these two
        save two of them (and one of the backward's) per call.
        """
        scores = (q * (1.0 / math.sqrt(self.head_dim))) @ k.transpose(-2, -1)
        scores.masked_fill_(masked, torch.finfo(scores.dtype).min)
        context = self._weigh(scores, v)  # (batch, heads, q_time, head_dim)
        context = context.masked_fill(masked.all(dim=-1, keepdim=True), 0.0)
        batch, _, time, _ = context.shape
        return self.out_proj(context.transpose(1, 2).reshape(batch, time, -1))

    def _weigh(self, scores: Tensor, v: Tensor) -> Tensor:
        """``dropout(softmax(scores)) @ v``; in training, through ``weigh_values``."""
        if not self.attention_dropout.draws_mask():
            return self.attention_dropout(scores.softmax(dim=-1)) @ v
        p = self.attention_dropout.p
        return weigh_values(scores, v, keep_mask(scores.shape, p, scores.device), keep_scale(p))


def weigh_values(scores: Tensor, v: Tensor, keep: Tensor, scale: float) -> Tensor:
    """``masked_scale(softmax(scores), keep, scale) @ v``: attention's dropout on its
    probabilities and the weighted sum of the values, keeping for backward the probabilities,
    the ``bool`` mask and ``v`` only (``_WeighValues``)."""
    if torch.is_grad_enabled() and (scores.requires_grad or v.requires_grad):
        return _WeighValues.apply(scores, v, keep, scale)
    return masked_scale(scores.softmax(dim=-1), keep, scale) @ v  # the same ops, no graph


class _WeighValues(torch.autograd.Function):
    """Ordinary autograd keeps both the probabilities (for the softmax) and the dropped
    probabilities (for ``@ v``): two (batch, heads, time, time) tensors, the largest an
    attention op keeps. This keeps the first and the mask, and redraws nothing: backward
    recomputes the dropped probabilities with one pass, and otherwise runs the very products
    autograd would, so its gradients are autograd's to the bit."""

    @staticmethod
    def forward(ctx: Any, scores: Tensor, v: Tensor, keep: Tensor, scale: float) -> Tensor:
        v = v.contiguous()  # a view of the fused projection would keep all of it alive
        probs = scores.softmax(dim=-1)
        out = masked_scale(probs, keep, scale) @ v  # under autocast: the autocast dtype
        ctx.save_for_backward(probs, keep, v)
        ctx.scale, ctx.dtype, ctx.scores_dtype = scale, out.dtype, scores.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        probs, keep, v = ctx.saved_tensors
        g = g.to(ctx.dtype)
        g_scores = g_v = None
        if ctx.needs_input_grad[1]:
            dropped = masked_scale(probs, keep, ctx.scale).to(ctx.dtype)
            g_v = (dropped.transpose(-2, -1) @ g).to(v.dtype)
            del dropped
        if ctx.needs_input_grad[0]:
            g_p = (g @ v.to(ctx.dtype).transpose(-2, -1)).to(probs.dtype)
            masked_scale(g_p, keep, ctx.scale, inplace=True)
            g_scores = torch._softmax_backward_data(g_p, probs, -1, probs.dtype)
            g_scores = g_scores.to(ctx.scores_dtype)
        return g_scores, g_v, None, None


class SelfAttention(MultiHeadAttention):
    """Multi-head self attention with padding and (optionally) causal masks."""

    def __init__(self, dim: int, heads: int, dropout: float, causal: bool) -> None:
        super().__init__(dim, heads, dropout)
        self.causal = causal
        self.qkv_proj = nn.Linear(dim, 3 * dim)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        padding = check_mask("self_attention", ctx.padding_mask, x, "ctx.padding_mask")
        q, k, v = (self.split_heads(t)
                   for t in self.qkv_proj(zeros_at_padding(x, padding)).chunk(3, dim=-1))
        past = 0
        if ctx.state is not None:
            if not self.causal:
                raise NasframeError(
                    "op 'self_attention': incremental decoding needs a causal op "
                    "(it was created with causal=False)"
                )
            cache = ctx.state.get(self)
            if cache is not None:
                past = cache["key"].size(2)
                k = torch.cat([cache["key"], k], dim=2)
                v = torch.cat([cache["value"], v], dim=2)
                padding = torch.cat([cache["padding"], padding], dim=1)
            ctx.state.set(self, {"key": k, "value": v, "padding": padding})
        masked = padding[:, None, None, :]  # (batch, 1, 1, key_time)
        if self.causal:
            # Query i sits at absolute position past + i and may see keys 0..past + i.
            query_pos = torch.arange(q.size(2), device=x.device).unsqueeze(1) + past
            key_pos = torch.arange(k.size(2), device=x.device).unsqueeze(0)
            masked = masked | (key_pos > query_pos)
        return self.attend(q, k, v, masked)


class CrossAttention(MultiHeadAttention):
    """Queries from the decoder input, keys and values from the encoder output (ctx.memory)."""

    def __init__(self, dim: int, memory_dim: int, heads: int, dropout: float) -> None:
        super().__init__(dim, heads, dropout)
        self.q_proj = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(memory_dim, 2 * dim)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        cache = ctx.state.get(self) if ctx.state is not None else None
        if cache is None:
            cache = self._project_memory(x, ctx)
            if ctx.state is not None:
                ctx.state.set(self, cache)
        q = self.split_heads(self.q_proj(x))
        masked = cache["padding"][:, None, None, :]
        return self.attend(q, cache["key"], cache["value"], masked)

    def _project_memory(self, x: Tensor, ctx: Context) -> dict[str, Tensor]:
        memory = ctx.memory
        if memory is None:
            raise NasframeError(
                "op 'cross_attention' needs the encoder output in ctx.memory, but it is None "
                "(cross attention only works in a decoder)"
            )
        if memory.size(0) != x.size(0):
            raise NasframeError(
                f"op 'cross_attention': ctx.memory has batch size {memory.size(0)} but the "
                f"input has {x.size(0)}"
            )
        padding = check_mask("cross_attention", ctx.memory_mask, memory, "ctx.memory_mask")
        k, v = self.kv_proj(zeros_at_padding(memory, padding)).chunk(2, dim=-1)
        return {"key": self.split_heads(k), "value": self.split_heads(v), "padding": padding}


@register_op("self_attention", checks={"heads": positive_int})
def self_attention(dim: int, *, causal: bool, dropout: float, heads: int = 8) -> Operation:
    """Multi-head self attention (causal in the decoder) with its own residual and layer norm."""
    check_heads("self_attention", dim, heads)
    return Residual(dim, SelfAttention(dim, heads, dropout, causal), dropout)


@register_op("cross_attention", checks={"heads": positive_int})
def cross_attention(dim: int, *, causal: bool, dropout: float, memory_dim: int | None = None,
                    heads: int = 8) -> Operation:
    """Attention from the decoder to the encoder output, with its own residual and layer norm.

    ``memory_dim`` is the encoder output's width (default ``dim``). ``causal`` is accepted and
    has no effect: each query attends only to the memory, never to other decoder positions.
    """
    check_heads("cross_attention", dim, heads)
    memory_dim = dim if memory_dim is None else memory_dim
    return Residual(dim, CrossAttention(dim, memory_dim, heads, dropout), dropout)
