"""Memory measurement: bytes kept for backward (any device) and CUDA peak memory.

``saved_bytes`` counts the unique storages that autograd keeps between forward and backward,
the memory that backprop with reconstruction removes; parameters are left out because both
methods keep them anyway. On CUDA ``peak_bytes`` adds what backward itself allocates.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["SavedBytes", "saved_bytes", "peak_bytes", "allocated_peak_bytes", "measure_step",
           "choose_keep_layers", "layer_saved_bytes"]


@dataclass
class SavedBytes:
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
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return SavedBytes(sum(seen.values()), count)


def peak_bytes(step: Callable[[], None], device: torch.device) -> int | None:
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
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and t.device.type != "meta":
                self._track(t.untyped_storage())
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
