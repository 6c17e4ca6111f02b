"""Multi-split reversible layers and backpropagation with reconstruction (Zhao et al. 2021 §2-3).

A ``SplitLayer`` splits its input along the last dimension into n parts and computes, for
i = 1..n (Eq. 3)::

    Y_i = X_i + F_i(inputs_i),    inputs_i = (Y_1..Y_{i-1}, X_{i+1}..X_n) or a declared subset

F_i never reads X_i, so the layer inverts exactly from split n down to 1 (Eq. 4). A
``ReversibleStack`` of such layers keeps only its top output for backward: every lower
activation is recomputed from it (Algorithm 1), with one evaluation of each F_i serving both
the reconstruction and the vector-Jacobian product. ``keep_last=K`` spends memory for time:
the top K layers run under ordinary autograd and keep their activations.

The engine knows nothing about search or Transformers: each F_i is any callable
``f(inputs: list[Tensor], **context) -> Tensor`` shaped like X_i. Context keyword arguments are
passed to every F_i; context tensors that require grad (an encoder output read by a decoder)
receive their gradients.

Randomness: in training every layer draws one seed per F_i from the caller's CPU generator
and runs F_i on a generator seeded with it, in both modes, so replaying F_i's dropout needs
8 bytes per F_i (saved for backward, counted by ``saved_tensors_hooks``) instead of a 5 KB
generator state, and the bytes kept stay flat in depth.

Parameters: those the modules among the F_i hold (``param_slots``). Backward recomputes F_i
with the tensors held in forward (a ``torch.func.functional_call`` swap is undone by then), and
differentiates those that required grad in forward, with the others frozen, so the recomputed
graph is the forward's: the bilevel alpha step freezes the weights only while it builds its
graph. A tensor F_i reads that no module holds (a closure's layer) fails the first backward.

Precision: the stream (the X/Y additions and the reconstruction) is kept in the stack's
``stream_dtype`` (float64 makes reconstruction exact for float32 F_i) or in the dtype of its
input, while F_i compute in the input's dtype, or lower under autocast; the recomputation in
backward runs under the autocast state of the forward, so it evaluates the same function.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from nasframe.engine.param_slots import (
    Slot,
    bound,
    check_owned,
    held,
    label,
    requiring_grad,
    slots_of,
    unique,
)

__all__ = ["SplitLayer", "ReversibleStack", "default_inputs", "parse_inputs"]

Ref = tuple[str, int]  # ("Y", j) or ("X", k), 0-based split index
Autocast = tuple[str, bool, torch.dtype, bool]  # device type, enabled, dtype, cache


def default_inputs(n: int) -> list[list[Ref]]:
    """The paper's topology: F_i reads Y_1..Y_{i-1} and X_{i+1}..X_n (0-based here)."""
    return [[("Y", j) for j in range(i)] + [("X", k) for k in range(i + 1, n)] for i in range(n)]


def parse_inputs(topology: Sequence[Sequence[str]]) -> list[list[Ref]]:
    """``[["X2"], ["Y1"]]`` (1-based, as in the DSL) -> ``[[("X", 1)], [("Y", 0)]]``."""
    return [[(ref[0], int(ref[1:]) - 1) for ref in refs] for refs in topology]


# ----------------------------------------------------------------------------- RNG replay

def _draw_seeds(n: int) -> Tensor:
    """One seed per F_i from the caller's CPU generator: all a training layer draws from it."""
    return torch.randint(0, 2**62, (n,), dtype=torch.int64)


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run the block on generators seeded with ``seed``; leave the caller's generators as
    they were (its stream moved only by ``_draw_seeds``)."""
    if seed is None:
        yield
        return
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else [], device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        if cuda:
            index = device.index if device.index is not None else torch.cuda.current_device()
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def _autocast_state(device: torch.device) -> Autocast:
    kind = device.type
    return (kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind),
            torch.is_autocast_cache_enabled())


def _autocast(state: Autocast) -> contextlib.AbstractContextManager[Any]:
    kind, enabled, dtype, cache = state
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(kind, dtype=dtype, enabled=True, cache_enabled=cache)


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
        self._slots: list[list[Slot]] | None = None  # per F_i, found on first use
        self._checked: set[int] = set()  # F_i whose recomputed graph was checked

    def _apply(self, fn: Any, recurse: bool = True) -> SplitLayer:
        self._slots, self._checked = None, set()  # a conversion may swap parameter objects
        return super()._apply(fn, recurse)

    def slots(self, i: int) -> list[Slot]:
        """Where F_i's parameters live (``nasframe.engine.param_slots``), found once."""
        if self._slots is None:
            self._slots = [slots_of(f) for f in self.functions]
        return self._slots[i]

    def held(self) -> list[list[Tensor]]:
        """The parameter tensors each F_i holds now, one per slot: what forward runs with."""
        return [held(self.slots(i)) for i in range(self.n)]

    @property
    def n(self) -> int:
        return len(self.functions)

    def _gather(self, i: int, ys: list[Tensor | None], xs: list[Tensor | None]) -> list[Tensor]:
        return [(ys if kind == "Y" else xs)[j] for kind, j in self.inputs[i]]  # type: ignore[misc]

    def _call(self, i: int, inputs: list[Tensor], compute: torch.dtype | None,
              ctx: dict[str, Any]) -> Tensor:
        """F_i on its inputs cast to ``compute`` (None: the stream's dtype)."""
        if compute is not None:
            inputs = [t.to(compute) for t in inputs]
        return self.functions[i](inputs, **ctx)

    def forward(self, x: Tensor, seeds: list[Tensor | None] | None = None,
                compute: torch.dtype | None = None, **ctx: Any) -> Tensor:
        """Eq. 3. In training each F_i runs on its own seed; ``seeds`` (a list) receives them.
        ``compute``: the dtype F_i reads (None: ``x``'s); the stream stays in ``x``'s."""
        xs: list[Tensor | None] = list(x.chunk(self.n, dim=-1))
        ys: list[Tensor | None] = [None] * self.n
        drawn = _draw_seeds(self.n) if self.training else None
        if seeds is not None:
            seeds.append(drawn)
        per_f = drawn.tolist() if drawn is not None else [None] * self.n
        for i in range(self.n):
            with _seeded(per_f[i], x.device):
                z = self._call(i, self._gather(i, ys, xs), compute, ctx)
            ys[i] = xs[i] + z.to(x.dtype)  # the stream keeps its dtype
        return torch.cat(ys, dim=-1)  # type: ignore[arg-type]

    def inverse(self, y: Tensor, compute: torch.dtype | None = None, **ctx: Any) -> Tensor:
        """Eq. 4: recover X from Y, split n first."""
        ys: list[Tensor | None] = list(y.chunk(self.n, dim=-1))
        xs: list[Tensor | None] = [None] * self.n
        for i in reversed(range(self.n)):
            xs[i] = ys[i] - self._call(i, self._gather(i, ys, xs), compute, ctx).to(y.dtype)
        return torch.cat(xs, dim=-1)  # type: ignore[arg-type]

    def backward_step(self, y: Tensor, dy: Tensor, ctx: dict[str, Any],
                      grads: dict[int, Tensor], seeds: Tensor | None = None,
                      autocast: Autocast | None = None, input_grad: bool = True,
                      compute: torch.dtype | None = None, trainable: set[int] | None = None,
                      params: list[list[Tensor]] | None = None) -> tuple[Tensor, Tensor | None]:
        """Algorithm 1: from (Y, dY) return (X, dX); add parameter and context grads to ``grads``.

        ``grads`` maps ``id(tensor)`` to its accumulated gradient, for the parameters of every
        F_i and the context tensors in ``ctx`` that require grad. ``seeds``: those the forward
        drew; ``autocast``: its autocast state; ``input_grad=False`` (the bottom layer when
        nothing below needs a gradient) skips dX and every VJP into X; ``compute``: the dtype
        F_i read in forward; ``trainable``: the ``id``s of the parameters that get gradients
        (None: those that require grad now); ``params``: the tensors each F_i held in forward
        (``held()``, None: those it holds now), held again while it is recomputed.
        """
        ys = [c.detach().requires_grad_() for c in y.chunk(self.n, dim=-1)]
        g_y = list(dy.chunk(self.n, dim=-1))
        g_x: list[Tensor | None] = [None] * self.n
        xs: list[Tensor | None] = [None] * self.n
        ctx_leaves = [v for v in ctx.values() if isinstance(v, Tensor) and v.requires_grad]
        per_f = seeds.tolist() if seeds is not None else [None] * self.n
        amp = autocast or _autocast_state(y.device)
        for i in reversed(range(self.n)):
            inp = self._gather(i, ys, xs)  # type: ignore[arg-type]
            tensors = params[i] if params is not None else held(self.slots(i))
            live = [t for t in unique(tensors) if t.requires_grad]
            wants = [t for t in live if trainable is None or id(t) in trainable]
            # Parameters that require grad now but did not in forward stay constants, so the
            # recomputed graph is the forward's and saves nothing for gradients nobody wants.
            idle = [t for t in live if trainable is not None and id(t) not in trainable]
            with bound(self.slots(i), tensors), _seeded(per_f[i], y.device), \
                    torch.enable_grad(), _autocast(amp), requiring_grad(idle, False):
                z = self._call(i, inp, compute, ctx)  # serves reconstruction and the VJP
            with torch.enable_grad():
                z = z.to(y.dtype)
            x_i = (ys[i] - z).detach()  # Eq. 4
            xs[i] = x_i.requires_grad_() if input_grad else x_i
            if z.requires_grad:
                if i not in self._checked:  # once per F_i: a graph walk
                    check_owned(z, [*inp, *live, *ctx_leaves],
                                f"split {i + 1} of a SplitLayer ({label(self.functions[i])})")
                    self._checked.add(i)
                wanted = [(r, t) for r, t in zip(self.inputs[i], inp) if t.requires_grad]
                leaves = [t for _, t in wanted] + wants + ctx_leaves
                vjp = torch.autograd.grad(z, leaves, g_y[i], allow_unused=True)
                for ((kind, j), _), g in zip(wanted, vjp):
                    if g is None:
                        continue
                    if kind == "Y":
                        g_y[j] = g_y[j] + g
                    else:
                        g_x[j] = g if g_x[j] is None else g_x[j] + g
                for t, g in zip(leaves[len(wanted):], vjp[len(wanted):]):
                    if g is not None:
                        grads[id(t)] = g if id(t) not in grads else grads[id(t)] + g
            g_x[i] = g_y[i] if g_x[i] is None else g_x[i] + g_y[i]  # identity path X_i -> Y_i
        x = torch.cat(xs, dim=-1).detach()  # type: ignore[arg-type]
        return x, (torch.cat(g_x, dim=-1) if input_grad else None)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the stack

class _WithReconstruction(torch.autograd.Function):
    """Runs layers without a graph; backward reconstructs activations from the top output.

    Saved for backward (all through ``save_for_backward``, so torch's memory tools see them):
    the top output, the context tensors that need a gradient, and one int64 seed per F_i.
    Also kept: the parameter tensors each F_i held (``layer_params``), which backward
    holds again while recomputing, since a swap (``torch.func.functional_call``) is undone by
    then.
    """

    @staticmethod
    def forward(fctx: Any, layers: Sequence[SplitLayer], layer_params: list[list[list[Tensor]]],
                static_ctx: dict[str, Any], ctx_names: tuple[str, ...],
                compute: torch.dtype | None, x: Tensor, *tensors: Tensor) -> Tensor:
        # Detached: the F_i must see plain tensors, not no-grad views of grad-requiring ones
        # (module hooks such as MemTracker's register gradient hooks on their inputs).
        x = x.detach()
        ctx_tensors = [t.detach() for t in tensors[:len(ctx_names)]]
        ctx = {**static_ctx, **dict(zip(ctx_names, ctx_tensors))}
        seeds: list[Tensor | None] = []
        for layer in layers:
            x = layer(x, seeds=seeds, compute=compute, **ctx)
        drawn = [s for s in seeds if s is not None]
        all_seeds = torch.cat(drawn) if drawn else x.new_zeros(0, dtype=torch.int64)
        fctx.layers, fctx.held, fctx.static_ctx = layers, layer_params, static_ctx
        fctx.ctx_names = ctx_names
        fctx.compute = compute
        fctx.seeded = [s is not None for s in seeds]
        fctx.autocast = _autocast_state(x.device)
        fctx.params = tensors[len(ctx_names):]
        fctx.save_for_backward(x, all_seeds, *ctx_tensors)  # only the top output (+ context)
        return x

    @staticmethod
    @once_differentiable
    def backward(fctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        y, all_seeds, *ctx_tensors = fctx.saved_tensors
        needs = fctx.needs_input_grad
        leaves = [t.detach().requires_grad_(bool(need))
                  for t, need in zip(ctx_tensors, needs[6:6 + len(ctx_tensors)])]
        ctx = {**fctx.static_ctx, **dict(zip(fctx.ctx_names, leaves))}
        grads: dict[int, Tensor] = {}
        layers, seeded = fctx.layers, fctx.seeded
        ends = [0]
        for layer, has in zip(layers, seeded):
            ends.append(ends[-1] + (layer.n if has else 0))
        # The parameters that required grad in forward, not those that do now: a graph built
        # with the weights frozen (the alpha step) wants no weight gradient, and computing one
        # would double the VJPs' matrix products.
        trainable = {id(p) for p in fctx.params}
        y, g = y.detach(), dy
        for k in reversed(range(len(layers))):
            seeds = all_seeds[ends[k]:ends[k + 1]] if seeded[k] else None
            y, g = layers[k].backward_step(y, g, ctx, grads, seeds, fctx.autocast,
                                           input_grad=k > 0 or needs[5], compute=fctx.compute,
                                           trainable=trainable, params=fctx.held[k])
        ctx_grads = [grads.get(id(t)) for t in leaves]
        param_grads = [grads.get(id(p)) for p in fctx.params]
        return (None, None, None, None, None, g, *ctx_grads, *param_grads)


class ReversibleStack(nn.Module):
    """Split layers applied in order.

    ``memory_saving=True``: backprop with reconstruction, storing only the top output, except
    for the top ``keep_last`` layers, which run under ordinary autograd and keep their
    activations (a memory budget: 0 is the full saving, ``len(layers)`` plain autograd).
    ``memory_saving=False``: plain autograd over the same layers (the reference, and the fast
    path when memory is not the constraint).

    ``stream_dtype``: the dtype of the stream, that is the X/Y additions, the stored top
    output and the reconstruction (None: the input's), where a graph is built
    (``into_stream``).
    The F_i still read and compute in the input's dtype. With float64 under a float32 input,
    ``Y_i = X_i + F_i`` is exact whenever the bits of the two terms span at most 53 (24 each,
    plus the gap between their exponents), so ``X_i = Y_i - F_i`` recovers X bitwise and
    the F_i in backward see the very inputs of the forward: the gradients are those of
    ordinary autograd. A float32 stream drifts ~1e-6 per layer instead, and a ReLU or max
    pooling that flips on the drift gives a wrong gradient entry (README, "Exact
    reconstruction in float32").
    """

    def __init__(self, layers: Sequence[SplitLayer], memory_saving: bool = True,
                 keep_last: int = 0, stream_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if keep_last < 0:
            raise ValueError(f"keep_last must be >= 0, got {keep_last}")
        self.layers = nn.ModuleList(layers)
        self.memory_saving = memory_saving
        self.keep_last = keep_last
        self.stream_dtype = stream_dtype

    def into_stream(self, x: Tensor,
                    graph: bool | None = None) -> tuple[Tensor, torch.dtype | None]:
        """``x`` in the stream dtype, and the dtype the F_i read (None: the same).

        The stream dtype applies where a graph is built (``graph``, default: grad mode on),
        which is where reconstruction or its reference runs; a forward without one (inference,
        decoding) reconstructs nothing and keeps ``x``'s dtype, which the casts would only slow
        (6% per decoding step, beam 1, d=240 on CPU). MPS has no float64: there the stream
        always stays in ``x``'s dtype."""
        graph = torch.is_grad_enabled() if graph is None else graph
        stream = self.stream_dtype
        if not graph or stream is None or stream == x.dtype or x.device.type == "mps":
            return x, None
        return x.to(stream), x.dtype

    def forward(self, x: Tensor, **ctx: Any) -> Tensor:
        x, compute = self.into_stream(x)
        y = self._run(x, compute, ctx)
        return y if compute is None else y.to(compute)

    def _run(self, x: Tensor, compute: torch.dtype | None, ctx: dict[str, Any]) -> Tensor:
        if not (self.memory_saving and torch.is_grad_enabled()):
            for layer in self.layers:
                x = layer(x, compute=compute, **ctx)
            return x
        split = max(len(self.layers) - self.keep_last, 0)
        lower = list(self.layers)[:split]
        if lower:
            names = tuple(k for k, v in ctx.items() if isinstance(v, Tensor) and v.requires_grad)
            static = {k: v for k, v in ctx.items() if k not in names}
            held_now = [layer.held() for layer in lower]
            # each parameter once (shared alphas appear in several layers)
            params = [t for t in unique(t for layer in held_now for f in layer for t in f)
                      if t.requires_grad]
            x = _WithReconstruction.apply(lower, held_now, static, names, compute, x,
                                          *(ctx[k] for k in names), *params)
        for layer in list(self.layers)[split:]:
            x = layer(x, compute=compute, **ctx)
        return x

    def inverse(self, y: Tensor, **ctx: Any) -> Tensor:
        """X from the top output Y (Eq. 4, top layer first), in the stream ``forward`` uses
        in the same grad mode."""
        y, compute = self.into_stream(y)
        for layer in reversed(self.layers):
            y = layer.inverse(y, compute=compute, **ctx)
        return y if compute is None else y.to(compute)

    @torch.no_grad()
    def drift(self, x: Tensor, **ctx: Any) -> float:
        """The largest |X' - X| over the stack's input when X' is reconstructed from the top
        output as backward does, in the stream dtype; run in eval mode (the inverse replays no
        dropout), whatever the stack's mode."""
        was_training = self.training
        self.eval()
        try:
            s, compute = self.into_stream(x, graph=True)  # the stream training runs in
            y = s
            for layer in self.layers:
                y = layer(y, compute=compute, **ctx)
            for layer in reversed(self.layers):
                y = layer.inverse(y, compute=compute, **ctx)
            return (y - s).abs().max().item()
        finally:
            self.train(was_training)

