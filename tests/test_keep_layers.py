"""A memory budget: the top K layers of a reversible stack keep activations, the rest
reconstruct (``ReversibleStack(keep_last=K)``, ``ModelConfig.keep_layers``)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import nasframe as nf
from nasframe.engine.memory import choose_keep_layers, layer_saved_bytes, saved_bytes
from nasframe.engine.reversible import ReversibleStack, SplitLayer


def random_stack(seed: int, depth: int, n: int, d: int, dropout: float) -> ReversibleStack:
    """F_i drawn at random from ffn / attention / cross-attention / dynamic conv, max or avg
    pooling, a random invertible topology."""
    from nasframe.engine.backbones import SplitFunction

    g = torch.Generator().manual_seed(seed)

    def pick(k: int) -> int:
        return int(torch.randint(k, (1,), generator=g))

    names = ["ffn", "self_attention", "cross_attention", "dynamic_conv", "conv"]
    layers = []
    for _ in range(depth):
        inputs = []
        for i in range(n):
            allowed = [("Y", j) for j in range(i)] + [("X", k) for k in range(i + 1, n)]
            chosen = [r for r in allowed if pick(2)] or [allowed[pick(len(allowed))]]
            inputs.append(chosen)
        fns = []
        for _ in range(n):
            name = names[pick(len(names))]
            params = {"heads": 2} if "attention" in name or name == "dynamic_conv" else {}
            op = nf.ops.create_op(name, d // n, causal=bool(pick(2)) or name == "conv",
                                  dropout=dropout, memory_dim=d, **params)
            fns.append(SplitFunction(op, ["max", "avg"][pick(2)]))
        layers.append(SplitLayer(fns, inputs))
    torch.manual_seed(seed)
    return ReversibleStack(layers).double().train()


def grads(stack: ReversibleStack, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor,
          saving: bool, keep: int) -> list[torch.Tensor]:
    stack.memory_saving, stack.keep_last = saving, keep
    torch.manual_seed(11)  # the same dropout for every run
    y = stack(x, memory=memory, memory_mask=mask)
    loss = (y * y.detach().sin()).sum()
    params = list(stack.parameters())
    out = torch.autograd.grad(loss, [x, memory, *params], allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip([x, memory, *params], out)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradients_equal_plain_autograd_for_every_keep_float64(seed: int) -> None:
    depth = 3
    stack = random_stack(seed, depth, n=2 + seed % 2, d=12, dropout=0.2)
    x = torch.randn(2, 5, 12, dtype=torch.float64, requires_grad=True)
    memory = torch.randn(2, 4, 12, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[False] * 4, [False, False, True, True]])
    reference = grads(stack, x, memory, mask, saving=False, keep=0)
    assert any(g.abs().sum() > 0 for g in reference[2:])
    for keep in range(depth + 2):  # past the depth too: every layer kept
        got = grads(stack, x, memory, mask, saving=True, keep=keep)
        for a, b in zip(got, reference):
            assert (a - b).abs().max().item() <= 1e-10, keep
        if keep >= depth:  # the same computation as plain autograd, bit for bit
            assert all(torch.equal(a, b) for a, b in zip(got, reference))


def test_saved_bytes_grow_with_keep() -> None:
    depth = 4
    stack = random_stack(5, depth, n=2, d=16, dropout=0.1).float()
    x = torch.randn(2, 8, 16, requires_grad=True)
    memory = torch.randn(2, 6, 16)
    params = list(stack.parameters())
    sizes = []
    for keep in range(depth + 1):
        stack.keep_last = keep
        sizes.append(saved_bytes(lambda: stack(x, memory=memory), exclude=params).bytes)
    stack.memory_saving = False
    plain = saved_bytes(lambda: stack(x, memory=memory), exclude=params).bytes
    print("saved bytes by keep_last:", sizes, "plain:", plain)
    assert all(a < b for a, b in zip(sizes, sizes[1:]))
    assert sizes[0] < plain / depth
    # keeping every layer keeps what plain autograd keeps, plus at most the seeds
    assert abs(sizes[-1] - plain) <= 64 * depth


def test_layer_saved_bytes_predict_the_budget() -> None:
    depth = 4
    stack = random_stack(3, depth, n=2, d=16, dropout=0.1).float()
    x = torch.randn(2, 8, 16)
    memory = torch.randn(2, 6, 16)
    per_layer = layer_saved_bytes(stack.layers, x, memory=memory)
    assert len(per_layer) == depth and all(b > 0 for b in per_layer)
    params = list(stack.parameters())
    xg = x.clone().requires_grad_()
    base = saved_bytes(lambda: stack(xg, memory=memory), exclude=params).bytes
    for k in range(depth + 1):
        stack.keep_last = k
        measured = saved_bytes(lambda: stack(xg, memory=memory), exclude=params).bytes
        predicted = base + sum(per_layer[depth - k:])
        # the kept layers' input is the reconstruction's saved output, counted once (and the
        # kept layers' seeds are not saved)
        assert predicted - x.nbytes - 16 * depth <= measured <= predicted, k
    budget = sum(per_layer[-2:])
    assert choose_keep_layers(per_layer, budget) == 2
    assert choose_keep_layers(per_layer, budget - 1) == 1
    assert choose_keep_layers(per_layer, 0) == 0
    assert choose_keep_layers(per_layer, 10**12) == depth


def test_model_config_keep_layers_reaches_every_stack() -> None:
    space = nf.spaces.get("tiny", layers=1)
    cfg = nf.ModelConfig(d_model=48, blocks=3, keep_layers=2)
    model = nf.Supernet(space, cfg, vocab_size=20)
    stacks = [m for m in model.modules() if isinstance(m, ReversibleStack)]
    assert stacks and all(s.keep_last == 2 for s in stacks)
    with pytest.raises(nf.ConfigError, match="keep_layers"):
        nf.ModelConfig(keep_layers=-1)
    with pytest.raises(ValueError, match="keep_last"):
        ReversibleStack([SplitLayer([nn.Identity(), nn.Identity()])], keep_last=-1)
