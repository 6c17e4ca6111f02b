"""Built-in ops: shapes, padding, causality, incremental decoding, references, gradients, errors."""
from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from nasframe.base.errors import NasframeError, SpaceError
from nasframe.dsl.ops import (
    Context,
    IncrementalState,
    available_ops,
    check_op_params,
    create_op,
    op_factory,
)
from nasframe.dsl.ops.attention import MultiHeadAttention, weigh_values
from nasframe.dsl.ops.conv import DynamicConv, StandardConv
from nasframe.dsl.ops.dropout import Dropout, dropout, keep_mask, keep_scale
from nasframe.dsl.ops.ffn import _ActivateDropProject, activate_drop_project

DIM = 8
MEMORY_DIM = 6
BATCH, TIME, SRC_TIME = 3, 7, 5

# Every built-in op, at small widths (heads=8 at dim=8 gives one channel per head).
SPECS: list[tuple[str, dict[str, Any]]] = [
    ("zero", {}),
    ("identity", {}),
    ("ffn", {"expansion": 2}),
    ("glu", {"expansion": 2}),
    ("self_attention", {"heads": 2}),
    ("self_attention", {"heads": 8}),
    ("cross_attention", {"heads": 2}),
    ("conv", {"kernel": 3}),
    ("conv", {"kernel": 1}),
    ("dynamic_conv", {"kernel": 3, "heads": 2}),
    ("dynamic_conv", {"kernel": 5, "heads": 8}),
]
# Even kernels exist only in causal form.
CAUSAL_ONLY_SPECS: list[tuple[str, dict[str, Any]]] = [
    ("conv", {"kernel": 4}),
    ("dynamic_conv", {"kernel": 4, "heads": 4}),
]
CASES = ([(name, params, causal) for name, params in SPECS for causal in (False, True)]
         + [(name, params, True) for name, params in CAUSAL_ONLY_SPECS])
CAUSAL_CASES = [case for case in CASES if case[2]]
TIME_MIXING = {"self_attention", "conv", "dynamic_conv"}


def case_id(case: tuple[str, dict[str, Any], bool]) -> str:
    name, params, causal = case
    args = ",".join(f"{k}={v}" for k, v in params.items())
    return f"{name}({args}){'-causal' if causal else ''}"


def make_op(name: str, params: dict[str, Any], causal: bool, *, dropout: float = 0.0,
            dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    op = create_op(name, DIM, causal=causal, dropout=dropout, memory_dim=MEMORY_DIM, **params)
    return op.to(dtype).eval()


def padding_masks() -> tuple[Tensor, Tensor]:
    """Target mask: full row, right padding, left padding. Memory mask: ragged lengths."""
    pad = torch.zeros(BATCH, TIME, dtype=torch.bool)
    pad[1, 5:] = True
    pad[2, :2] = True
    memory_pad = torch.zeros(BATCH, SRC_TIME, dtype=torch.bool)
    memory_pad[1, 3:] = True
    memory_pad[2, 4:] = True
    return pad, memory_pad


def inputs(dtype: torch.dtype = torch.float64, seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, TIME, DIM, generator=gen, dtype=dtype)
    memory = torch.randn(BATCH, SRC_TIME, MEMORY_DIM, generator=gen, dtype=dtype)
    return x, memory


# ----------------------------------------------------------------------------- registry


def test_every_builtin_op_is_covered() -> None:
    builtin = {name for name in available_ops()
               if op_factory(name).__module__.startswith("nasframe.dsl.ops.")}
    assert builtin == {name for name, _ in SPECS}


def test_factories_declare_their_parameters() -> None:
    check_op_params("dynamic_conv", {"kernel": 7, "heads": 4})
    check_op_params("cross_attention", {"heads": 4})
    with pytest.raises(SpaceError, match="heads"):
        check_op_params("ffn", {"heads": 4})


# ----------------------------------------------------------------------------- shapes, padding


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_output_shape_and_dtype(case: tuple[str, dict[str, Any], bool],
                                dtype: torch.dtype) -> None:
    name, params, causal = case
    op = make_op(name, params, causal, dtype=dtype)
    x, memory = inputs(dtype)
    pad, memory_pad = padding_masks()
    y = op(x, Context(padding_mask=pad, memory=memory, memory_mask=memory_pad))
    assert y.shape == x.shape
    assert y.dtype == dtype
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_padded_inputs_do_not_reach_other_positions(case: tuple[str, dict[str, Any], bool]
                                                    ) -> None:
    name, params, causal = case
    op = make_op(name, params, causal)
    x, memory = inputs()
    pad, memory_pad = padding_masks()
    y = op(x, Context(padding_mask=pad, memory=memory, memory_mask=memory_pad))

    noisy_x = x.masked_fill(pad.unsqueeze(-1), 0.0) + 100.0 * torch.randn_like(x) * pad[..., None]
    noisy_memory = memory + 100.0 * torch.randn_like(memory) * memory_pad[..., None]
    y2 = op(noisy_x, Context(padding_mask=pad, memory=noisy_memory, memory_mask=memory_pad))
    torch.testing.assert_close(y2[~pad], y[~pad], rtol=0, atol=1e-12)

    # Not even NaN or inf in the padding may reach a real position.
    poisoned_x = x.masked_fill(pad.unsqueeze(-1), math.nan)
    b, t = pad.nonzero()[0].tolist()
    poisoned_x[b, t, 0] = math.inf
    poisoned_memory = memory.masked_fill(memory_pad.unsqueeze(-1), -math.inf)
    y3 = op(poisoned_x, Context(padding_mask=pad, memory=poisoned_memory, memory_mask=memory_pad))
    torch.testing.assert_close(y3[~pad], y[~pad], rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_padding_is_the_same_as_truncation(case: tuple[str, dict[str, Any], bool]) -> None:
    """A padded sentence gives, at its real positions, what it gives alone without padding.

    The leak test above cannot see a missing mask (zeroed padding is constant); this one can.
    """
    name, params, causal = case
    op = make_op(name, params, causal)
    x, memory = inputs()
    pad, memory_pad = padding_masks()
    y = op(x, Context(padding_mask=pad, memory=memory, memory_mask=memory_pad))
    for b in range(BATCH):
        real, real_memory = ~pad[b], ~memory_pad[b]
        alone = op(x[b:b + 1, real], Context(memory=memory[b:b + 1, real_memory]))
        torch.testing.assert_close(y[b, real], alone[0], rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- causality


@pytest.mark.parametrize("case", CAUSAL_CASES, ids=case_id)
def test_causal_ops_do_not_look_ahead(case: tuple[str, dict[str, Any], bool]) -> None:
    name, params, causal = case
    op = make_op(name, params, causal)
    x, memory = inputs()
    ctx = Context(memory=memory)
    y = op(x, ctx)
    for t in range(TIME - 1):
        changed = x.clone()
        changed[:, t + 1:] = torch.randn(BATCH, TIME - t - 1, DIM, dtype=x.dtype)
        torch.testing.assert_close(op(changed, ctx)[:, : t + 1], y[:, : t + 1], rtol=0, atol=0)


@pytest.mark.parametrize("name,params", [("self_attention", {"heads": 2}), ("conv", {"kernel": 3}),
                                         ("dynamic_conv", {"kernel": 3, "heads": 2})])
def test_non_causal_ops_do_look_ahead(name: str, params: dict[str, Any]) -> None:
    """The counterpart of the causality test: the same change must reach an earlier output."""
    op = make_op(name, params, causal=False)
    x, _ = inputs()
    changed = x.clone()
    changed[:, 1:] += 1.0
    assert not torch.allclose(op(changed, Context())[:, 0], op(x, Context())[:, 0])


# ----------------------------------------------------------------------------- incremental


def decode(op: torch.nn.Module, x: Tensor, memory: Tensor, memory_pad: Tensor, pad: Tensor,
           steps: list[int], reorder_at: int, index: Tensor) -> Tensor:
    """Feed ``x`` in chunks of ``steps`` positions; reorder the beams before ``reorder_at``."""
    state = IncrementalState()
    outputs: list[Tensor] = []
    position = 0
    for size in steps:
        if position == reorder_at:
            state.reorder(index)
            x, memory, memory_pad, pad = x[index], memory[index], memory_pad[index], pad[index]
            outputs = [out[index] for out in outputs]
        window = slice(position, position + size)
        ctx = Context(padding_mask=pad[:, window], memory=memory, memory_mask=memory_pad,
                      state=state)
        outputs.append(op(x[:, window], ctx))
        position += size
    return torch.cat(outputs, dim=1)


INCREMENTAL_CASES = CAUSAL_CASES + [case for case in CASES if case[0] == "cross_attention"]


@pytest.mark.parametrize("steps", [[1] * TIME, [2, 1, 3, 1]], ids=["one-by-one", "chunks"])
@pytest.mark.parametrize("case", INCREMENTAL_CASES, ids=case_id)
def test_incremental_decoding_equals_full_recomputation(
        case: tuple[str, dict[str, Any], bool], steps: list[int]) -> None:
    name, params, causal = case
    op = make_op(name, params, causal)
    x, memory = inputs()
    pad, memory_pad = padding_masks()
    index = torch.tensor([2, 0, 0])  # beam search keeps beam 2 and duplicates beam 0
    y = decode(op, x, memory, memory_pad, pad, steps, reorder_at=3, index=index)

    full = op(x[index], Context(padding_mask=pad[index], memory=memory[index],
                                memory_mask=memory_pad[index]))
    torch.testing.assert_close(y, full, rtol=0, atol=1e-9)


def test_cross_attention_reuses_its_projected_memory() -> None:
    op = make_op("cross_attention", {"heads": 2}, causal=True)
    x, memory = inputs()
    state = IncrementalState()
    first = op(x[:, :1], Context(memory=memory, state=state))
    later = op(x[:, 1:2], Context(memory=None, state=state))  # no memory needed any more
    full = op(x[:, :2], Context(memory=memory))
    torch.testing.assert_close(torch.cat([first, later], 1), full, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name,params", [("self_attention", {"heads": 2}), ("conv", {"kernel": 3}),
                                         ("dynamic_conv", {"kernel": 3, "heads": 2})])
def test_incremental_decoding_of_a_non_causal_op_is_refused(name: str,
                                                            params: dict[str, Any]) -> None:
    op = make_op(name, params, causal=False)
    x, _ = inputs()
    with pytest.raises(NasframeError, match="causal"):
        op(x[:, :1], Context(state=IncrementalState()))


def test_cross_attention_without_memory_is_a_clear_error() -> None:
    op = make_op("cross_attention", {"heads": 2}, causal=True)
    x, _ = inputs()
    with pytest.raises(NasframeError, match="ctx.memory"):
        op(x, Context())


def test_padding_mask_of_the_wrong_length_is_a_clear_error() -> None:
    op = make_op("self_attention", {"heads": 2}, causal=True)
    x, _ = inputs()
    pad, _ = padding_masks()
    with pytest.raises(NasframeError, match="padding mask covers only the new"):
        op(x[:, :1], Context(padding_mask=pad, state=IncrementalState()))


# ----------------------------------------------------------------------------- references


def reference_conv_block(op: torch.nn.Module, x: Tensor, pad: Tensor, causal: bool) -> Tensor:
    """Standard or dynamic convolution block with explicit loops over every index."""
    block = op.sublayer
    batch, time, dim = x.shape
    k = block.kernel
    first = -(k - 1) if causal else -(k // 2)  # offset of the kernel's first tap
    u = F.glu(block.input_proj(x), dim=-1).masked_fill(pad[..., None], 0.0).tolist()
    out = [[[0.0] * dim for _ in range(time)] for _ in range(batch)]
    for b in range(batch):
        for t in range(time):
            taps = [(j, t + first + j) for j in range(k) if 0 <= t + first + j < time]
            if isinstance(block, DynamicConv):
                group = dim // block.heads
                logits = (block.kernel_proj.weight @ torch.tensor(u[b][t], dtype=x.dtype)
                          + block.kernel_proj.bias).tolist()
                for h in range(block.heads):
                    z = logits[h * k:(h + 1) * k]
                    weights = [math.exp(v - max(z)) / sum(math.exp(w - max(z)) for w in z)
                               for v in z]
                    for c in range(h * group, (h + 1) * group):
                        out[b][t][c] = sum(weights[j] * u[b][s][c] for j, s in taps)
            else:
                w = block.conv.weight.tolist()  # (out, in, k)
                for o in range(dim):
                    out[b][t][o] = block.conv.bias[o].item() + sum(
                        w[o][i][j] * u[b][s][i] for i in range(dim) for j, s in taps)
    y = block.output_proj(torch.tensor(out, dtype=x.dtype))
    return op.norm(x + y)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name,params", [("dynamic_conv", {"kernel": 3, "heads": 2}),
                                         ("dynamic_conv", {"kernel": 5, "heads": 4}),
                                         ("conv", {"kernel": 3})])
def test_conv_blocks_match_a_loop_reference(name: str, params: dict[str, Any],
                                            causal: bool) -> None:
    op = make_op(name, params, causal)
    assert isinstance(op.sublayer, DynamicConv if name == "dynamic_conv" else StandardConv)
    x, _ = inputs()
    pad, _ = padding_masks()
    expected = reference_conv_block(op, x, pad, causal)
    torch.testing.assert_close(op(x, Context(padding_mask=pad)), expected, rtol=0, atol=1e-10)


def test_dynamic_kernels_are_normalised() -> None:
    block = make_op("dynamic_conv", {"kernel": 7, "heads": 4}, causal=True).sublayer
    u = 3.0 * torch.randn(BATCH, TIME, DIM, dtype=torch.float64)
    kernels = block.kernels(u)
    assert kernels.shape == (BATCH, TIME, 4, 7)
    assert (kernels >= 0).all()
    torch.testing.assert_close(kernels.sum(-1), torch.ones(BATCH, TIME, 4, dtype=u.dtype))


def test_zero_and_identity() -> None:
    x, _ = inputs()
    zero = make_op("zero", {}, causal=False)
    assert torch.equal(zero(x, Context()), torch.zeros_like(x))
    assert make_op("identity", {}, causal=False)(x, Context()) is x


def test_feed_forward_blocks_match_their_formulas() -> None:
    x, _ = inputs()
    ffn, glu = make_op("ffn", {}, causal=False), make_op("glu", {}, causal=False)
    assert ffn.sublayer.inner.out_features == 4 * DIM  # default expansion
    inner = ffn.sublayer.inner(x)
    expected = ffn.norm(x + ffn.sublayer.outer(inner.clamp(min=0)))
    torch.testing.assert_close(ffn(x, Context()), expected, rtol=0, atol=1e-12)
    value, gate = glu.sublayer.inner(x).chunk(2, dim=-1)
    expected = glu.norm(x + glu.sublayer.outer(value * torch.sigmoid(gate)))
    torch.testing.assert_close(glu(x, Context()), expected, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name,params", [("self_attention", {"heads": 2}),
                                         ("dynamic_conv", {"kernel": 3, "heads": 2}),
                                         ("cross_attention", {"heads": 2})])
def test_gradcheck(name: str, params: dict[str, Any], causal: bool) -> None:
    op = make_op(name, params, causal)
    x, memory = inputs()
    x = x[:2, :4].clone().requires_grad_()
    pad = torch.tensor([[False] * 4, [False, False, False, True]])
    memory_pad = torch.tensor([[False] * 3, [False, False, True]])
    if name == "cross_attention":
        memory = memory[:2, :3].clone().requires_grad_()

        def run(x: Tensor, memory: Tensor) -> Tensor:
            return op(x, Context(padding_mask=pad, memory=memory, memory_mask=memory_pad))

        assert torch.autograd.gradcheck(run, (x, memory))
    else:
        assert torch.autograd.gradcheck(lambda x: op(x, Context(padding_mask=pad)), (x,))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gradients_stay_finite_with_fully_masked_rows(case: tuple[str, dict[str, Any], bool]
                                                      ) -> None:
    """A left-padded query under a causal mask sees no key; that must not make NaN gradients."""
    name, params, causal = case
    op = make_op(name, params, causal)
    x, memory = inputs()
    x.requires_grad_()
    pad, memory_pad = padding_masks()
    memory_pad[0] = True  # a sentence whose memory is all padding
    op(x, Context(padding_mask=pad, memory=memory, memory_mask=memory_pad)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in op.parameters() if p.grad is not None)


def test_attend_matches_masked_softmax_and_zeroes_queries_without_keys() -> None:
    """``attend`` against softmax(q k^T / sqrt(d), -inf at masked keys) v in float64; a query
    whose keys are all masked gets a zero context and passes no gradient to q, k or v."""
    torch.manual_seed(0)
    att = MultiHeadAttention(12, heads=3, dropout=0.0).double()
    q, k, v = (torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    masked = torch.zeros(2, 1, 5, 5, dtype=torch.bool)
    masked[0, :, :, 3:] = True  # padded keys
    masked[1, :, 2, :] = True  # query 2 of sentence 1 sees nothing
    out = att.attend(q, k, v, masked)
    scores = (q @ k.transpose(-2, -1) / 2.0).masked_fill(masked, float("-inf"))
    ref = torch.nan_to_num(scores.softmax(-1)) @ v
    ref = att.out_proj(ref.transpose(1, 2).reshape(2, 5, 12))
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)
    assert torch.equal(out[1, 2], att.out_proj.bias)  # zero context: the bias alone
    out[1, 2].sum().backward()
    assert all(t.grad is not None and not t.grad.any() for t in (q, k, v))


def test_weigh_values_gives_autograd_gradients_and_keeps_one_score_sized_float() -> None:
    """Attention's dropout and ``@ v`` in one function: bitwise autograd's gradients in float32
    (and gradcheck in float64), with one float (batch, heads, time, time) tensor kept, not
    two."""
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 5, 5, requires_grad=True)
    v = torch.randn(2, 3, 5, 4, requires_grad=True)
    g = torch.randn(2, 3, 5, 4)
    torch.manual_seed(1)
    ref = dropout(scores.softmax(-1), 0.3) @ v  # ordinary autograd, the same mask
    torch.manual_seed(1)
    keep = keep_mask(scores.shape, 0.3)
    saved: list[Tensor] = []

    def pack(t: Tensor) -> Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = weigh_values(scores, v, keep, keep_scale(0.3))
    assert torch.equal(out, ref)
    assert all(torch.equal(a, b) for a, b in zip(torch.autograd.grad(out, (scores, v), g),
                                                  torch.autograd.grad(ref, (scores, v), g)))
    def score_sized(tensors: list[Tensor]) -> list[str]:  # one entry per storage
        found = {t.untyped_storage().data_ptr(): str(t.dtype) for t in tensors
                 if t.numel() == scores.numel()}
        return sorted(found.values())

    assert score_sized(saved) == ["torch.bool", "torch.float32"]
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        dropout(scores.softmax(-1), 0.3) @ v
    assert score_sized(saved) == ["torch.bool", "torch.float32", "torch.float32"]
    s64, v64 = (t.detach().double().requires_grad_() for t in (scores, v))
    assert torch.autograd.gradcheck(lambda s, w: weigh_values(s, w, keep, keep_scale(0.3)),
                                    (s64, v64))


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
@pytest.mark.parametrize("kind", ["relu", "glu"])
def test_ffn_inner_dropout_gives_autograd_gradients_without_keeping_the_dropped_input(
        kind: str, autocast: bool) -> None:
    """``activate_drop_project`` against ``outer(dropout(act(h)))`` under ordinary autograd:
    the same output and gradients to the bit, and one hidden-wide tensor fewer kept."""
    torch.manual_seed(0)
    hidden = 24
    outer = torch.nn.Linear(hidden, 8)
    h = torch.randn(3, 5, hidden * (2 if kind == "glu" else 1), requires_grad=True)
    g = torch.randn(3, 5, 8)
    act = F.relu if kind == "relu" else (lambda t: F.glu(t, dim=-1))
    kept: dict[str, int] = {}  # floating storages as wide as the activation
    results = {}
    for name in ("autograd", "fused"):
        storages: set[int] = set()

        def pack(t: Tensor, storages: set[int] = storages) -> Tensor:
            if t.is_floating_point() and t.numel() == 3 * 5 * hidden:
                storages.add(t.untyped_storage().data_ptr())
            return t

        torch.manual_seed(1)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if name == "autograd":
                out = outer(dropout(act(h), 0.3))
            else:
                out = activate_drop_project(h, kind, Dropout(0.3), outer)  # type: ignore[arg-type]
        kept[name] = len(storages)
        results[name] = (out, *torch.autograd.grad(out, (h, outer.weight, outer.bias),
                                                   g.to(out.dtype)))
    assert all(torch.equal(a, b) for a, b in zip(results["fused"], results["autograd"]))
    # ReLU keeps its output either way; the dropped activation is kept by autograd only
    assert kept == {"autograd": 2 if kind == "relu" else 1, "fused": kept["autograd"] - 1}
    h64, w64, b64 = (t.detach().double().requires_grad_() for t in (h, outer.weight, outer.bias))
    keep = keep_mask((3, 5, hidden), 0.3)
    assert torch.autograd.gradcheck(
        lambda x, w, b: _ActivateDropProject.apply(x, w, b, keep, keep_scale(0.3), kind),
        (h64, w64, b64))


# ----------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_dropout_is_reproducible_and_off_in_eval(case: tuple[str, dict[str, Any], bool]) -> None:
    name, params, causal = case
    op = make_op(name, params, causal, dropout=0.5)
    reference = make_op(name, params, causal, dropout=0.0)  # same seed: same weights
    x, memory = inputs()
    ctx = Context(memory=memory)
    torch.testing.assert_close(op(x, ctx), reference(x, ctx), rtol=0, atol=0)

    op.train()
    torch.manual_seed(5)
    first = op(x, ctx)
    torch.manual_seed(5)
    torch.testing.assert_close(op(x, ctx), first, rtol=0, atol=0)
    if name not in ("zero", "identity"):
        assert not torch.allclose(op(x, ctx), first)  # a fresh mask


def test_attention_dropout_acts_on_the_weights_only_in_training() -> None:
    attention = make_op("self_attention", {"heads": 2}, causal=False, dropout=0.5).sublayer
    x, _ = inputs()
    q = k = v = attention.split_heads(x)
    nothing_masked = torch.zeros(1, dtype=torch.bool)
    evaluated = attention.attend(q, k, v, nothing_masked)
    torch.testing.assert_close(attention.attend(q, k, v, nothing_masked), evaluated)
    attention.train()
    assert not torch.allclose(attention.attend(q, k, v, nothing_masked), evaluated)


@pytest.mark.parametrize("name,params", [("ffn", {}), ("glu", {}), ("self_attention", {"heads": 2}),
                                         ("cross_attention", {"heads": 2}),
                                         ("dynamic_conv", {"kernel": 3, "heads": 2})])
def test_inner_dropout(name: str, params: dict[str, Any]) -> None:
    """Besides the residual's dropout, these sublayers drop hidden units or weights themselves."""
    sublayer = make_op(name, params, causal=True, dropout=0.5).sublayer.train()
    x, memory = inputs()
    ctx = Context(memory=memory)
    assert not torch.allclose(sublayer(x, ctx), sublayer(x, ctx))


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["self_attention", "cross_attention", "dynamic_conv"])
def test_heads_must_divide_dim(name: str) -> None:
    with pytest.raises(SpaceError, match=rf"{name}.*dim 10.*heads 4"):
        create_op(name, 10, causal=True, heads=4)
    with pytest.raises(SpaceError, match="heads must be a positive integer"):
        create_op(name, 8, causal=True, heads=0)


@pytest.mark.parametrize("name", ["conv", "dynamic_conv"])
def test_non_causal_even_kernel_is_refused(name: str) -> None:
    with pytest.raises(SpaceError, match=rf"{name}.*must be odd.*kernel 4"):
        create_op(name, 8, causal=False, kernel=4, **({"heads": 2} if name != "conv" else {}))
    create_op(name, 8, causal=True, kernel=4, **({"heads": 2} if name != "conv" else {}))
    with pytest.raises(SpaceError, match="kernel must be a positive integer"):
        create_op(name, 8, causal=True, kernel=0)


@pytest.mark.parametrize("name", ["ffn", "glu"])
def test_expansion_must_be_positive(name: str) -> None:
    with pytest.raises(SpaceError, match=rf"{name}.*expansion"):
        create_op(name, 8, expansion=0)


def test_ffn_with_a_hooked_output_layer_runs_it_as_a_module() -> None:
    """A hook on the output projection (or a subclass of Linear) must see it called."""
    op = make_op("ffn", {}, causal=False, dropout=0.3)
    seen: list[int] = []
    op.sublayer.outer.register_forward_hook(lambda m, i, o: seen.append(1))
    x, _ = inputs()
    op.train()(x, Context())
    assert seen == [1]


@pytest.mark.parametrize("name", ["ffn", "glu", "self_attention"])
def test_inner_dropout_that_rounds_to_one_drops_everything(name: str) -> None:
    """p = 0.99999 quantises to dropping every element: the fused paths must not divide by
    the zero keep rate, and the op's inner dropout then zeroes its sublayer's inner output."""
    op = make_op(name, {"heads": 2} if name == "self_attention" else {}, causal=False,
                 dropout=0.99999).train()
    x, _ = inputs()
    x.requires_grad_()
    y = op(x, Context())
    y.sum().backward()
    assert torch.isfinite(y).all() and x.grad is not None and torch.isfinite(x.grad).all()
