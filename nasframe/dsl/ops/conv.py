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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasframe.base.errors import NasframeError, SpaceError
from nasframe.dsl.ops.attention import check_heads, check_mask
from nasframe.dsl.ops.base import (
    Context,
    Operation,
    Residual,
    positive_int,
    register_op,
    zeros_at_padding,
)
from nasframe.dsl.ops.dropout import Dropout
from nasframe.dsl.ops.dropout import dropout as drop
from nasframe.dsl.ops.dynconv_fn import DynamicConvBlock, KernelSpec, convolve

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

    In training and scoring the whole block (input projection, GLU, kernels, convolution,
    output projection) runs as one autograd function, ``DynamicConvBlock``
    (``nasframe.dsl.ops.dynconv_fn``): it keeps its input and a seed for its dropout masks, never
    builds the (time, channels, kernel) window, and works in pieces (chunks of sentences, slices
    of time), so no recomputed tensor outgrows a sixteenth of the input (or a floor). It also
    applies its residual's dropout (``take_output_dropout``), so that mask is a seed too.
    """

    op_name = "dynamic_conv"

    def __init__(self, dim: int, kernel: int, heads: int, causal: bool, dropout: float) -> None:
        super().__init__(dim, kernel, causal)
        self.heads = heads
        self.kernel_proj = nn.Linear(dim, heads * kernel)
        self.weight_dropout = Dropout(dropout)  # its p; the mask comes from ``spec``
        self.output_dropout = 0.0  # the residual's, once it hands it over

    def take_output_dropout(self, p: float) -> bool:
        """Apply the residual's dropout ``p`` to the block's output here (see ``Residual``)."""
        self.output_dropout = p
        return True

    def extra_repr(self) -> str:
        return (f"kernel={self.kernel}, heads={self.heads}, causal={self.causal}, "
                f"output_dropout={self.output_dropout}")

    def kernels(self, u: Tensor) -> Tensor:
        """The kernels for the inputs ``u``: (batch, time, heads, kernel), each summing to one."""
        batch, time, _ = u.shape
        return self.kernel_proj(u).view(batch, time, self.heads, self.kernel).softmax(dim=-1)

    def spec(self, offset: int) -> KernelSpec:
        """The kernel settings, with a weight-dropout seed drawn from torch's default CPU
        generator in training (so seeding and the engine's replay reproduce the mask)."""
        p = self.weight_dropout.p if self.training else 0.0
        out_p = self.output_dropout if self.training else 0.0
        seed = int(torch.randint(0, 2**62, (1,)).item()) if p > 0 or out_p > 0 else None
        return KernelSpec(self.heads, self.kernel, offset, p, seed, out_p)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        padding = check_mask(self.op_name, ctx.padding_mask, x, "ctx.padding_mask")
        if ctx.state is None:
            offset = self.kernel - 1 if self.causal else self.kernel // 2
            return DynamicConvBlock.apply(
                x, None if ctx.padding_mask is None else padding,
                self.input_proj.weight, self.input_proj.bias,
                self.kernel_proj.weight, self.kernel_proj.bias,
                self.output_proj.weight, self.output_proj.bias, self.spec(offset))
        u = zeros_at_padding(F.glu(self.input_proj(x), dim=-1), padding)
        y = self.output_proj(self.convolve(self.with_neighbours(u, ctx), u))
        return drop(y, self.output_dropout, self.training)

    def convolve(self, seq: Tensor, u: Tensor) -> Tensor:
        return self.convolve_from(seq, u, 0)

    def convolve_from(self, src: Tensor, u: Tensor, offset: int) -> Tensor:
        """Output t = sum_j src[t + j - offset] * kernel_t[j] per head; src is zero outside."""
        return convolve(src, u, self.kernel_proj.weight, self.kernel_proj.bias,
                        self.spec(offset))


@register_op("conv", checks={"kernel": positive_int})
def conv(dim: int, *, causal: bool, dropout: float, kernel: int = 3) -> Operation:
    """Standard convolution block (GLU, dense Conv1d, Linear) with its residual and layer norm."""
    check_kernel("conv", kernel, causal)
    return Residual(dim, StandardConv(dim, kernel, causal), dropout)


@register_op("dynamic_conv", checks={"kernel": positive_int, "heads": positive_int})
def dynamic_conv(dim: int, *, causal: bool, dropout: float, kernel: int = 3,
                 heads: int = 8) -> Operation:
    """Dynamic convolution block (Wu et al., 2019) with its residual and layer norm."""
    check_kernel("dynamic_conv", kernel, causal)
    check_heads("dynamic_conv", dim, heads)
    return Residual(dim, DynamicConv(dim, kernel, heads, causal, dropout), dropout)
