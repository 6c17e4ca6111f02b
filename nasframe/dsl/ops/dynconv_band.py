"""A slice of dynamic convolution as one batched matmul with a banded matrix.

``dynconv_fn`` sums a convolution tap by tap: ``kernel`` in-place multiply-adds per slice in
forward, and twice that in backward. For long kernels on short slices those small ops cost
more in Python and dispatch than in arithmetic. Here the slice's kernels are laid on the
diagonals of a (slice, slice + kernel - 1) matrix per sentence and head, so the slice's
output is one matmul with the window of the source it reads, and backward is two: the window's
gradient (the band transposed) and the band's gradient, whose diagonals are the kernels'.

The band does ``slice + kernel - 1`` multiply-adds per output where the taps do ``kernel``,
so it pays only when the slice is short against the kernel (``use_band``). Measured on one
CPU thread, the k=31 taps of a 8x24x120 slice took 334 us one by one and 115 us as a band;
at 32x64x240 with kernel 3, 0.29 ms one by one and 1.4 ms as a band.
"""
from __future__ import annotations

from torch import Tensor

__all__ = ["BAND_MIN_KERNEL", "use_band", "band_forward", "band_backward"]

BAND_MIN_KERNEL = 15  # at kernel 7 the band lost at 64x24 sentences (478 against 401 us)
"""The smallest kernel width for which the banded dynamic convolution is used."""


def use_band(kernel: int, length: int) -> bool:
    """Whether a slice of ``length`` positions convolves faster as a band (at most 3x the
    multiply-adds of the taps) than tap by tap."""
    return kernel >= BAND_MIN_KERNEL and length <= 2 * kernel


def _window(s: Tensor, t0: int, t1: int, kernel: int, offset: int) -> Tensor:
    """The source positions that outputs t0..t1 read, (rows, heads, t1 - t0 + kernel - 1, r),
    zeros outside ``s`` (rows, src_time, heads, r)."""
    rows, src_time, heads, r = s.shape
    first = t0 - offset
    win = s.new_zeros(rows, t1 - t0 + kernel - 1, heads, r)
    lo, hi = max(first, 0), min(first + win.size(1), src_time)
    if lo < hi:
        win[:, lo - first:hi - first] = s[:, lo:hi]
    return win.transpose(1, 2)


def _diagonals(band: Tensor, kernel: int) -> Tensor:
    """The (rows, heads, slice, kernel) view of the diagonals of ``band`` that hold kernels:
    row t's entries t..t + kernel - 1."""
    rows, heads, length, width = band.shape
    return band.as_strided((rows, heads, length, kernel),
                           (heads * length * width, length * width, width + 1, 1))


def _band(w: Tensor) -> Tensor:
    """The kernels ``w`` (rows, slice, heads, kernel) as (rows, heads, slice, slice + kernel
    - 1) with row t's kernel at columns t..t + kernel - 1."""
    rows, length, heads, kernel = w.shape
    band = w.new_zeros(rows, heads, length, length + kernel - 1)
    _diagonals(band, kernel).copy_(w.permute(0, 2, 1, 3))
    return band


def band_forward(s: Tensor, w: Tensor, offset: int, t0: int, t1: int) -> Tensor:
    """Outputs t0..t1, (rows, t1 - t0, heads, r): sum_j s[t + j - offset] * w[t, j]."""
    out = _band(w) @ _window(s, t0, t1, w.size(-1), offset)
    return out.transpose(1, 2)


def band_backward(g: Tensor, s: Tensor, w: Tensor, offset: int, t0: int, t1: int,
                  g_s: Tensor) -> Tensor:
    """For the outputs' gradient ``g`` (rows, t1 - t0, heads, r): add the source's gradient
    into ``g_s`` (shaped like ``s``) and return the kernels' (rows, t1 - t0, heads, kernel)."""
    kernel = w.size(-1)
    src_time = s.size(1)
    gt = g.transpose(1, 2)  # (rows, heads, slice, r)
    g_win = (_band(w).transpose(-2, -1) @ gt).transpose(1, 2)  # (rows, width, heads, r)
    first = t0 - offset
    lo, hi = max(first, 0), min(first + g_win.size(1), src_time)
    if lo < hi:
        g_s[:, lo:hi] += g_win[:, lo - first:hi - first]
    g_band = gt @ _window(s, t0, t1, kernel, offset).transpose(-2, -1)
    return _diagonals(g_band, kernel).permute(0, 2, 1, 3).contiguous()
