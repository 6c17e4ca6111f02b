"""Memory measurement: bytes kept for backward (any device), CUDA peak memory, and the peak of a
whole training step by category (``step_peak``).

``saved_bytes`` counts the unique storages that autograd keeps between forward and backward,
the memory that backprop with reconstruction removes; parameters are left out because both
methods keep them anyway. On CUDA ``peak_bytes`` adds what backward itself allocates.
"""
from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from nasframe.engine.param_slots import requiring_grad

__all__ = ["SavedBytes", "saved_bytes", "peak_bytes", "allocated_peak_bytes", "device_peak_bytes",
           "measure_step", "choose_keep_layers", "layer_saved_bytes", "step_peak", "StepPeak",
           "parse_bytes"]


@dataclass
class SavedBytes:
    """What a forward pass saved for backward: unique storage bytes and tensor count."""

    bytes: int
    tensors: int

    @property
    def mib(self) -> float:
        return self.bytes / 2**20


def saved_bytes(forward: Callable[[], Tensor], exclude: Iterable[Tensor] = ()) -> SavedBytes:
    """Run ``forward`` and count the unique storages saved for backward (excluding ``exclude``).

    The result of ``forward`` is dropped afterwards, so the graph is freed.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}
    count = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal count
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in skip and ptr not in seen:
            seen[ptr] = storage.nbytes()
        count += 1
        # A detached alias, not ``t``: a node that saves its own output through a pack hook
        # returning that very tensor closes a reference cycle (output -> node -> output) that
        # Python's collector cannot see, and the whole graph would outlive ``forward``.
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return SavedBytes(sum(seen.values()), count)


def peak_bytes(step: Callable[[], Any], device: torch.device) -> int | None:
    """Peak CUDA memory allocated by ``step`` above what was allocated before it (None on CPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


class _PeakTracker(TorchDispatchMode):
    """Counts the storages that ops allocate while it is active, freed when their last
    tensor goes; ``peak`` is the most alive at once. A lighter stand-in for torch's MemTracker
    (whose per-module snapshots grow with model size) when only the peak is wanted."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, Tensor) and t.device.type != "meta"}
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                if storage.data_ptr() not in inputs:  # a view or in-place result is no new memory
                    self._track(storage)
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = storage.data_ptr()
        if key in self.live or storage.nbytes() == 0:
            return
        self.live[key] = storage.nbytes()
        self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)


def allocated_peak_bytes(step: Callable[[], Any]) -> int:
    """Peak bytes allocated by ops during ``step`` (any device, forward and backward), above
    what existed before it; what ``step`` returns is dropped first."""
    tracker = _PeakTracker()
    with tracker:
        out = step()
    del out
    return tracker.peak


def device_peak_bytes(step: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated during ``step`` above what existed before it, on any device: the
    CUDA allocator's counters on a GPU (``peak_bytes``), ``allocated_peak_bytes`` elsewhere."""
    peak = peak_bytes(step, device)
    return allocated_peak_bytes(step) if peak is None else peak


def measure_step(model: torch.nn.Module, src: Tensor, tgt: Tensor) -> dict[str, float | None]:
    """Bytes kept for backward and (CUDA) peak bytes of one forward + backward of ``model``.

    The loss is a plain sum of log-probabilities; what is measured is the graph, not the loss.
    """
    model.train()
    params = list(model.parameters())
    kept = saved_bytes(lambda: model(src, tgt).log_softmax(-1).sum(), exclude=params)

    def step() -> None:
        model(src, tgt).log_softmax(-1).sum().backward()
        model.zero_grad(set_to_none=True)

    peak = peak_bytes(step, src.device)
    if peak is None:
        step()  # run it anyway: the figure must come from a step that works
    return {"saved_bytes": kept.bytes, "peak_bytes": peak}


def layer_saved_bytes(layers: Sequence[torch.nn.Module], x: Tensor, **ctx: Any) -> list[int]:
    """Bytes each layer keeps for backward under ordinary autograd, bottom to top.

    Each layer is measured on the output of the ones below (computed without a graph), so the
    figures are what ``ReversibleStack(keep_last=K)`` adds per kept layer; the layer's input is
    counted, as a kept layer holds it.
    """
    params = [p for layer in layers for p in layer.parameters()]
    sizes = []
    for layer in layers:
        x_in = x.detach().requires_grad_(x.requires_grad)
        sizes.append(saved_bytes(lambda m=layer, a=x_in: m(a, **ctx), exclude=params).bytes)
        with torch.no_grad():
            x = layer(x, **ctx)
    return sizes


def choose_keep_layers(per_layer_bytes: Sequence[int], budget: int) -> int:
    """The largest K whose top K layers' kept bytes fit in ``budget`` (0 when none fits).

    ``per_layer_bytes`` is bottom to top, as ``layer_saved_bytes`` returns it; the budget is
    what may be spent above the reconstruction's own (flat) cost.
    """
    total, k = 0, 0
    for size in reversed(per_layer_bytes):
        if total + size > budget:
            break
        total += size
        k += 1
    return k


@dataclass
class StepPeak:
    """The peak bytes of a step and what they were at that moment (categories add up to
    ``total``); ``how`` names the tool that measured it."""

    total: int
    categories: dict[str, int]
    how: str


#: MemTracker's categories under the names the reports use.
_MEMTRACKER_NAMES = {"PARAM": "weights", "BUFFER": "buffers", "GRAD": "gradients",
                     "OPT": "optimiser states", "ACT": "activations", "TEMP": "temporaries",
                     "OTH": "other"}


def _tensor_bytes(tensors: Iterable[Any]) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, Tensor) and t.device.type != "meta":
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def _optimiser_bytes(optimizers: Sequence[torch.optim.Optimizer]) -> int:
    return _tensor_bytes(v for opt in optimizers for state in opt.state.values()
                         for v in state.values())


def step_peak(step: Callable[[Callable[[], None]], Any], model: torch.nn.Module,
              optimizers: Sequence[torch.optim.Optimizer], device: torch.device,
              tracker: str = "memtracker") -> StepPeak:
    """Peak memory of ``step`` (one full update: forward, backward, optimiser step), everything
    alive counted: weights, gradients, optimiser states, activations and temporaries.

    ``step(between)`` must call ``between()`` before each forward pass after its first (torch's
    MemTracker refuses a module's second forward otherwise). Run ``step`` once before, so that
    the optimiser states exist as they do in every later update.

    On CUDA the peak is ``torch.cuda.max_memory_allocated``; weights, optimiser states and the
    gradients left after the step are counted directly and the rest of the peak is activations
    and temporaries. On CPU ``tracker="memtracker"`` uses torch's MemTracker (by category, slow:
    tens of seconds per step on a busy CPU); ``"light"`` uses ``allocated_peak_bytes`` (what the
    step allocates, activations, gradients and temporaries together) above the weights and
    optimiser states that exist before it.
    """
    params = list(model.parameters()) + list(model.buffers())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(lambda: None)
        torch.cuda.synchronize(device)
        total = torch.cuda.max_memory_allocated(device)
        cats = {"weights": _tensor_bytes(params), "optimiser states": _optimiser_bytes(optimizers),
                "gradients (after the step)": _tensor_bytes(p.grad for p in params)}
        cats["activations and temporaries"] = total - sum(cats.values())
        return StepPeak(total, cats, "torch.cuda.max_memory_allocated")
    if tracker == "light":
        before = {"weights": _tensor_bytes(params),
                  "optimiser states": _optimiser_bytes(optimizers),
                  "gradients (before the step)": _tensor_bytes(p.grad for p in params)}
        during = allocated_peak_bytes(lambda: step(lambda: None))
        cats = {**before, "allocated by the step (activations, gradients, temporaries)": during}
        return StepPeak(sum(cats.values()), cats, "nasframe.engine.memory.allocated_peak_bytes")
    from torch.distributed._tools.mem_tracker import MemTracker

    mt = MemTracker()
    mt.track_external(model, *optimizers)
    with mt:
        # MemTracker hooks each parameter's gradient at its module's first forward and fails on
        # one frozen then (the bilevel alpha step freezes the weights, a user may freeze an
        # embedding): hook them all now, the frozen ones briefly trainable. A hook on a
        # parameter that gets no gradient never fires.
        hook_all = getattr(mt, "_track_module_params_and_buffers", None)
        if hook_all is not None:
            with requiring_grad(list(model.parameters()), True):
                hook_all(model, install_grad_hooks=True)
        step(mt.reset_mod_stats)  # per-module stats only; the global peak is kept
    snap = mt.get_tracker_snapshot("peak").get(device, {})
    cats = {_MEMTRACKER_NAMES.get(getattr(k, "name", str(k)), str(k)): int(v)
            for k, v in snap.items() if str(k) != "Total"}
    return StepPeak(sum(cats.values()), cats,
                    "torch.distributed._tools.mem_tracker.MemTracker")


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """``"2GiB"`` -> 2147483648; ``"500MB"``, ``"1.5 GiB"``, plain byte counts."""
    from nasframe.base.errors import ConfigError

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if m is None or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"memory size {text!r}: write a number with a unit, e.g. 2GiB or "
                          "500MB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
