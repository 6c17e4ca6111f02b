"""``--memory-limit``: how many reversible layers may keep their activations in a budget.

Backprop with reconstruction keeps almost nothing per layer; each layer that keeps its
activations instead (``ModelConfig.keep_layers``, the top K of every stack) saves one
recomputation and costs what it holds for backward. This measures that cost per layer on a
real batch and picks the largest K whose kept layers fit the budget.
"""
from __future__ import annotations

import torch

from nasframe.engine.memory import layer_saved_bytes, parse_bytes
from nasframe.engine.reversible import ReversibleStack
from nasframe.engine.supernet import Supernet
from nasframe.text.data import Batch

__all__ = ["keep_layers_for", "per_layer_bytes"]


def per_layer_bytes(net: Supernet, batch: Batch) -> dict[str, list[int]]:
    """Bytes each layer of the reversible stacks keeps for backward under ordinary autograd,
    bottom to top, on ``batch`` (the supernet's current choice mode)."""
    src_mask, tgt_mask = batch.src.eq(net.config.pad_id), batch.tgt_in.eq(net.config.pad_id)
    with torch.no_grad():
        memory, memory_mask = net.encode(batch.src)
    out: dict[str, list[int]] = {}
    if isinstance(net.encoder, ReversibleStack):
        # the layers' input as training runs them: in the stack's stream dtype
        x, compute = net.encoder.into_stream(net.embed(batch.src), graph=True)
        out["encoder"] = layer_saved_bytes(list(net.encoder.layers), x, compute=compute,
                                           padding_mask=src_mask)
    if isinstance(net.decoder, ReversibleStack):
        x, compute = net.decoder.into_stream(net.embed(batch.tgt_in), graph=True)
        out["decoder"] = layer_saved_bytes(list(net.decoder.layers), x, compute=compute,
                                           padding_mask=tgt_mask, memory=memory,
                                           memory_mask=memory_mask)
    return out


def keep_layers_for(net: Supernet, batch: Batch, limit: str | int) -> tuple[int, int]:
    """(K, bytes the top K layers of every stack keep): the largest K within ``limit``
    (bytes, or a size such as ``"2GiB"``) on ``batch``."""
    budget = parse_bytes(limit) if isinstance(limit, str) else int(limit)
    sizes = per_layer_bytes(net, batch)
    deepest = max((len(s) for s in sizes.values()), default=0)
    k, spent = 0, 0
    while k < deepest:
        cost = sum(sum(s[len(s) - k - 1:]) for s in sizes.values() if len(s) > k)
        if cost > budget:
            break
        k, spent = k + 1, cost
    return k, spent
