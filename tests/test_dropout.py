"""The CPU dropout of ``nasframe.dsl.ops.dropout``: its keep rate, scale, mask and replay."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nasframe.dsl.ops.dropout import Dropout, dropout, keep_mask, keep_scale, masked_scale
from nasframe.engine.memory import saved_bytes


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_keep_rate_in_every_quarter_of_a_draw(p: float) -> None:
    torch.manual_seed(0)
    keep = keep_mask((400_000,), p).view(-1, 4).float()
    # each of the four 16-bit quarters of a 64-bit draw keeps 1 - p (the top one too)
    for rate in keep.mean(dim=0).tolist():
        assert abs(rate - (1 - p)) < 0.005
    assert keep_scale(p) == pytest.approx(1 / (1 - p), rel=1e-4)


def test_expectation_gradient_and_one_byte_mask() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 33, 7, dtype=torch.float64, requires_grad=True)
    y = dropout(x, 0.2)
    kept = y != 0
    assert torch.equal(y[kept], x[kept] * keep_scale(0.2))
    (g,) = torch.autograd.grad(y.sum(), [x])
    assert torch.equal(g, kept.double() * keep_scale(0.2))
    ones = torch.ones(200_000, dtype=torch.float64)
    assert dropout(ones, 0.2).mean().item() == pytest.approx(1.0, abs=0.01)
    # autograd keeps the bool mask only: a byte per element (F.dropout keeps the float mask)
    assert saved_bytes(lambda: dropout(x, 0.2)).bytes == x.numel()


def test_replayed_by_the_seed_and_a_generator() -> None:
    x = torch.randn(5, 9)
    torch.manual_seed(3)
    a = dropout(x, 0.5)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.5), a)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(keep_mask((3, 5), 0.4, generator=g1), keep_mask((3, 5), 0.4, generator=g2))


def test_edges_match_torch() -> None:
    x = torch.randn(4, 6)
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), F.dropout(x, 1.0))
    module = Dropout(0.3).eval()
    assert module(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.5)
    assert "p=0.3" in repr(module)


def test_masked_scale_and_the_no_graph_path_give_the_graph_paths_values() -> None:
    x = torch.randn(4, 7, 9, dtype=torch.float64)
    keep = keep_mask(x.shape, 0.3)
    expected = x * keep.to(x.dtype) * keep_scale(0.3)
    assert torch.equal(masked_scale(x, keep, keep_scale(0.3)), expected)
    y = x.clone()
    masked_scale(y, keep, keep_scale(0.3), inplace=True)
    assert torch.equal(y, expected)
    leaf = x.clone().requires_grad_()
    torch.manual_seed(3)
    with_graph = dropout(leaf, 0.3)
    torch.manual_seed(3)
    with torch.no_grad():
        without = dropout(leaf, 0.3)
    assert with_graph.grad_fn is not None and without.grad_fn is None
    assert torch.equal(with_graph.detach(), without)
    (g,) = torch.autograd.grad(with_graph, [leaf], torch.ones_like(x))
    assert torch.equal(g, (with_graph.detach() != 0).to(x.dtype) * keep_scale(0.3))
