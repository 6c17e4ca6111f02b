"""The dynamic convolution block as one autograd function that keeps almost nothing.

``DynamicConv`` computes ``Linear(dim, 2 dim) -> GLU -> dynamic convolution -> Linear(dim, dim)``
(Wu et al., 2019). Written with ordinary autograd it keeps the GLU input (2x its input), the
GLU output (1x), the convolution output (1x) and, for the kernels, (batch, time, heads, kernel)
tensors whose size grows with the kernel: 5.2x the input per tensor at width 48 with 8 heads and
kernel 31. ``DynamicConvBlock`` keeps only its input ``x`` (which the caller holds anyway), the
convolution output and one int64 seed, and recomputes the rest in backward:

- the GLU is recomputed from ``x`` (one matmul);
- the weight-dropout mask is redrawn from its seed, not stored;
- the kernels are built for a slice of time at a time (``time_chunk``), so no (.., heads,
  kernel) tensor is larger than the block's input (or 1 MiB, where that is larger), in forward
  or backward;
- the convolution sums the kernel taps of shifted inputs in place and never builds the
  (time, channels, kernel) window.

Under autocast the block computes in the autocast dtype (explicit casts, autocast off inside),
with the kernel softmax in at least float32, so backward agrees with forward whether or not
autocast is on when backward runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from nasframe.ops.dropout import keep_mask, keep_scale

__all__ = ["DynamicConvBlock", "KernelSpec", "convolve", "time_chunk", "weight_keep"]


@dataclass(frozen=True)
class KernelSpec:
    """How the kernels are made: ``heads`` groups, ``kernel`` taps, output t reading
    ``src[t + j - offset]`` at tap j, weight dropout ``p`` drawn from ``seed`` (None: no
    dropout)."""

    heads: int
    kernel: int
    offset: int
    p: float = 0.0
    seed: int | None = None


# Slices are never made smaller than this many kernel weights (1 MiB in float32): below it
# the Python loop over slices and taps costs more time than the memory it saves.
MIN_SLICE = 1 << 18
_SHORT_SOFTMAX = 24  # below this kernel size the CPU softmax is computed by hand


def time_chunk(time: int, dim: int, spec: KernelSpec, batch: int = 1) -> int:
    """Positions per slice, so that a (batch, slice, heads, kernel) tensor is at most the size
    of the (batch, time, dim) input, or ``MIN_SLICE`` weights if that is larger."""
    per_position = batch * spec.heads * spec.kernel
    budget = max(batch * time * dim, MIN_SLICE)
    return min(time, max(1, budget // per_position))


def _slices(time: int, chunk: int) -> list[tuple[int, int, int]]:
    return [(k, t0, min(time, t0 + chunk)) for k, t0 in enumerate(range(0, time, chunk))]


def weight_keep(spec: KernelSpec, batch: int, t0: int, t1: int, index: int,
                device: torch.device) -> Tensor | None:
    """The weight-dropout keep mask of slice ``index`` (positions t0..t1), redrawn from the
    spec's seed: the same in forward and backward, never stored."""
    if spec.seed is None or spec.p == 0.0:
        return None
    generator = torch.Generator(device=device).manual_seed(spec.seed + index)
    return keep_mask((batch, t1 - t0, spec.heads, spec.kernel), spec.p, device, generator)


def _kernels(u: Tensor, weight: Tensor, bias: Tensor, spec: KernelSpec) -> Tensor:
    """Softmax kernels (batch, time, heads, kernel) for the inputs ``u``, before dropout:
    logits in ``u``'s dtype, the softmax in at least float32."""
    batch, time, _ = u.shape
    logits = F.linear(u, weight.to(u.dtype), bias.to(u.dtype))
    acc = torch.promote_types(u.dtype, torch.float32)
    logits = logits.view(batch, time, spec.heads, spec.kernel)
    if u.device.type == "cpu" and spec.kernel < _SHORT_SOFTMAX:
        # torch's CPU softmax over a short last dimension is 4-5x slower than these three
        # vectorised passes (kernel 3: 144 against 37 us on 16x24x8 rows, one thread)
        x = logits.to(acc)
        e = (x - x.amax(-1, keepdim=True)).exp_()
        return e / e.sum(-1, keepdim=True)
    return logits.softmax(-1, dtype=acc)


def _slice_kernels(u: Tensor, weight: Tensor, bias: Tensor, spec: KernelSpec, index: int,
                   t0: int, t1: int) -> tuple[Tensor, Tensor | None, Tensor]:
    """For slice ``index`` (positions t0..t1): the softmax kernels, the weight-dropout keep
    mask (None without dropout) and the kernels after dropout, in ``u``'s dtype."""
    probs = _kernels(u[:, t0:t1], weight, bias, spec)
    keep = weight_keep(spec, u.size(0), t0, t1, index, u.device)
    w = (probs * keep).mul_(keep_scale(spec.p)) if keep is not None else probs
    return probs, keep, w.to(u.dtype)


def _taps(spec: KernelSpec, t0: int, t1: int, src_time: int) -> list[tuple[int, int, int]]:
    """(tap j, first output t, end output t) among outputs t0..t1 whose tap j is inside src."""
    out = []
    for j in range(spec.kernel):
        a, b = max(t0, spec.offset - j), min(t1, src_time + spec.offset - j)
        if a < b:
            out.append((j, a, b))
    return out


def convolve(src: Tensor, u: Tensor, weight: Tensor, bias: Tensor, spec: KernelSpec) -> Tensor:
    """Output t = sum_j src[t + j - offset] * kernel_t[j] per head, with the kernels predicted
    from ``u`` (batch, time, dim) and ``src`` zero outside its length. Plain tensor ops (in
    place on fresh tensors), so autograd can also differentiate it; ``DynamicConvBlock`` is the
    memory-saving way to."""
    batch, time, dim = u.shape
    heads = spec.heads
    s = src.to(u.dtype).reshape(batch, src.size(1), heads, dim // heads)
    out = u.new_zeros(batch, time, heads, dim // heads)
    for index, t0, t1 in _slices(time, time_chunk(time, dim, spec, batch)):
        w = _slice_kernels(u, weight, bias, spec, index, t0, t1)[2]
        for j, a, b in _taps(spec, t0, t1, s.size(1)):
            out[:, a:b].addcmul_(s[:, a + j - spec.offset:b + j - spec.offset],
                                 w[:, a - t0:b - t0, :, j, None])
    return out.view(batch, time, dim)


def _convolve_backward(g: Tensor, u: Tensor, weight: Tensor, bias: Tensor, spec: KernelSpec,
                       weights: bool = True) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Gradients of ``convolve(u, u, ...)`` for the output gradient ``g``: to u (as the source
    and as the kernels' input), and (with ``weights``) to the kernel projection's weight and
    bias."""
    batch, time, dim = u.shape
    heads = spec.heads
    s = u.view(batch, time, heads, dim // heads)
    gv = g.view(batch, time, heads, dim // heads)
    g_s = torch.zeros_like(s)
    g_weight = torch.zeros(weight.shape, dtype=u.dtype, device=u.device)
    g_bias = torch.zeros(bias.shape, dtype=u.dtype, device=u.device)
    w_cast = weight.to(u.dtype)
    for index, t0, t1 in _slices(time, time_chunk(time, dim, spec, batch)):
        probs, keep, w = _slice_kernels(u, weight, bias, spec, index, t0, t1)
        g_w = torch.zeros_like(probs)
        for j, a, b in _taps(spec, t0, t1, time):
            shifted = slice(a + j - spec.offset, b + j - spec.offset)
            g_s[:, shifted].addcmul_(gv[:, a:b], w[:, a - t0:b - t0, :, j, None])
            g_w[:, a - t0:b - t0, :, j] = torch.linalg.vecdot(gv[:, a:b], s[:, shifted])
        del w
        if keep is not None:  # through the dropout, in place
            g_w.masked_fill_(keep.logical_not(), 0.0).mul_(keep_scale(spec.p))
        # softmax backward in place: probs * (g_w - <g_w, probs>)
        dot = (g_w.unsqueeze(-2) @ probs.unsqueeze(-1)).squeeze(-1)
        g_logits = g_w.sub_(dot).mul_(probs).view(batch, t1 - t0, -1).to(u.dtype)
        del probs
        g_s[:, t0:t1].view(batch, t1 - t0, dim).add_(g_logits @ w_cast)
        if weights:
            g_weight += g_logits.reshape(-1, g_logits.size(-1)).t() @ u[:, t0:t1].reshape(-1, dim)
            g_bias += g_logits.sum(dim=(0, 1))
    return g_s.view(batch, time, dim), *((g_weight, g_bias) if weights else (None, None))


def _glu_input(x: Tensor, w_in: Tensor, b_in: Tensor, pad: Tensor | None) -> tuple[Tensor, Tensor]:
    """(h, u): the input projection and its GLU, zeroed at padded positions."""
    h = F.linear(x, w_in.to(x.dtype), b_in.to(x.dtype))
    u = F.glu(h, dim=-1)
    if pad is not None:
        u.masked_fill_(pad.unsqueeze(-1), 0.0)
    return h, u


def _compute_dtype(x: Tensor) -> torch.dtype:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


class DynamicConvBlock(torch.autograd.Function):
    """``output_proj(convolve(u, u)) with u = GLU(input_proj(x))`` zeroed at padding; keeps
    ``x``, the convolution output and the seed (see the module docstring)."""

    @staticmethod
    def forward(fctx: Any, x: Tensor, pad: Tensor | None, w_in: Tensor, b_in: Tensor,
                w_k: Tensor, b_k: Tensor, w_out: Tensor, b_out: Tensor,
                spec: KernelSpec) -> Tensor:
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            xc = x.to(dtype)
            _, u = _glu_input(xc, w_in, b_in, pad)
            c = convolve(u, u, w_k, b_k, spec)
            del u
            y = F.linear(c, w_out.to(dtype), b_out.to(dtype))
        fctx.save_for_backward(x, pad, w_in, b_in, w_k, b_k, w_out, b_out, c)
        fctx.spec, fctx.dtype = spec, dtype
        return y

    @staticmethod
    @once_differentiable
    def backward(fctx: Any, g_y: Tensor) -> tuple[Tensor | None, ...]:
        x, pad, w_in, b_in, w_k, b_k, w_out, b_out, c = fctx.saved_tensors
        dtype, spec = fctx.dtype, fctx.spec
        with torch.autocast(x.device.type, enabled=False):
            g_y = g_y.to(dtype)
            dim = c.size(-1)
            weights = any(fctx.needs_input_grad[2:8])  # frozen in an alpha step: skipped
            g_w_out = g_y.reshape(-1, dim).t() @ c.reshape(-1, dim) if weights else None
            g_b_out = g_y.sum(dim=(0, 1)) if weights else None
            g_c = g_y @ w_out.to(dtype)
            del c
            xc = x.to(dtype)
            h, u = _glu_input(xc, w_in, b_in, pad)
            g_u, g_w_k, g_b_k = _convolve_backward(g_c, u, w_k, b_k, spec, weights)
            del g_c, u
            if pad is not None:
                g_u.masked_fill_(pad.unsqueeze(-1), 0.0)
            # GLU backward in h's storage, u = a * s with s = sigmoid(b):
            # g_a = g_u * s and g_b = a * g_u * s * (1 - s)
            a, b = h.chunk(2, dim=-1)
            b.sigmoid_()
            a.mul_(g_u).mul_(b)  # a * g_u * s
            g_u.mul_(b)  # g_a
            b.mul_(a).neg_().add_(a)  # a * g_u * s - a * g_u * s * s
            a.copy_(g_u)
            del g_u
            g_h = h
            g_x = g_h @ w_in.to(dtype) if fctx.needs_input_grad[0] else None
            if not weights:
                return g_x, None, None, None, None, None, None, None, None
            g_w_in = g_h.reshape(-1, 2 * dim).t() @ xc.reshape(-1, dim)
            g_b_in = g_h.sum(dim=(0, 1))
            grads = (g_w_in, g_b_in, g_w_k, g_b_k, g_w_out, g_b_out)
            params = (w_in, b_in, w_k, b_k, w_out, b_out)
        return (None if g_x is None else g_x.to(x.dtype), None,
                *(g.to(p.dtype) for g, p in zip(grads, params)), None)
