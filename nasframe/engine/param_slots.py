"""Where a function's parameters live, so that backward recomputes it with forward's tensors.

Backprop with reconstruction calls each F_i again in backward. Whatever tensors its modules
hold then are the ones it computes with. ``torch.func.functional_call`` swaps
``module._parameters[name]`` for the call and puts the originals back when it returns, which
is before backward. Recomputing then would use other weights than forward did, and no gradient
would reach the swapped tensors. So the engine reads, at forward, the tensors each F_i holds
(``held``), and holds them again for the recomputation (``bound``).

A function's slots, ``(module, name)`` for each parameter, are found once (``slots_of``).
Walking a choice node's module tree on every step costs more than its small VJPs; a slot lookup
is a dict access. Replacing a submodule after the first step needs the slots rebuilt: any
``nn.Module._apply`` (``.to()``, ``.double()``) does that.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from nasframe.base.errors import SpaceError

__all__ = ["Slot", "slots_of", "held", "unique", "bound", "requiring_grad", "foreign_leaves",
           "check_owned", "label"]

Slot = tuple[nn.Module, str]
"""Where a parameter or buffer lives: its module and attribute name."""


def slots_of(f: Any) -> list[Slot]:
    """``(module, name)`` of every parameter of ``f`` (none unless it is a module); a tensor
    shared by two modules has two slots."""
    if not isinstance(f, nn.Module):
        return []
    return [(m, name) for m in f.modules() for name, p in m._parameters.items() if p is not None]


def held(slots: Sequence[Slot]) -> list[Tensor]:
    """The tensors the slots hold now, one per slot."""
    return [m._parameters[name] for m, name in slots]  # type: ignore[misc]


def unique(tensors: Iterable[Tensor]) -> list[Tensor]:
    """Each tensor once, in first-seen order."""
    seen: set[int] = set()
    out = []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


@contextlib.contextmanager
def bound(slots: Sequence[Slot], tensors: Sequence[Tensor]) -> Iterator[None]:
    """Hold ``tensors`` (one per slot) in ``slots`` for the block, then put back what was
    there. A no-op where they already are, which is every step outside a swap."""
    swapped = []
    for (m, name), t in zip(slots, tensors):
        now = m._parameters[name]
        if now is not t:
            swapped.append((m, name, now))
            m._parameters[name] = t  # type: ignore[assignment]
    try:
        yield
    finally:
        for m, name, now in reversed(swapped):
            m._parameters[name] = now


@contextlib.contextmanager
def requiring_grad(params: Sequence[Tensor], flag: bool) -> Iterator[None]:
    """Set ``requires_grad`` of ``params`` (leaves) to ``flag`` for the block, then put back
    what each had."""
    was = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(flag)
    try:
        yield
    finally:
        for p, flag_before in zip(params, was):
            p.requires_grad_(flag_before)


def foreign_leaves(out: Tensor, known: Iterable[Tensor]) -> list[Tensor]:
    """Leaf tensors that require grad and that ``out``'s graph reaches other than through
    ``known`` (the tensors whose gradients the caller takes): what a function reads besides
    its inputs and its modules' parameters, such as an ``nn.Linear`` in a closure."""
    known = list(known)
    ids = {id(t) for t in known}
    stop = {t.grad_fn for t in known if t.grad_fn is not None}
    seen: set[torch.autograd.graph.Node] = set()
    todo = [out.grad_fn]
    found = []
    while todo:
        node = todo.pop()
        if node is None or node in seen or node in stop:
            continue
        seen.add(node)
        leaf = getattr(node, "variable", None)  # an AccumulateGrad node
        if leaf is not None:
            if id(leaf) not in ids:
                found.append(leaf)
            continue
        todo.extend(fn for fn, _ in node.next_functions)
    return found


def check_owned(out: Tensor, known: Iterable[Tensor], where: str) -> None:
    """Raise ``SpaceError`` (a ``ValueError``) if ``out``'s graph reaches tensors that require
    grad beyond ``known``: backprop with reconstruction could return no gradient to them, where
    ordinary autograd would. The function's declaration is at fault, so the CLI prints one
    line."""
    foreign = foreign_leaves(out, known)
    if foreign:
        shapes = ", ".join(str(tuple(t.shape)) for t in foreign[:4])
        raise SpaceError(
            f"{where} reads {len(foreign)} tensor(s) that require grad but are not parameters "
            f"of its modules (shapes {shapes}), e.g. a layer captured in a closure. Backprop "
            "with reconstruction gets no gradient to them: make the function an nn.Module "
            "that owns them, or set memory_saving=False.")


def label(f: Any) -> str:
    """A short name for ``f`` in messages: the first ``name`` string among its modules (a
    choice node's, such as ``decoder.layer1.split2``), else its type."""
    if isinstance(f, nn.Module):
        for m in f.modules():
            name = getattr(m, "name", None)
            if isinstance(name, str) and name:
                return name
    return type(f).__name__
