"""The reversible engine: exact gradients, inversion, RNG replay, memory kept for backward."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import nasframe as nf
from nasframe.base.errors import SpaceError
from nasframe.engine.memory import saved_bytes
from nasframe.engine.reversible import ReversibleStack, SplitLayer

CROSS = nf.op("cross_attention", heads=2)
CHEAP_OPS = ["zero", "identity", "ffn", "glu", nf.op("self_attention", heads=2),
             nf.op("conv", kernel=3), nf.op("dynamic_conv", kernel=3, heads=2)]


# ----------------------------------------------------------------------------- random spaces

@st.composite
def topologies(draw, n: int) -> list[list[str]]:
    out = []
    for i in range(1, n + 1):
        allowed = [f"Y{j}" for j in range(1, i)] + [f"X{k}" for k in range(i + 1, n + 1)]
        out.append(draw(st.lists(st.sampled_from(allowed), min_size=1, unique=True)))
    return out


@st.composite
def random_spaces(draw) -> nf.SearchSpace:
    def stack(decoder: bool) -> nf.Stack:
        n = draw(st.integers(2, 5))
        labels = draw(st.lists(st.sampled_from(range(len(CHEAP_OPS))), min_size=1, max_size=4,
                               unique=True))
        ops = nf.OpSet([CHEAP_OPS[k] for k in labels])
        fixed = {}
        if decoder:
            ops = ops + [CROSS]
            if draw(st.booleans()):
                fixed = {draw(st.integers(1, n)): CROSS}
        return nf.Stack(splits=n, layers=draw(st.integers(1, 2)), choices=ops,
                        pool=draw(st.sampled_from(["max", "avg"])), fixed=fixed,
                        topology=draw(topologies(n)) if draw(st.booleans()) else None)
    return nf.SearchSpace(name="random", encoder=stack(False), decoder=stack(True))


def build(space: nf.SearchSpace, memory_saving: bool, blocks: int, dropout: float,
          seed: int = 0) -> nf.Supernet:
    d = 4 * math.lcm(space.encoder.splits, space.decoder.splits)
    torch.manual_seed(seed)
    cfg = nf.ModelConfig(d_model=d, blocks=blocks, dropout=dropout, memory_saving=memory_saving,
                         alpha_init_std=0.5)
    return nf.Supernet(space, cfg, vocab_size=23).double().train()


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 23, (3, 6), generator=g)
    tgt = torch.randint(4, 23, (3, 5), generator=g)
    src[0, 4:] = 0  # padding
    tgt[1, 3:] = 0
    return src, tgt


def grads_of(model: nf.Supernet, use_autograd_grad: bool) -> list[torch.Tensor]:
    src, tgt = batch()
    torch.manual_seed(7)  # the same dropout masks for both runs
    loss = model(src, tgt).log_softmax(-1).square().mean()
    params = list(model.parameters())
    if use_autograd_grad:
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        assert all(p.grad is None for p in params)  # autograd.grad must not touch .grad
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    loss.backward()
    return [torch.zeros_like(p) if p.grad is None else p.grad for p in params]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(space=random_spaces(), blocks=st.integers(1, 2), dropout=st.sampled_from([0.0, 0.2]),
       use_autograd_grad=st.booleans())
def test_reconstruction_gradients_equal_plain_autograd_float64(space, blocks, dropout,
                                                              use_autograd_grad):
    saving = build(space, True, blocks, dropout)
    plain = build(space, False, blocks, dropout)
    plain.load_state_dict(saving.state_dict())
    g_saving = grads_of(saving, use_autograd_grad)
    g_plain = grads_of(plain, use_autograd_grad)
    names = [n for n, _ in saving.named_parameters()]
    assert any(n.startswith("alphas.") for n in names)
    for name, a, b in zip(names, g_saving, g_plain):
        assert (a - b).abs().max().item() <= 1e-10, name
    # every alpha got a gradient (weighted mode: all candidates contribute)
    for name, g in zip(names, g_plain):
        if name.startswith("alphas.") and g.numel() > 1:
            assert g.abs().sum() > 0, name


def split_stack(n: int, depth: int, d: int, dropout: float, causal: bool,
                inputs=None) -> ReversibleStack:
    """A bare engine stack: F_i = ops on pooled inputs, one of them reading the context."""
    from nasframe.engine.backbones import SplitFunction

    def f(i: int) -> nn.Module:
        name = ["ffn", "self_attention", "cross_attention", "dynamic_conv"][i % 4]
        params = {"heads": 2} if name != "ffn" else {}
        return SplitFunction(nf.ops.create_op(name, d // n, causal=causal, dropout=dropout,
                                              memory_dim=d, **params), "max")
    return ReversibleStack([SplitLayer([f(i + k) for i in range(n)], inputs)
                            for k in range(depth)])


@pytest.mark.parametrize("causal", [False, True])
def test_input_and_context_gradients_with_autograd_grad(causal):
    torch.manual_seed(0)
    stack = split_stack(3, 3, 24, dropout=0.1, causal=causal).double().train()
    x = torch.randn(2, 5, 24, dtype=torch.float64, requires_grad=True)
    memory = torch.randn(2, 4, 24, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[False] * 4, [False, False, True, True]])
    params = [p for p in stack.parameters()]

    def grads(saving: bool) -> list[torch.Tensor]:
        stack.memory_saving = saving
        torch.manual_seed(3)
        y = stack(x, memory=memory, memory_mask=mask)
        return torch.autograd.grad((y * y.detach().cos()).sum(), [x, memory, *params])

    for a, b in zip(grads(True), grads(False)):
        assert (a - b).abs().max().item() <= 1e-10
    assert x.grad is None and memory.grad is None and all(p.grad is None for p in params)


def test_backward_sets_each_gradient_once_not_twice():
    torch.manual_seed(0)
    stack = split_stack(2, 2, 8, dropout=0.0, causal=False).double()
    x = torch.randn(1, 3, 8, dtype=torch.float64, requires_grad=True)
    memory = torch.randn(1, 2, 8, dtype=torch.float64, requires_grad=True)
    stack(x, memory=memory).sum().backward()
    first = [x.grad.clone(), *[p.grad.clone() for p in stack.parameters()]]
    stack.memory_saving = False
    x.grad = None
    stack.zero_grad()
    stack(x, memory=memory).sum().backward()
    for a, b in zip(first, [x.grad, *[p.grad for p in stack.parameters()]]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_gradcheck_on_a_tiny_stack():
    torch.manual_seed(0)
    stack = split_stack(2, 2, 8, dropout=0.0, causal=True).double()
    x = torch.randn(1, 3, 8, dtype=torch.float64, requires_grad=True)
    memory = torch.randn(1, 2, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, m: stack(a, memory=m), (x, memory))


def test_inverse_recovers_input_float64_and_float32_drift_is_small():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 24, dtype=torch.float64)
    mem = torch.randn(2, 5, 24, dtype=torch.float64)
    stack = split_stack(3, 4, 24, dropout=0.0, causal=False).double().eval()
    assert (stack.inverse(stack(x, memory=mem), memory=mem) - x).abs().max().item() <= 1e-12
    drift = {}
    for depth in (2, 6, 12):
        torch.manual_seed(0)
        s32 = split_stack(3, depth, 24, dropout=0.0, causal=False).eval()
        x32, m32 = x.float(), mem.float()
        with torch.no_grad():
            drift[depth] = (s32.inverse(s32(x32, memory=m32), memory=m32) - x32).abs().max().item()
    print("float32 reconstruction drift by depth:", drift)
    assert all(v < 1e-3 for v in drift.values())


def spy_reconstruction(s: ReversibleStack) -> dict[str, torch.Tensor]:
    """Capture what backward reconstructs as the bottom layer's input (key ``"x"``)."""
    captured: dict[str, torch.Tensor] = {}
    layer0 = s.layers[0]
    original = layer0.backward_step

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        captured["x"] = out[0]
        return out

    layer0.backward_step = spy
    return captured


def test_dropout_masks_replay_exactly_in_reconstruction():
    """With dropout on, the reconstructed input equals the true input only if masks replay."""
    torch.manual_seed(0)
    stack = split_stack(2, 3, 16, dropout=0.5, causal=False).double().train()
    x = torch.randn(2, 4, 16, dtype=torch.float64, requires_grad=True)
    captured = spy_reconstruction(stack)
    memory = torch.randn(2, 3, 16, dtype=torch.float64)
    rng_before = torch.get_rng_state()
    stack(x, memory=memory).sum().backward()
    assert (captured["x"] - x.detach()).abs().max().item() <= 1e-12
    # forward drew random numbers, backward restored its replays: the caller's stream moved
    # exactly as far as a plain forward's would
    torch.set_rng_state(rng_before)
    stack.memory_saving = False
    stack(x, memory=memory)
    plain_after = torch.get_rng_state()
    torch.set_rng_state(rng_before)
    stack.memory_saving = True
    stack(x, memory=memory).sum().backward()
    assert torch.equal(torch.get_rng_state(), plain_after)


def kept_bytes(space: nf.SearchSpace, blocks: int, memory_saving: bool) -> int:
    torch.manual_seed(0)
    cfg = nf.ModelConfig(d_model=48, blocks=blocks, dropout=0.1, memory_saving=memory_saving)
    model = nf.Supernet(space, cfg, vocab_size=30).train()
    src = torch.randint(4, 30, (4, 16))
    tgt = torch.randint(4, 30, (4, 16))
    return saved_bytes(lambda: model(src, tgt).sum(), exclude=model.parameters()).bytes


def test_bytes_kept_for_backward_do_not_grow_with_depth():
    space = nf.spaces.get("tiny", layers=1)
    shallow, deep = kept_bytes(space, 2, True), kept_bytes(space, 8, True)
    plain_shallow, plain_deep = kept_bytes(space, 2, False), kept_bytes(space, 8, False)
    print(f"saved bytes L=2/L=8: reconstruction {shallow}/{deep}, "
          f"plain {plain_shallow}/{plain_deep}")
    assert abs(deep - shallow) <= 0.10 * shallow
    assert plain_deep > 2.5 * plain_shallow  # the reference does grow
    assert deep < plain_deep / 5


def test_vanilla_darts_supernet_kept_bytes_grow_with_candidates():
    def space(k: int) -> nf.SearchSpace:
        ops = nf.OpSet(["identity", "ffn", "glu", "self_attention", nf.op("conv", kernel=3),
                        nf.op("dynamic_conv", kernel=3)][:k])
        return nf.SearchSpace(encoder=nf.Sequential([ops, ops]),
                              decoder=nf.Sequential([ops, "cross_attention", ops]))
    sizes = [kept_bytes(space(k), 1, False) for k in (2, 4, 6)]
    print("vanilla DARTS saved bytes for 2/4/6 candidates:", sizes)
    assert sizes[0] < sizes[1] < sizes[2]
    assert sizes[2] > 2 * sizes[0]


def test_split_layer_rejects_non_invertible_inputs():
    with pytest.raises(ValueError, match="not invertible"):
        SplitLayer([lambda xs: xs[0], lambda xs: xs[0]], [[("X", 0)], [("Y", 0)]])


@pytest.mark.parametrize("saving", [True, False])
def test_a_graph_built_with_frozen_weights_computes_no_weight_gradient(saving):
    """The bilevel alpha step freezes the weights while it builds the graph and asks for the
    alpha gradients after they are trainable again: reconstruction must recompute the graph
    forward built, with the weights as constants, as plain autograd does."""
    from nasframe.searching.updates import frozen

    space = nf.SearchSpace(name="s", encoder=nf.Stack(splits=2, layers=2, choices=["ffn", "glu"]),
                           decoder=nf.Stack(splits=2, layers=1, choices=["ffn", CROSS]))
    model = build(space, saving, blocks=1, dropout=0.1)
    weights, alphas = list(model.weight_parameters()), list(model.arch_parameters())
    hit: list[int] = []
    for k, p in enumerate(weights):
        p.register_hook(lambda g, k=k: hit.append(k))
    src, tgt = batch()
    torch.manual_seed(7)
    with frozen(weights):
        loss = model(src, tgt).log_softmax(-1).square().mean()
    assert all(p.requires_grad for p in weights)  # trainable again before backward
    grads = torch.autograd.grad(loss, alphas)
    assert hit == []  # no weight gradient was computed, not even one thrown away
    assert all(p.requires_grad for p in weights)  # and the recomputation left them so
    reference = build(space, False, blocks=1, dropout=0.1)
    reference.load_state_dict(model.state_dict())
    torch.manual_seed(7)
    expected = torch.autograd.grad(reference(src, tgt).log_softmax(-1).square().mean(),
                                   list(reference.arch_parameters()))
    for a, b in zip(grads, expected):
        assert (a - b).abs().max().item() <= 1e-10


@pytest.mark.parametrize("leaf", [True, False])
def test_functional_call_with_reconstruction_gives_plain_gradients(leaf):
    """``torch.func.functional_call`` swaps the parameters for the call and puts the originals
    back before backward: reconstruction holds the swapped tensors again while it recomputes,
    so they (or, for computed ones, what they come from) get ordinary autograd's gradients.
    Before, every one of them got None."""
    torch.manual_seed(0)
    stack = split_stack(2, 2, 8, dropout=0.1, causal=False).double().train()
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    memory = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    named = dict(stack.named_parameters())
    before = {n: p.detach().clone() for n, p in named.items()}

    def grads(saving: bool) -> list[torch.Tensor]:
        stack.memory_saving = saving
        if leaf:  # new leaves, as a meta-learner's fast weights
            sub = {n: (1.5 * p.detach()).requires_grad_() for n, p in named.items()}
            wrt = list(sub.values())
        else:  # computed from the parameters, as DARTS' unrolled w - xi * grad
            sub = {n: p - 0.1 * p.detach().sin() for n, p in named.items()}
            wrt = list(named.values())
        torch.manual_seed(3)
        y = torch.func.functional_call(stack, sub, (x,), {"memory": memory})
        return list(torch.autograd.grad((y * y.detach().cos()).sum(), [x, memory, *wrt]))

    saving, plain = grads(True), grads(False)
    for a, b in zip(saving, plain):
        assert (a - b).abs().max().item() <= 1e-10
    assert all(g.abs().sum() > 0 for g in saving[2:])
    assert all(named[n] is p and torch.equal(p, before[n]) for n, p in stack.named_parameters())


def test_a_layer_in_a_closure_fails_the_first_backward_instead_of_getting_no_gradient():
    lin = nn.Linear(4, 4)  # not owned by any module of the layer

    def closure(inputs, **ctx):
        return torch.tanh(lin(torch.stack(inputs).amax(0)))

    owned = nn.Linear(4, 4)

    class Owned(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = owned

        def forward(self, inputs, **ctx):
            return torch.tanh(self.lin(torch.stack(inputs).amax(0)))

    x = torch.randn(2, 3, 8, requires_grad=True)
    stack = ReversibleStack([SplitLayer([Owned(), closure])])
    with pytest.raises(SpaceError, match=r"split 2 of a SplitLayer \(function\) reads 2 "
                                           r"tensor\(s\) that require grad but are not"):
        stack(x).sum().backward()
    stack.memory_saving = False  # ordinary autograd reaches the closure's layer
    stack(x).sum().backward()
    assert lin.weight.grad is not None
    lin.requires_grad_(False)  # a constant is fine with reconstruction
    stack.memory_saving, x.grad, owned.weight.grad = True, None, None
    stack(x).sum().backward()
    assert owned.weight.grad is not None and x.grad is not None
