"""A float64 stream under float32 F_i (``ReversibleStack(stream_dtype=torch.float64)``,
``ModelConfig.stream_dtype``): reconstruction recovers every layer's input bitwise, so backprop
with reconstruction gives ordinary autograd's gradients where a float32 stream drifts."""
from __future__ import annotations

import pytest
import torch
from test_reversible import split_stack, spy_reconstruction

import nasframe as nf
from nasframe.base.errors import ConfigError
from nasframe.engine.reversible import ReversibleStack
from nasframe.searching.updates import frozen


def float32_stack(stream: torch.dtype | None, depth: int = 8, seed: int = 0) -> ReversibleStack:
    """3 splits (max pooling over two inputs), ffn / attention / dynamic_conv: ReLUs, maxima
    and softmaxes that a drifting input can flip."""
    torch.manual_seed(seed)
    s = split_stack(3, depth, 48, dropout=0.1, causal=False).train()
    s.stream_dtype = stream
    return s


def grads(s: ReversibleStack, x: torch.Tensor, memory: torch.Tensor, saving: bool,
          amp: bool = False) -> list[torch.Tensor]:
    s.memory_saving = saving
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        y = s(x, memory=memory)
    loss = (y.float() * torch.linspace(-1, 1, y.size(-1))).square().mean()
    return list(torch.autograd.grad(loss, [x, memory, *s.parameters()]))


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = (3 * torch.randn(4, 10, 48, generator=g)).requires_grad_()
    return x, torch.randn(4, 7, 48, generator=g).requires_grad_()


def test_float64_stream_reconstructs_bitwise_and_gives_plain_gradients() -> None:
    x, memory = inputs()
    s = float32_stack(torch.float64)
    captured = spy_reconstruction(s)
    saving = grads(s, x, memory, saving=True)
    plain = grads(s, x, memory, saving=False)
    assert captured["x"].dtype == torch.float64
    assert torch.equal(captured["x"], x.detach().double())  # every layer recovered bitwise
    # the F_i in backward see the forward's inputs, so their VJPs are autograd's own: the
    # gradients are bitwise equal (a float32 stream: 3.5e-6 relative on this stack)
    for a, b in zip(saving, plain):
        assert a.dtype == b.dtype == torch.float32
        assert torch.equal(a, b)


def test_float32_stream_drifts_where_float64_does_not() -> None:
    """The same stack with the stream in its own dtype: the reconstructed input is off by
    float32 rounding, which is what the float64 stream removes."""
    x, memory = inputs()
    s32, s64 = float32_stack(None), float32_stack(torch.float64)
    captured = spy_reconstruction(s32)
    grads(s32, x, memory, saving=True)
    assert captured["x"].dtype == torch.float32
    assert (captured["x"] - x.detach()).abs().max().item() > 0
    with torch.no_grad():
        assert s32.drift(x, memory=memory) > 1e-7
        assert s64.drift(x, memory=memory) == 0.0
    assert s64.training  # drift ran in eval mode and put the mode back


def test_stream_dtype_inside_and_outside() -> None:
    """The stack takes and returns float32; between its layers the stream is float64 and the
    F_i read float32."""
    x, memory = inputs()
    s = float32_stack(torch.float64, depth=2)
    layer_out: list[torch.dtype] = []
    fn_in: list[torch.dtype] = []
    for layer in s.layers:
        layer.register_forward_hook(lambda m, i, o: layer_out.append(o.dtype))
        layer.functions[0].register_forward_hook(lambda m, i, o: fn_in.append(i[0][0].dtype))
    for saving in (True, False):
        s.memory_saving = saving
        y = s(x, memory=memory)
        assert y.dtype == torch.float32
        assert y.requires_grad
    assert layer_out and set(layer_out) == {torch.float64}
    assert fn_in and set(fn_in) == {torch.float32}
    # without a graph (inference, decoding) nothing is reconstructed: no float64 stream
    layer_out.clear()
    with torch.no_grad():
        assert s(x, memory=memory).dtype == torch.float32
    assert set(layer_out) == {torch.float32}
    # a float64 input runs as before: no cast anywhere
    s64 = float32_stack(torch.float64, depth=2).double()
    assert s64.into_stream(x.double())[1] is None


@pytest.mark.parametrize("keep", [0, 1, 2])
def test_keep_last_layers_with_a_float64_stream(keep: int) -> None:
    x, memory = inputs()
    s = float32_stack(torch.float64, depth=2)
    s.keep_last = keep
    saving = grads(s, x, memory, saving=True)
    plain = grads(s, x, memory, saving=False)
    for a, b in zip(saving, plain):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9 * b.abs().max().item())


def test_bf16_autocast_reconstructs_bitwise_with_a_float64_stream() -> None:
    """The F_i compute in bf16; their outputs join a float64 stream exactly, so the
    recomputation sees the forward's inputs and agrees with plain bf16 autograd."""
    x, memory = inputs()
    s = float32_stack(torch.float64, depth=4)
    captured = spy_reconstruction(s)
    saving = grads(s, x, memory, saving=True, amp=True)
    plain = grads(s, x, memory, saving=False, amp=True)
    assert torch.equal(captured["x"], x.detach().double())
    for a, b in zip(saving, plain):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7 * b.abs().max().item())


@pytest.mark.parametrize("update", ["both", "alphas", "weights"])
def test_supernet_default_stream_gives_plain_gradients(update: str) -> None:
    """``ModelConfig`` carries the reversible stream in float64 by default: a float32 DARTSformer
    supernet's gradients under reconstruction equal ordinary autograd's, also for the bilevel
    steps, which freeze what they do not update while the graph is built."""
    space = nf.spaces.get("tiny")
    torch.manual_seed(0)
    net = nf.Supernet(space, nf.ModelConfig(d_model=48, blocks=3, dropout=0.1),
                      vocab_size=60).train()
    assert net.config.stream_dtype == "float64"
    assert net.encoder.stream_dtype == torch.float64
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randint(4, 60, (4, 9), generator=g), torch.randint(4, 60, (4, 8), generator=g)
    alphas, weights = list(net.arch_parameters()), list(net.weight_parameters())
    params, constants = {"both": (alphas + weights, []), "alphas": (alphas, weights),
                         "weights": (weights, alphas)}[update]

    def step(saving: bool) -> list[torch.Tensor]:
        net.set_memory_saving(saving)
        torch.manual_seed(5)
        with frozen(constants):
            loss = net(src, tgt).log_softmax(-1).mean()
        return list(torch.autograd.grad(loss, params, allow_unused=True))

    for a, b in zip(step(True), step(False)):  # stream_dtype="model": 6e-7 relative apart
        if b is not None:
            assert torch.equal(a, b)
    model = nf.Supernet(space, nf.ModelConfig(d_model=48, stream_dtype="model"), vocab_size=60)
    assert model.encoder.stream_dtype is None


def test_bad_stream_dtype_names_the_field() -> None:
    with pytest.raises(ConfigError, match="stream_dtype"):
        nf.ModelConfig(stream_dtype="float16")
