"""Mixed precision in the engine: under autocast the reversible stream stays float32 while each
F_i computes in low precision, and the recomputation in backward replays the forward's
autocast state (issue 10, item 5)."""
from __future__ import annotations

import pytest
import torch
from test_reversible import spy_reconstruction
from torch import nn

import nasframe as nf
from nasframe.engine.reversible import ReversibleStack, SplitLayer


def stack(depth: int, d: int = 24, n: int = 2, dropout: float = 0.1,
          seed: int = 0) -> ReversibleStack:
    from nasframe.engine.backbones import SplitFunction

    def f(i: int) -> nn.Module:
        name = ["ffn", "self_attention", "dynamic_conv", "cross_attention"][i % 4]
        params = {} if name == "ffn" else {"heads": 2}
        return SplitFunction(nf.ops.create_op(name, d // n, causal=False, dropout=dropout,
                                              memory_dim=d, **params), "max")
    torch.manual_seed(seed)
    return ReversibleStack([SplitLayer([f(i + k) for i in range(n)]) for k in range(depth)])


def run(s: ReversibleStack, x: torch.Tensor, memory: torch.Tensor, saving: bool,
        amp: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    s.memory_saving = saving
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        y = s(x, memory=memory)
    loss = y.float().square().mean()  # outside autocast, as a training loop computes it
    return y, list(torch.autograd.grad(loss, [x, memory, *s.parameters()]))


@pytest.mark.parametrize("keep", [0, 1])
def test_stream_stays_float32_under_bf16_autocast(keep: int) -> None:
    s = stack(3).train()
    s.keep_last = keep
    dtypes: list[torch.dtype] = []
    for layer in s.layers:
        layer.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    fn_dtypes: list[torch.dtype] = []
    first_linear = next(m for m in s.layers[0].functions[0].modules() if isinstance(m, nn.Linear))
    first_linear.register_forward_hook(lambda m, i, o: fn_dtypes.append(o.dtype))
    captured = spy_reconstruction(s)
    x = torch.randn(2, 6, 24, requires_grad=True)
    memory = torch.randn(2, 5, 24, requires_grad=True)
    y, grads = run(s, x, memory, saving=True, amp=True)
    assert y.dtype == torch.float32
    assert dtypes and all(t == torch.float32 for t in dtypes)
    # F_1 computed in low precision in forward and again in backward's recomputation
    assert fn_dtypes == [torch.bfloat16, torch.bfloat16]
    assert captured["x"].dtype == torch.float32
    assert all(torch.isfinite(g).all() and g.dtype == torch.float32 for g in grads)
    # backward replays the forward's autocast: the reconstruction is exact to float32
    # rounding, not to bf16 (~4e-3). Now and then the float32 rounding of a reconstructed input
    # flips a bf16 cast inside an F_i and the difference spreads (1-2 of 40 random stacks), so
    # the claim is checked on five stacks: at most one may show it.
    drifts = [(captured["x"] - x.detach()).abs().max().item()]
    for seed in range(1, 5):
        other = stack(3, seed=seed).train()
        other.keep_last = keep
        spied = spy_reconstruction(other)
        run(other, x, memory, saving=True, amp=True)
        drifts.append((spied["x"] - x.detach()).abs().max().item())
    print("bf16 autocast reconstruction drift, 3 layers, five stacks:",
          ", ".join(f"{d:.1e}" for d in drifts))
    assert sum(d < 1e-4 for d in drifts) >= 4
    assert max(drifts) < 3e-2


def test_bf16_gradients_with_reconstruction_match_plain_bf16() -> None:
    s = stack(4).train()
    x = torch.randn(2, 6, 24, requires_grad=True)
    memory = torch.randn(2, 5, 24, requires_grad=True)
    _, saving = run(s, x, memory, saving=True, amp=True)
    _, plain = run(s, x, memory, saving=False, amp=True)
    _, fp32 = run(s, x, memory, saving=False, amp=False)
    flat = [torch.cat([g.flatten() for g in gs]) for gs in (saving, plain, fp32)]
    rel_engine = ((flat[0] - flat[1]).norm() / flat[1].norm()).item()
    rel_bf16 = ((flat[1] - flat[2]).norm() / flat[2].norm()).item()
    print(f"relative gradient difference: reconstruction vs plain (both bf16) {rel_engine:.2e},"
          f" plain bf16 vs fp32 {rel_bf16:.2e}")
    # reconstruction adds far less error than bf16 itself
    assert rel_engine < 0.1 * rel_bf16
    assert rel_bf16 < 0.1
