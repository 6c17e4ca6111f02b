"""Convolution ops over time: a standard convolution and dynamic convolution (Wu et al., 2019).

Both use the block layout of Wu et al.'s "Pay Less Attention with Lightweight and Dynamic
Convolutions": ``Linear(dim, 2 dim) -> GLU -> convolution over time -> Linear(dim, dim)``,
inside the op's own residual and layer norm. Giving both the same block means that a search
choosing between them compares only the convolution itself: one static dense kernel shared by
all positions (``conv``), or a depthwise kernel predicted from each position's own input
(``dynamic_conv``).

The kernel at position t covers t-k+1..t when causal (decoder: left padding) and
t-k//2..t+k//2 otherwise (which needs an odd k). The GLU output is zeroed at padded positions
before the convolution, so a padded neighbour looks exactly like the zero padding beyond a
sequence's end.

Incremental decoding keeps, per op, the last k-1 convolution inputs (GLU outputs); a new
position needs nothing else, so each step costs O(k) whatever the length decoded so far.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from nasframe.errors import NasframeError, SpaceError
from nasframe.ops.attention import check_heads, check_mask
from nasframe.ops.base import Context, Operation, Residual, register_op, zeros_at_padding

__all__ = ["ConvBlock", "DynamicConv", "StandardConv", "check_kernel", "conv", "dynamic_conv"]


def check_kernel(op: str, kernel: int, causal: bool) -> None:
    """Raise SpaceError unless ``kernel`` is positive and, for a centred kernel, odd."""
    if not isinstance(kernel, int) or isinstance(kernel, bool) or kernel < 1:
        raise SpaceError(f"op {op!r}: kernel must be a positive integer, got {kernel!r}")
    if not causal and kernel % 2 == 0:
        raise SpaceError(
            f"op {op!r}: a non-causal kernel is centred on its position and must be odd, "
            f"got kernel {kernel}"
        )


class ConvBlock(nn.Module):
    """GLU input projection, a convolution over time (``convolve``), output projection."""

    op_name: str  # the registered name, for error messages

    def __init__(self, dim: int, kernel: int, causal: bool) -> None:
        super().__init__()
        self.kernel = kernel
        self.causal = causal
        self.input_proj = nn.Linear(dim, 2 * dim)
        self.output_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        padding = check_mask(self.op_name, ctx.padding_mask, x, "ctx.padding_mask")
        u = zeros_at_padding(F.glu(self.input_proj(x), dim=-1), padding)
        return self.output_proj(self.convolve(self.with_neighbours(u, ctx), u))

    def convolve(self, seq: Tensor, u: Tensor) -> Tensor:
        """Convolve; ``seq`` is ``u`` (batch, time, dim) extended by ``with_neighbours``."""
        raise NotImplementedError

    def with_neighbours(self, u: Tensor, ctx: Context) -> Tensor:
        """``u`` extended to (batch, time + kernel - 1, dim) with what the kernel sees beyond it.

        Output position t then reads ``seq[:, t : t + kernel]``. Outside incremental decoding
        that is zero padding; while decoding, the left side is the cached history.
        """
        if ctx.state is None:
            left = self.kernel - 1 if self.causal else self.kernel // 2
            return F.pad(u, (0, 0, left, self.kernel - 1 - left))
        if not self.causal:
            raise NasframeError(
                f"op {self.op_name!r}: incremental decoding needs a causal op "
                "(it was created with causal=False)"
            )
        cache = ctx.state.get(self)
        if cache is None:  # before the first position: the zero padding of the full sequence
            history = u.new_zeros(u.size(0), self.kernel - 1, u.size(2))
        else:
            history = cache["history"]
        seq = torch.cat([history, u], dim=1)
        ctx.state.set(self, {"history": seq[:, seq.size(1) - (self.kernel - 1):]})
        return seq


class StandardConv(ConvBlock):
    """A dense 1-D convolution: every output channel reads every input channel."""

    op_name = "conv"

    def __init__(self, dim: int, kernel: int, causal: bool) -> None:
        super().__init__(dim, kernel, causal)
        self.conv = nn.Conv1d(dim, dim, kernel)

    def convolve(self, seq: Tensor, u: Tensor) -> Tensor:
        return self.conv(seq.transpose(1, 2)).transpose(1, 2)


class DynamicConv(ConvBlock):
    """Dynamic convolution: a softmax-normalised kernel per position and head.

    The kernel for position t is predicted from the convolution input at t by
    ``kernel_proj``; the channels are split into ``heads`` groups, each convolved depthwise
    with its head's kernel. Weight dropout (DropConnect on the normalised kernel) regularises
    it, as in Wu et al.

    The kernel prediction and the convolution run as one autograd function
    (``_DynamicConvCore``) that never builds the (time, channels, kernel) window: it sums the
    kernel taps of shifted inputs in place, keeps for backward only its input and the dropout
    mask (1 byte per kernel weight), and recomputes the kernels in backward. Kept memory per
    candidate no longer grows with the kernel size beyond that mask; the transient peak holds
    a few (batch, time, heads, kernel) tensors, never a (.., channels, kernel) one.
    """

    op_name = "dynamic_conv"

    def __init__(self, dim: int, kernel: int, heads: int, causal: bool, dropout: float) -> None:
        super().__init__(dim, kernel, causal)
        self.heads = heads
        self.kernel_proj = nn.Linear(dim, heads * kernel)
        self.weight_dropout = nn.Dropout(dropout)

    def kernels(self, u: Tensor) -> Tensor:
        """The kernels for the inputs ``u``: (batch, time, heads, kernel), each summing to one."""
        batch, time, _ = u.shape
        return self.kernel_proj(u).view(batch, time, self.heads, self.kernel).softmax(dim=-1)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        padding = check_mask(self.op_name, ctx.padding_mask, x, "ctx.padding_mask")
        u = zeros_at_padding(F.glu(self.input_proj(x), dim=-1), padding)
        if ctx.state is None:  # the zero padding is implicit: no padded copy of u
            src, offset = u, (self.kernel - 1 if self.causal else self.kernel // 2)
        else:  # decoding: the cached history precedes u
            src, offset = self.with_neighbours(u, ctx), 0
        return self.output_proj(self.convolve_from(src, u, offset))

    def convolve(self, seq: Tensor, u: Tensor) -> Tensor:
        return self.convolve_from(seq, u, 0)

    def convolve_from(self, src: Tensor, u: Tensor, offset: int) -> Tensor:
        """Output t = sum_j src[t + j - offset] * kernel_t[j] per head; src is zero outside."""
        p = self.weight_dropout.p if self.weight_dropout.training else 0.0
        keep = None
        if p > 0:  # drawn as nn.Dropout would draw it, so the masks are today's
            shape = (*u.shape[:2], self.heads, self.kernel)
            keep = F.dropout(u.new_ones(shape), p) != 0
        return _DynamicConvCore.apply(src, u, self.kernel_proj.weight, self.kernel_proj.bias,
                                      keep, p, offset, self.heads)


def _kernel_probs(u: Tensor, weight: Tensor, bias: Tensor, heads: int) -> Tensor:
    """The softmax kernels (batch, time, heads, kernel), before weight dropout: logits in
    ``u``'s dtype, the softmax in at least float32 (``u`` is bf16 under autocast)."""
    batch, time, _ = u.shape
    logits = F.linear(u, weight.to(u.dtype), bias.to(u.dtype))
    return logits.view(batch, time, heads, -1).softmax(-1, dtype=_accumulate(u.dtype))


def _accumulate(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _dropped(probs: Tensor, keep: Tensor | None, p: float, inplace: bool) -> Tensor:
    """The kernels after weight dropout (``probs`` itself without a mask)."""
    if keep is None:
        return probs
    scale = keep.to(probs.dtype).div_(1 - p)
    return probs.mul_(scale) if inplace else probs * scale


def _taps(kernel: int, time: int, src_time: int, offset: int) -> list[tuple[int, int, int]]:
    """(tap j, first output t, end output t) for the outputs whose tap j lands inside src."""
    out = []
    for j in range(kernel):
        t0, t1 = max(0, offset - j), min(time, src_time + offset - j)
        if t0 < t1:
            out.append((j, t0, t1))
    return out


class _DynamicConvCore(torch.autograd.Function):
    """Kernel prediction + dynamic convolution; saves ``src``, ``u`` and the dropout mask.

    Computes in ``u``'s dtype with autocast off inside (explicit casts instead), so forward and
    backward agree whether or not autocast is on when backward runs.
    """

    @staticmethod
    def forward(fctx: Any, src: Tensor, u: Tensor, weight: Tensor, bias: Tensor,
                keep: Tensor | None, p: float, offset: int, heads: int) -> Tensor:
        with torch.autocast(u.device.type, enabled=False):
            return _DynamicConvCore._forward(fctx, src, u, weight, bias, keep, p, offset, heads)

    @staticmethod
    def _forward(fctx: Any, src: Tensor, u: Tensor, weight: Tensor, bias: Tensor,
                 keep: Tensor | None, p: float, offset: int, heads: int) -> Tensor:
        batch, time, dim = u.shape
        src = src.to(u.dtype)
        w = _dropped(_kernel_probs(u, weight, bias, heads), keep, p, inplace=True).to(u.dtype)
        s = src.view(batch, src.size(1), heads, dim // heads)
        out = u.new_zeros(batch, time, heads, dim // heads)
        for j, t0, t1 in _taps(w.size(-1), time, src.size(1), offset):
            out[:, t0:t1].addcmul_(s[:, t0 + j - offset:t1 + j - offset], w[:, t0:t1, :, j, None])
        fctx.save_for_backward(src, u, weight, bias, keep)
        fctx.p, fctx.offset, fctx.heads = p, offset, heads
        return out.view(batch, time, dim)

    @staticmethod
    @once_differentiable
    def backward(fctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        src, u, weight, bias, keep = fctx.saved_tensors
        with torch.autocast(u.device.type, enabled=False):
            return _DynamicConvCore._backward(fctx, grad, src, u, weight, bias, keep)

    @staticmethod
    def _backward(fctx: Any, grad: Tensor, src: Tensor, u: Tensor, weight: Tensor,
                  bias: Tensor, keep: Tensor | None) -> tuple[Tensor | None, ...]:
        batch, time, dim = u.shape
        heads, offset, p = fctx.heads, fctx.offset, fctx.p
        probs = _kernel_probs(u, weight, bias, heads)  # recomputed: cheaper than keeping it
        s = src.to(u.dtype).view(batch, src.size(1), heads, dim // heads)
        g = grad.to(u.dtype).reshape(batch, time, heads, dim // heads)
        w = _dropped(probs, keep, p, inplace=False).to(u.dtype)
        g_src = torch.zeros_like(s)
        g_w = torch.zeros_like(probs)
        for j, t0, t1 in _taps(probs.size(-1), time, src.size(1), offset):
            shifted = slice(t0 + j - offset, t1 + j - offset)
            g_src[:, shifted].addcmul_(g[:, t0:t1], w[:, t0:t1, :, j, None])
            g_w[:, t0:t1, :, j] = torch.linalg.vecdot(g[:, t0:t1], s[:, shifted])
        del w  # the dropped kernels are not needed past the taps
        if keep is not None:  # through the dropout, in place
            g_w.masked_fill_(keep.logical_not(), 0.0).div_(1 - p)
        # softmax backward in place: probs * (g_w - <g_w, probs>)
        dot = (g_w.unsqueeze(-2) @ probs.unsqueeze(-1)).squeeze(-1)
        g_logits = g_w.sub_(dot).mul_(probs).view(batch, time, -1).to(u.dtype)
        g_u = g_logits @ weight.to(u.dtype)
        g_weight = g_logits.reshape(-1, g_logits.size(-1)).t() @ u.reshape(-1, dim)
        g_bias = g_logits.sum(dim=(0, 1))
        return (g_src.view(src.shape).to(src.dtype), g_u, g_weight.to(weight.dtype),
                g_bias.to(bias.dtype), None, None, None, None)


@register_op("conv")
def conv(dim: int, *, causal: bool, dropout: float, kernel: int = 3) -> Operation:
    """Standard convolution block (GLU, dense Conv1d, Linear) with its residual and layer norm."""
    check_kernel("conv", kernel, causal)
    return Residual(dim, StandardConv(dim, kernel, causal), dropout)


@register_op("dynamic_conv")
def dynamic_conv(dim: int, *, causal: bool, dropout: float, kernel: int = 3,
                 heads: int = 8) -> Operation:
    """Dynamic convolution block (Wu et al., 2019) with its residual and layer norm."""
    check_kernel("dynamic_conv", kernel, causal)
    check_heads("dynamic_conv", dim, heads)
    return Residual(dim, DynamicConv(dim, kernel, heads, causal, dropout), dropout)
