"""Multi-split reversible layers and backpropagation with reconstruction (paper.md §2-3).

A ``SplitLayer`` splits its input along the last dimension into n parts and computes, for
i = 1..n (Eq. 3)::

    Y_i = X_i + F_i(inputs_i),    inputs_i = (Y_1..Y_{i-1}, X_{i+1}..X_n) or a declared subset

F_i never reads X_i, so the layer inverts exactly from split n down to 1 (Eq. 4). A
``ReversibleStack`` of such layers keeps only its top output for backward: every lower
activation is recomputed from it (Algorithm 1), with one evaluation of each F_i serving both
the reconstruction and the vector-Jacobian product.

The engine knows nothing about search or Transformers: each F_i is any callable
``f(inputs: list[Tensor], **context) -> Tensor`` shaped like X_i. Context keyword arguments are
passed to every F_i; context tensors that require grad (an encoder output read by a decoder)
receive their gradients.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["SplitLayer", "ReversibleStack", "default_inputs", "parse_inputs"]

Ref = tuple[str, int]  # ("Y", j) or ("X", k), 0-based split index
RngState = tuple[Tensor, Tensor | None]


def default_inputs(n: int) -> list[list[Ref]]:
    """The paper's topology: F_i reads Y_1..Y_{i-1} and X_{i+1}..X_n (0-based here)."""
    return [[("Y", j) for j in range(i)] + [("X", k) for k in range(i + 1, n)] for i in range(n)]


def parse_inputs(topology: Sequence[Sequence[str]]) -> list[list[Ref]]:
    """``[["X2"], ["Y1"]]`` (1-based, as in the DSL) -> ``[[("X", 1)], [("Y", 0)]]``."""
    return [[(ref[0], int(ref[1:]) - 1) for ref in refs] for refs in topology]


# ----------------------------------------------------------------------------- RNG replay

def _capture_rng(device: torch.device) -> RngState:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


@contextlib.contextmanager
def _replay_rng(state: RngState | None, device: torch.device) -> Iterator[None]:
    """Run the block with the RNG as it was in forward; leave the caller's RNG untouched."""
    if state is None:
        yield
        return
    cpu, cuda = state
    with torch.random.fork_rng(devices=[device] if cuda is not None else [], device_type="cuda"):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
        yield


# ----------------------------------------------------------------------------- one layer

class SplitLayer(nn.Module):
    """One multi-split reversible layer: ``functions[i]`` is F_{i+1}."""

    def __init__(self, functions: Sequence[Callable[..., Tensor]],
                 inputs: Sequence[Sequence[Ref]] | None = None) -> None:
        super().__init__()
        n = len(functions)
        if n < 2:
            raise ValueError(f"a split layer needs at least 2 functions, got {n}")
        self.functions = list(functions)
        # Register the modules among them so their parameters belong to this layer.
        self.fns = nn.ModuleList(f for f in functions if isinstance(f, nn.Module))
        self.inputs = [list(refs) for refs in (inputs or default_inputs(n))]
        for i, refs in enumerate(self.inputs):
            bad = [r for r in refs if (r[0] == "X" and r[1] <= i) or (r[0] == "Y" and r[1] >= i)]
            if bad or not refs:
                raise ValueError(f"split {i + 1}: inputs {refs} make the layer not invertible")

    @property
    def n(self) -> int:
        return len(self.functions)

    def _gather(self, i: int, ys: list[Tensor | None], xs: list[Tensor | None]) -> list[Tensor]:
        return [(ys if kind == "Y" else xs)[j] for kind, j in self.inputs[i]]  # type: ignore[misc]

    def forward(self, x: Tensor, rng: list[RngState] | None = None, **ctx: Any) -> Tensor:
        """Eq. 3. When ``rng`` is a list, the RNG state before each F_i is appended to it."""
        xs: list[Tensor | None] = list(x.chunk(self.n, dim=-1))
        ys: list[Tensor | None] = [None] * self.n
        for i, f in enumerate(self.functions):
            if rng is not None:
                rng.append(_capture_rng(x.device))
            ys[i] = xs[i] + f(self._gather(i, ys, xs), **ctx)
        return torch.cat(ys, dim=-1)  # type: ignore[arg-type]

    def inverse(self, y: Tensor, **ctx: Any) -> Tensor:
        """Eq. 4: recover X from Y, split n first."""
        ys: list[Tensor | None] = list(y.chunk(self.n, dim=-1))
        xs: list[Tensor | None] = [None] * self.n
        for i in reversed(range(self.n)):
            xs[i] = ys[i] - self.functions[i](self._gather(i, ys, xs), **ctx)
        return torch.cat(xs, dim=-1)  # type: ignore[arg-type]

    def backward_step(self, y: Tensor, dy: Tensor, ctx: dict[str, Any],
                      grads: dict[int, Tensor], rng: Sequence[RngState] | None = None
                      ) -> tuple[Tensor, Tensor]:
        """Algorithm 1: from (Y, dY) return (X, dX); add parameter and context grads to ``grads``.

        ``grads`` maps ``id(tensor)`` to its accumulated gradient, for the parameters of every
        F_i and the context tensors in ``ctx`` that require grad.
        """
        ys = [c.detach().requires_grad_() for c in y.chunk(self.n, dim=-1)]
        g_y = list(dy.chunk(self.n, dim=-1))
        g_x: list[Tensor | None] = [None] * self.n
        xs: list[Tensor | None] = [None] * self.n
        ctx_leaves = [v for v in ctx.values() if isinstance(v, Tensor) and v.requires_grad]
        for i in reversed(range(self.n)):
            f = self.functions[i]
            inp = self._gather(i, ys, xs)  # type: ignore[arg-type]
            with _replay_rng(rng[i] if rng else None, y.device), torch.enable_grad():
                z = f(inp, **ctx)  # one evaluation serves reconstruction and the VJP
            xs[i] = (ys[i] - z).detach().requires_grad_()  # Eq. 4
            if z.requires_grad:
                params = [p for p in f.parameters() if p.requires_grad] \
                    if isinstance(f, nn.Module) else []
                leaves = inp + params + ctx_leaves
                vjp = torch.autograd.grad(z, leaves, g_y[i], allow_unused=True)
                for (kind, j), g in zip(self.inputs[i], vjp):
                    if g is None:
                        continue
                    if kind == "Y":
                        g_y[j] = g_y[j] + g
                    else:
                        g_x[j] = g if g_x[j] is None else g_x[j] + g
                for t, g in zip(leaves[len(inp):], vjp[len(inp):]):
                    if g is not None:
                        grads[id(t)] = g if id(t) not in grads else grads[id(t)] + g
            g_x[i] = g_y[i] if g_x[i] is None else g_x[i] + g_y[i]  # identity path X_i -> Y_i
        x = torch.cat(xs, dim=-1).detach()  # type: ignore[arg-type]
        return x, torch.cat(g_x, dim=-1)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the stack

class _WithReconstruction(torch.autograd.Function):
    """Runs the stack without a graph; backward reconstructs activations from the top output."""

    @staticmethod
    def forward(fctx: Any, stack: ReversibleStack, static_ctx: dict[str, Any],
                ctx_names: tuple[str, ...], x: Tensor, *tensors: Tensor) -> Tensor:
        ctx_tensors = tensors[:len(ctx_names)]
        ctx = {**static_ctx, **dict(zip(ctx_names, ctx_tensors))}
        rngs: list[list[RngState] | None] = []
        for layer in stack.layers:
            rng: list[RngState] | None = [] if stack.training else None
            x = layer(x, rng=rng, **ctx)
            rngs.append(rng)
        fctx.stack, fctx.static_ctx, fctx.ctx_names, fctx.rngs = stack, static_ctx, ctx_names, rngs
        fctx.params = tensors[len(ctx_names):]
        fctx.save_for_backward(x, *ctx_tensors)  # only the top output (and the context)
        return x

    @staticmethod
    @once_differentiable
    def backward(fctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        y, *ctx_tensors = fctx.saved_tensors
        leaves = [t.detach().requires_grad_() for t in ctx_tensors]
        ctx = {**fctx.static_ctx, **dict(zip(fctx.ctx_names, leaves))}
        grads: dict[int, Tensor] = {}
        y = y.detach()
        for layer, rng in zip(reversed(fctx.stack.layers), reversed(fctx.rngs)):
            y, dy = layer.backward_step(y, dy, ctx, grads, rng)
        ctx_grads = [grads.get(id(t)) for t in leaves]
        param_grads = [grads.get(id(p)) for p in fctx.params]
        return (None, None, None, dy, *ctx_grads, *param_grads)


class ReversibleStack(nn.Module):
    """Split layers applied in order.

    ``memory_saving=True``: backprop with reconstruction, storing only the top output.
    ``memory_saving=False``: plain autograd over the same layers (the reference, and the fast
    path when memory is not the constraint).
    """

    def __init__(self, layers: Sequence[SplitLayer], memory_saving: bool = True) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.memory_saving = memory_saving

    def forward(self, x: Tensor, **ctx: Any) -> Tensor:
        if not (self.memory_saving and torch.is_grad_enabled()):
            for layer in self.layers:
                x = layer(x, **ctx)
            return x
        names = tuple(k for k, v in ctx.items() if isinstance(v, Tensor) and v.requires_grad)
        static = {k: v for k, v in ctx.items() if k not in names}
        params = self._trainable_parameters()
        return _WithReconstruction.apply(self, static, names, x,
                                         *(ctx[k] for k in names), *params)

    def _trainable_parameters(self) -> list[Tensor]:
        return [p for p in self.parameters() if p.requires_grad]  # deduplicated: shared alphas

    def inverse(self, y: Tensor, **ctx: Any) -> Tensor:
        for layer in reversed(self.layers):
            y = layer.inverse(y, **ctx)
        return y
