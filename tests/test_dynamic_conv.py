"""DynamicConv without the unfolded window: today's outputs and gradients, a fraction of the
memory (issue 10, item 2)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from nasframe.memory import saved_bytes
from nasframe.ops import Context, create_op
from nasframe.ops.conv import DynamicConv


def unfold_reference(block: DynamicConv, x: Tensor, pad: Tensor | None) -> Tensor:
    """The previous implementation: every position's window materialised with ``unfold``."""
    u = F.glu(block.input_proj(x), dim=-1)
    if pad is not None:
        u = u.masked_fill(pad.unsqueeze(-1), 0.0)
    left = block.kernel - 1 if block.causal else block.kernel // 2
    seq = F.pad(u, (0, 0, left, block.kernel - 1 - left))
    batch, time, dim = u.shape
    weights = block.weight_dropout(block.kernels(u))
    windows = seq.unfold(1, block.kernel, 1)
    windows = windows.reshape(batch, time, block.heads, dim // block.heads, block.kernel)
    out = torch.einsum("bthck,bthk->bthc", windows, weights).reshape(batch, time, dim)
    return block.output_proj(out)


@pytest.mark.parametrize("kernel,heads,causal", [(3, 2, False), (7, 4, True), (31, 8, False),
                                                 (4, 2, True), (31, 2, True)])
@pytest.mark.parametrize("train", [False, True])
def test_outputs_and_gradients_equal_the_unfold_version_float64(kernel: int, heads: int,
                                                                causal: bool, train: bool) -> None:
    torch.manual_seed(0)
    op = create_op("dynamic_conv", 16, causal=causal, dropout=0.3, kernel=kernel,
                   heads=heads).double().train(train)
    block = op.sublayer
    x = torch.randn(3, 9, 16, dtype=torch.float64, requires_grad=True)
    pad = torch.zeros(3, 9, dtype=torch.bool)
    pad[1, 6:] = True
    params = list(block.parameters())

    def run(fn) -> tuple[Tensor, list[Tensor]]:
        torch.manual_seed(5)  # the same weight-dropout mask in both
        y = fn()
        loss = (y * y.detach().cos()).sum()
        return y, list(torch.autograd.grad(loss, [x, *params]))

    y_new, g_new = run(lambda: block(x, Context(padding_mask=pad)))
    y_ref, g_ref = run(lambda: unfold_reference(block, x, pad))
    assert (y_new - y_ref).abs().max().item() <= 1e-12
    for a, b in zip(g_new, g_ref):
        assert (a - b).abs().max().item() <= 1e-12


def test_gradcheck_with_dropout_mask() -> None:
    torch.manual_seed(0)
    block = create_op("dynamic_conv", 8, causal=False, dropout=0.4, kernel=5,
                      heads=2).double().sublayer
    x = torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True)

    def f(a: Tensor) -> Tensor:
        torch.manual_seed(1)
        return block(a, Context())

    assert torch.autograd.gradcheck(f, (x,))


def kept_ratio(kernel: int, core_only: bool) -> float:
    torch.manual_seed(0)
    op = create_op("dynamic_conv", 48, causal=False, dropout=0.1, kernel=kernel).train()
    x = torch.randn(4, 24, 48, requires_grad=True)
    params = list(op.parameters())
    if core_only:  # the convolution on its own input, the window's old cost
        u = x.detach().clone().requires_grad_()
        kept = saved_bytes(lambda: op.sublayer.convolve_from(u, u, kernel // 2), exclude=params)
    else:
        kept = saved_bytes(lambda: op(x, Context()), exclude=params)
    return kept.bytes / x.nbytes


def test_kept_memory_no_longer_grows_with_the_window() -> None:
    core = {k: kept_ratio(k, True) for k in (3, 7, 11, 15, 31)}
    whole = {k: kept_ratio(k, False) for k in (3, 7, 11, 15, 31)}
    print("kept / input, convolution:", core, "whole candidate:", whole)
    # the input plus a one-byte dropout mask per kernel weight (8 heads: 8k bytes per position
    # against 4 * 48 bytes of input)
    for k, ratio in core.items():
        assert ratio <= 1 + 8 * k / (4 * 48) + 0.01
    assert max(core.values()) <= 4
    # the rest of the block (projections, GLU, norm) does not depend on k
    assert whole[31] - whole[3] <= core[31] - core[3] + 0.01
