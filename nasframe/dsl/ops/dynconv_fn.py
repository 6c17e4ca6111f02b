"""The dynamic convolution block as one autograd function that keeps almost nothing.

``DynamicConv`` computes ``Linear(dim, 2 dim) -> GLU -> dynamic convolution -> Linear(dim, dim)``
(Wu et al., 2019), followed by its residual's dropout. Written with ordinary autograd it keeps
the GLU input (2x its input), the GLU output (1x), the convolution output (1x), the dropout
mask and, for the kernels, (batch, time, heads, kernel) tensors whose size grows with the
kernel: 5.2x the input per tensor at width 48 with 8 heads and kernel 31.
``DynamicConvBlock`` keeps only its input ``x`` (which the caller holds anyway) and one int64
seed, and recomputes the rest in backward:

- the work is split into pieces (``layout``): chunks of sentences, each cut into slices of
  time, so the GLU and convolution output of a chunk and the kernels of a slice are never
  larger than a sixteenth of the input (``PIECE_FRACTION``), or than a floor (``MIN_CHUNK``,
  ``MIN_SLICE``) where that is larger, in forward or backward;
- the GLU and the convolution are recomputed chunk by chunk (the convolution output only
  serves the output projection's weight gradient, so an alpha step skips it), and the input
  gradient is written chunk by chunk into one tensor; an input under the chunk floor (one
  chunk, at most 256 KiB) keeps its convolution output instead, which saves the recomputation
  where memory does not count;
- the weight-dropout mask of each slice and the output-dropout mask of each chunk are
  redrawn from the seed, never stored;
- the convolution sums the kernel taps of shifted inputs in place and never builds the
  (time, channels, kernel) window; a long kernel on a short slice runs as one matmul with a
  banded matrix instead (``dynconv_band``, at most 3x the slice's kernels).

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

from nasframe.base.runtime import compute_dtype
from nasframe.dsl.ops.dropout import keep_mask, keep_scale, masked_scale
from nasframe.dsl.ops.dynconv_band import band_backward, band_forward, use_band

__all__ = ["DynamicConvBlock", "KernelSpec", "Chunk", "block_masks", "convolve", "layout",
           "output_keep", "weight_keep"]


@dataclass(frozen=True)
class KernelSpec:
    """How the kernels are made: ``heads`` groups, ``kernel`` taps, output t reading
    ``src[t + j - offset]`` at tap j, weight dropout ``p``; ``out_p`` is the dropout on the
    block's output (its residual's, which the block applies so that its mask is a seed too).
    Both masks are drawn from ``seed`` (None: no dropout)."""

    heads: int
    kernel: int
    offset: int
    p: float = 0.0
    seed: int | None = None
    out_p: float = 0.0


# Pieces are never made smaller than these (in elements): below them the Python loop over
# pieces and taps costs more time than the memory it saves. A chunk's (rows, time, dim)
# tensors: 2^16 (256 KiB in float32); a slice's (rows, slice, heads, kernel) kernels: 2^18
# (1 MiB), as kernel 31 at width 24 ran 1.3x slower with two slices than with one.
MIN_CHUNK = 1 << 16
MIN_SLICE = 1 << 18
# Above those floors, chunks and slices are at most this fraction of the input.
PIECE_FRACTION = 16
_OUTPUT_STREAM = 1 << 62  # output-dropout seeds: spec.seed (< 2^62) + this + chunk number
_SHORT_SOFTMAX = 24  # below this kernel size the CPU softmax is computed by hand


@dataclass(frozen=True)
class Chunk:
    """Chunk ``number``: sentences ``r0:r1`` (its output-dropout mask), cut into time slices
    ``(index, t0, t1)``; ``index`` numbers the slices of the whole layout (their
    weight-dropout masks)."""

    number: int
    r0: int
    r1: int
    slices: tuple[tuple[int, int, int], ...]


def layout(batch: int, time: int, dim: int, spec: KernelSpec) -> list[Chunk]:
    """The pieces the block works in: forward, backward and ``block_masks`` share them."""
    budget = -(-batch * time * dim // PIECE_FRACTION)
    rows = min(batch, max(1, max(budget, MIN_CHUNK) // max(1, time * dim)))
    step = min(time, max(1, max(budget, MIN_SLICE) // (rows * spec.heads * spec.kernel)))
    chunks, index = [], 0
    for r0 in range(0, batch, rows):
        slices = []
        for t0 in range(0, time, step):
            slices.append((index, t0, min(time, t0 + step)))
            index += 1
        chunks.append(Chunk(len(chunks), r0, min(batch, r0 + rows), tuple(slices)))
    return chunks


def _redrawn(seed: int | None, p: float, offset: int, shape: tuple[int, ...],
             device: torch.device) -> Tensor | None:
    """A keep mask drawn from ``seed + offset`` (None without dropout): the same in forward
    and backward, never stored."""
    if seed is None or p == 0.0:
        return None
    generator = torch.Generator(device=device).manual_seed(seed + offset)
    return keep_mask(shape, p, device, generator)


def weight_keep(spec: KernelSpec, rows: int, t0: int, t1: int, index: int,
                device: torch.device) -> Tensor | None:
    """The weight-dropout keep mask of slice ``index`` (``rows`` sentences, positions t0..t1)."""
    return _redrawn(spec.seed, spec.p, index, (rows, t1 - t0, spec.heads, spec.kernel), device)


def output_keep(spec: KernelSpec, chunk: Chunk, time: int, dim: int,
                device: torch.device) -> Tensor | None:
    """The output-dropout keep mask of ``chunk`` (rows, time, dim)."""
    return _redrawn(spec.seed, spec.out_p, _OUTPUT_STREAM + chunk.number,
                    (chunk.r1 - chunk.r0, time, dim), device)


def block_masks(spec: KernelSpec, batch: int, time: int, dim: int,
                device: torch.device) -> tuple[Tensor | None, Tensor | None]:
    """The whole weight-dropout (batch, time, heads, kernel) and output-dropout (batch, time,
    dim) keep masks the block uses (None: no such dropout), assembled from its pieces: for
    references and tests, the block itself never builds them."""
    weight, output = [], []
    for chunk in layout(batch, time, dim, spec):
        n = chunk.r1 - chunk.r0
        keeps = [weight_keep(spec, n, t0, t1, i, device) for i, t0, t1 in chunk.slices]
        if keeps[0] is not None:
            weight.append(torch.cat(keeps, dim=1))  # type: ignore[arg-type]
        out = output_keep(spec, chunk, time, dim, device)
        if out is not None:
            output.append(out)
    return (torch.cat(weight) if weight else None), (torch.cat(output) if output else None)


def _kernels(u: Tensor, weight: Tensor, bias: Tensor, spec: KernelSpec) -> Tensor:
    """Softmax kernels (rows, time, heads, kernel) for the inputs ``u``, before dropout:
    logits in ``u``'s dtype, the softmax in at least float32."""
    rows, time, _ = u.shape
    logits = F.linear(u, weight.to(u.dtype), bias.to(u.dtype))
    acc = torch.promote_types(u.dtype, torch.float32)
    logits = logits.view(rows, time, spec.heads, spec.kernel)
    if u.device.type == "cpu" and spec.kernel < _SHORT_SOFTMAX:
        # torch's CPU softmax over a short last dimension is 4-5x slower than these three
        # vectorised passes (kernel 3: 144 against 37 us on 16x24x8 rows, one thread)
        x = logits.to(acc)
        e = (x - x.amax(-1, keepdim=True)).exp_()
        return e / e.sum(-1, keepdim=True)
    return logits.softmax(-1, dtype=acc)


def _slice_kernels(u: Tensor, weight: Tensor, bias: Tensor, spec: KernelSpec, index: int,
                   t0: int, t1: int) -> tuple[Tensor, Tensor | None, Tensor]:
    """For slice ``index`` (positions t0..t1 of the chunk ``u``): the softmax kernels, the
    weight-dropout keep mask (None without dropout) and the kernels after dropout, in ``u``'s
    dtype."""
    probs = _kernels(u[:, t0:t1], weight, bias, spec)
    keep = weight_keep(spec, u.size(0), t0, t1, index, u.device)
    w = masked_scale(probs, keep, keep_scale(spec.p)) if keep is not None else probs
    return probs, keep, w.to(u.dtype)


def _taps(spec: KernelSpec, t0: int, t1: int, src_time: int) -> list[tuple[int, int, int]]:
    """(tap j, first output t, end output t) among outputs t0..t1 whose tap j is inside src."""
    out = []
    for j in range(spec.kernel):
        a, b = max(t0, spec.offset - j), min(t1, src_time + spec.offset - j)
        if a < b:
            out.append((j, a, b))
    return out


def _convolve_slice(o: Tensor, s: Tensor, w: Tensor, spec: KernelSpec, t0: int, t1: int) -> None:
    """Add outputs t0..t1 into ``o`` (rows, time, heads, r) from the source ``s`` (rows,
    src_time, heads, r) and the slice's kernels ``w``: as a band or tap by tap."""
    if use_band(spec.kernel, t1 - t0):
        o[:, t0:t1] += band_forward(s, w, spec.offset, t0, t1)
        return
    for j, a, b in _taps(spec, t0, t1, s.size(1)):
        o[:, a:b].addcmul_(s[:, a + j - spec.offset:b + j - spec.offset],
                           w[:, a - t0:b - t0, :, j, None])


def _convolve_chunk(src: Tensor, u: Tensor, weight: Tensor, bias: Tensor, spec: KernelSpec,
                    chunk: Chunk, out: Tensor) -> None:
    """``convolve`` for one chunk of sentences, added into ``out`` (zeros, shaped like u)."""
    rows, _, dim = u.shape
    heads = spec.heads
    s = src.to(u.dtype).reshape(rows, src.size(1), heads, dim // heads)
    o = out.view(rows, -1, heads, dim // heads)
    for index, t0, t1 in chunk.slices:
        w = _slice_kernels(u, weight, bias, spec, index, t0, t1)[2]
        _convolve_slice(o, s, w, spec, t0, t1)


def convolve(src: Tensor, u: Tensor, weight: Tensor, bias: Tensor, spec: KernelSpec) -> Tensor:
    """Output t = sum_j src[t + j - offset] * kernel_t[j] per head, with the kernels predicted
    from ``u`` (batch, time, dim) and ``src`` zero outside its length. Plain tensor ops (in
    place on fresh tensors), so autograd can also differentiate it; ``DynamicConvBlock`` is the
    memory-saving way to."""
    batch, time, dim = u.shape
    out = u.new_zeros(batch, time, dim)
    for chunk in layout(batch, time, dim, spec):
        rows = slice(chunk.r0, chunk.r1)
        _convolve_chunk(src[rows], u[rows], weight, bias, spec, chunk, out[rows])
    return out


def _convolve_backward(g: Tensor, u: Tensor, weight: Tensor, bias: Tensor, spec: KernelSpec,
                       chunk: Chunk, g_weight: Tensor | None, g_bias: Tensor | None,
                       c: Tensor | None = None) -> Tensor:
    """For one chunk: the gradient of ``convolve(u, u, ...)`` to u (as the source and as the
    kernels' input) for the output gradient ``g``; the kernel projection's weight and bias
    gradients are added into ``g_weight`` and ``g_bias`` when given, and the convolution
    itself into ``c`` (zeros) when given, from the kernels backward builds anyway."""
    rows, time, dim = u.shape
    heads = spec.heads
    s = u.view(rows, time, heads, dim // heads)
    gv = g.view(rows, time, heads, dim // heads)
    cv = None if c is None else c.view(rows, time, heads, dim // heads)
    g_s = torch.zeros_like(s)
    w_cast = weight.to(u.dtype)
    for index, t0, t1 in chunk.slices:
        probs, keep, w = _slice_kernels(u, weight, bias, spec, index, t0, t1)
        if cv is not None:  # the forward's sum, computed as the forward computes it
            _convolve_slice(cv, s, w, spec, t0, t1)
        if use_band(spec.kernel, t1 - t0):
            g_w = band_backward(gv[:, t0:t1], s, w, spec.offset, t0, t1,
                                g_s).to(probs.dtype)
        else:
            g_w = torch.zeros_like(probs)
            for j, a, b in _taps(spec, t0, t1, time):
                shifted = slice(a + j - spec.offset, b + j - spec.offset)
                g_s[:, shifted].addcmul_(gv[:, a:b], w[:, a - t0:b - t0, :, j, None])
                g_w[:, a - t0:b - t0, :, j] = torch.linalg.vecdot(gv[:, a:b], s[:, shifted])
        del w
        if keep is not None:  # through the dropout, in place
            masked_scale(g_w, keep, keep_scale(spec.p), inplace=True)
        # softmax backward in place: probs * (g_w - <g_w, probs>)
        dot = (g_w.unsqueeze(-2) @ probs.unsqueeze(-1)).squeeze(-1)
        g_logits = g_w.sub_(dot).mul_(probs).view(rows, t1 - t0, -1).to(u.dtype)
        del probs
        g_s[:, t0:t1].view(rows, t1 - t0, dim).add_(g_logits @ w_cast)
        if g_weight is not None and g_bias is not None:
            g_weight.addmm_(g_logits.reshape(-1, g_logits.size(-1)).t(),
                            u[:, t0:t1].reshape(-1, dim))
            g_bias += g_logits.sum(dim=(0, 1))
    return g_s.view(rows, time, dim)


def _glu_input(x: Tensor, w_in: Tensor, b_in: Tensor, pad: Tensor | None) -> tuple[Tensor, Tensor]:
    """(h, u): the input projection and its GLU, zeroed at padded positions."""
    h = F.linear(x, w_in.to(x.dtype), b_in.to(x.dtype))
    u = F.glu(h, dim=-1)
    if pad is not None:
        u.masked_fill_(pad.unsqueeze(-1), 0.0)
    return h, u


def _glu_backward_(h: Tensor, g_u: Tensor) -> Tensor:
    """The gradient to the GLU input ``h`` = (a, b) for ``u = a * sigmoid(b)``, computed in
    ``h``'s storage (``g_u`` is overwritten): g_a = g_u * s, g_b = a * g_u * s * (1 - s)."""
    a, b = h.chunk(2, dim=-1)
    b.sigmoid_()
    a.mul_(g_u).mul_(b)  # a * g_u * s
    g_u.mul_(b)  # g_a
    b.mul_(a).neg_().add_(a)  # a * g_u * s - a * g_u * s * s
    a.copy_(g_u)
    return h


def _rows(t: Tensor | None, chunk: Chunk) -> Tensor | None:
    return None if t is None else t[chunk.r0:chunk.r1]


class DynamicConvBlock(torch.autograd.Function):
    """``dropout(output_proj(convolve(u, u)))`` with ``u = GLU(input_proj(x))`` zeroed at
    padding; keeps ``x`` and the seed (see the module docstring)."""

    @staticmethod
    def forward(fctx: Any, x: Tensor, pad: Tensor | None, w_in: Tensor, b_in: Tensor,
                w_k: Tensor, b_k: Tensor, w_out: Tensor, b_out: Tensor,
                spec: KernelSpec) -> Tensor:
        dtype = compute_dtype(x)
        batch, time, dim = x.shape
        chunks = layout(batch, time, dim, spec)
        # One chunk means an input under the floor, where time counts and memory does not: the
        # convolution output is kept for the weight gradient instead of recomputed.
        keep_c = len(chunks) == 1 and any(fctx.needs_input_grad[6:8])
        with torch.autocast(x.device.type, enabled=False):
            y = x.new_empty(batch, time, dim, dtype=dtype)
            w_out_c, b_out_c = w_out.to(dtype), b_out.to(dtype)
            for chunk in chunks:
                rows = slice(chunk.r0, chunk.r1)
                u = _glu_input(x[rows].to(dtype), w_in, b_in, _rows(pad, chunk))[1]
                c = torch.zeros_like(u)
                _convolve_chunk(u, u, w_k, b_k, spec, chunk, c)
                del u
                y_rows = y[rows]
                torch.addmm(b_out_c, c.view(-1, dim), w_out_c.t(), out=y_rows.view(-1, dim))
                if not keep_c:
                    del c
                keep = output_keep(spec, chunk, time, dim, x.device)
                if keep is not None:
                    masked_scale(y_rows, keep, keep_scale(spec.out_p), inplace=True)
        fctx.save_for_backward(x, pad, w_in, b_in, w_k, b_k, w_out, b_out,
                               c if keep_c else None)
        fctx.spec, fctx.dtype = spec, dtype
        return y

    @staticmethod
    @once_differentiable
    def backward(fctx: Any, g_y: Tensor) -> tuple[Tensor | None, ...]:
        x, pad, w_in, b_in, w_k, b_k, w_out, b_out, kept_c = fctx.saved_tensors
        dtype, spec = fctx.dtype, fctx.spec
        batch, time, dim = x.shape
        weights = any(fctx.needs_input_grad[2:8])  # frozen in an alpha step: skipped
        params = (w_in, b_in, w_k, b_k, w_out, b_out)
        grads = [torch.zeros(p.shape, dtype=dtype, device=x.device) if weights else None
                 for p in params]
        g_w_in, g_b_in, g_w_k, g_b_k, g_w_out, g_b_out = grads
        g_x: Tensor | None = None
        with torch.autocast(x.device.type, enabled=False):
            w_out_c, w_in_c = w_out.to(dtype), w_in.to(dtype)
            for chunk in layout(batch, time, dim, spec):
                rows = slice(chunk.r0, chunk.r1)
                g_yc = g_y[rows].to(dtype)
                keep = output_keep(spec, chunk, time, dim, x.device)
                if keep is not None:
                    g_yc = masked_scale(g_yc, keep, keep_scale(spec.out_p))
                g_c = g_yc @ w_out_c
                xc = x[rows].to(dtype)
                h, u = _glu_input(xc, w_in, b_in, _rows(pad, chunk))
                # the convolution output, for the output projection's weight gradient only,
                # is recomputed here (from the kernels backward builds anyway) unless kept
                recompute = weights and kept_c is None
                c = torch.zeros_like(u) if recompute else kept_c
                g_u = _convolve_backward(g_c, u, w_k, b_k, spec, chunk, g_w_k, g_b_k,
                                         c if recompute else None)
                del g_c, u
                if g_w_out is not None and g_b_out is not None and c is not None:
                    g_w_out.addmm_(g_yc.reshape(-1, dim).t(), c.view(-1, dim))
                    g_b_out += g_yc.sum(dim=(0, 1))
                del g_yc, c
                if pad is not None:
                    g_u.masked_fill_(pad[rows].unsqueeze(-1), 0.0)
                g_h = _glu_backward_(h, g_u)
                del g_u
                if fctx.needs_input_grad[0]:
                    if g_x is None:  # allocated with the first chunk's g_h, not before it
                        g_x = torch.empty(x.shape, dtype=dtype, device=x.device)
                    torch.mm(g_h.view(-1, 2 * dim), w_in_c, out=g_x[rows].view(-1, dim))
                if g_w_in is not None and g_b_in is not None:
                    g_w_in.addmm_(g_h.view(-1, 2 * dim).t(), xc.reshape(-1, dim))
                    g_b_in += g_h.sum(dim=(0, 1))
                del g_h, xc
        g_x = None if g_x is None else g_x.to(x.dtype)
        if not weights:
            return g_x, None, None, None, None, None, None, None, None
        return (g_x, None, *(g.to(p.dtype) for g, p in zip(grads, params)  # type: ignore[union-attr]
                             ), None)
