"""The size of a model, known before it is built: a recorded config may ask for an absurd
one, so ``check_model_size`` refuses it before a byte is allocated (field bounds, op modules,
and the exact parameter count against ``nasframe.base.limits.max_params``).

The count builds each distinct op once on the meta device, with in-place initialisers
skipped, and remembers it: a fraction of a build, whatever ``blocks``, and no random numbers
drawn (the model built afterwards gets the same weights as without the check).
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from nasframe.base.errors import ConfigError, SpaceError
from nasframe.base.limits import check_params, check_vocab_size, format_count
from nasframe.dsl import ops
from nasframe.dsl.space import OpSet, OpSpec, SearchSpace, Stack
from nasframe.engine.backbones import FactorisedEmbedding
from nasframe.run.model_config import ModelConfig

if TYPE_CHECKING:
    from nasframe.dsl.architecture import Architecture

__all__ = ["MAX_OPS", "check_model_size", "count_parameters", "make_op", "model_parameters"]

MAX_OPS = 1 << 18
"""Op modules (candidates included) a model may hold: each is a Python object built one at a
time, so a recorded config of 10^7 layers would exhaust memory before any parameter."""


def count_parameters(module: nn.Module) -> int:
    """The number of parameters of ``module`` (every element of every parameter)."""
    return sum(p.numel() for p in module.parameters())


def model_parameters(space: SearchSpace, config: ModelConfig, vocab_size: int,
                     arch: Architecture | None = None) -> int:
    """The exact parameter count of ``Supernet(space, config, vocab_size, arch)`` without
    building it: the embedding and every distinct op built once on the meta device (nothing
    allocated), each op counted as many times as the model holds it, plus the two final
    norms and the alphas. Costs a fraction of a build, whatever ``blocks``."""
    d = config.d_model
    total = _embedding_size(vocab_size, config.embed_dim or d, d, config.pad_id) \
        + 2 * _norm_size(d)
    for part, spec in space.parts():
        stack = isinstance(spec, Stack)
        width = d // spec.splits if stack else d
        norm = config.split_norm if stack else "post"
        causal = part == "decoder"
        per_block = 0
        for layer in range(1, spec.layers + 1):
            for unit, what in spec.units():
                if isinstance(what, OpSpec):
                    held = [what]
                elif arch is not None:
                    held = [what.get(arch.choices[f"{part}.layer{layer}.{unit}"])]
                else:
                    held = list(what.ops)
                    total += len(held)  # the node's alphas, shared by every block
                for o in held:
                    per_block += _op_size(ops.op_factory(o.name), o, width, causal, norm,
                                          config.dropout, d)
        total += config.blocks * per_block
    return total


def check_model_size(space: SearchSpace, config: ModelConfig, vocab_size: int,
                arch: Architecture | None) -> int:
    """Refuse, before anything is allocated, a model that a recorded config made absurd: field
    values out of bounds (also those set by ``model_copy``, which does not validate), too many
    op modules to build, or more parameters than ``nasframe.base.limits.max_params``. Returns the
    vocabulary size as an int. On the meta device (counting) only the cheap checks run."""
    type(config)(**config.model_dump())  # the field bounds, as one ConfigError
    vocab_size = check_vocab_size(vocab_size)
    if config.pad_id >= vocab_size:
        raise ConfigError(f"model.pad_id: {config.pad_id} is not an id of a vocabulary of "
                          f"{vocab_size}")
    _check_widths(space, config.d_model)
    n_ops = _op_count(space, config.blocks, arch is not None)
    if n_ops > MAX_OPS:
        raise ConfigError(f"model: {format_count(n_ops)} op modules (blocks x layers x "
                          f"candidates), above the limit {format_count(MAX_OPS)}")
    if torch.get_default_device().type != "meta":
        check_params(model_parameters(space, config, vocab_size, arch))
    return vocab_size


def _op_count(space: SearchSpace, blocks: int, fixed: bool) -> int:
    """Op modules a model holds: per block, every layer's units, each one op (an
    architecture's model, or a fixed unit) or all its candidates (a supernet)."""
    per_block = 0
    for _, spec in space.parts():
        units = sum(len(what) if isinstance(what, OpSet) and not fixed else 1
                    for _, what in spec.units())
        per_block += spec.layers * units
    return blocks * per_block


def make_op(spec: OpSpec, width: int, causal: bool, norm: str, dropout: float,
             d_model: int) -> nn.Module:
    """Build the op ``spec`` names at ``width``; a ``SpaceError`` says where it sits."""
    try:
        return ops.create_op(spec.name, width, causal=causal, dropout=dropout,
                             memory_dim=d_model, norm=norm, **spec.params)
    except SpaceError as err:  # name where the op sits: its width comes from d_model
        raise SpaceError(f"{spec.label} at width {width} (model.d_model={d_model}): {err}"
                         ) from None


# Sizes of the parts a model is made of, built once on the meta device and remembered. An
# op's key holds its registered factory, so an op registered again under its name is counted
# anew.

#: In-place methods that change a tensor's shape: the only in-place ops a count must run.
_RESHAPING = frozenset({"resize_", "resize_as_", "set_", "as_strided_", "squeeze_",
                        "unsqueeze_", "t_", "transpose_", "swapdims_", "swapaxes_"})


class _Counting(TorchFunctionMode):
    """Modules built for their shapes only: in-place fills of meta tensors (the initialisers'
    ``normal_``, ``clamp_``...) are skipped. On the meta device these run through torch's
    Python reference kernels, whose first use imports torch._dynamo (~1.5 s)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.endswith("__") and name not in _RESHAPING:
            # torch.nn.init's functions pass their tensor by keyword
            target = args[0] if args else kwargs.get("tensor", kwargs.get("input"))
            if isinstance(target, Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


@contextlib.contextmanager
def _counting() -> Iterator[None]:
    with torch.device("meta"), _Counting():
        yield


def _op_size(factory: object, spec: OpSpec, width: int, causal: bool, norm: str,
             dropout: float, d_model: int) -> int:
    key = (factory, spec.name, tuple(sorted(spec.params.items())), width, causal, norm,
           dropout, d_model)
    try:
        size = _OP_SIZES.get(key)
    except TypeError:  # a parameter value that cannot be a key: count without remembering
        key, size = None, None
    if size is None:
        with _counting():
            size = count_parameters(make_op(spec, width, causal, norm, dropout, d_model))
        if key is not None:
            if len(_OP_SIZES) > 4096:
                _OP_SIZES.clear()
            _OP_SIZES[key] = size
    return size


_OP_SIZES: dict[tuple[object, ...], int] = {}


@functools.lru_cache(maxsize=256)
def _embedding_size(vocab_size: int, embed_dim: int, d_model: int, pad_id: int) -> int:
    with _counting():
        return count_parameters(FactorisedEmbedding(vocab_size, embed_dim, d_model, pad_id,
                                                    0.0))


@functools.lru_cache(maxsize=256)
def _norm_size(d_model: int) -> int:
    with _counting():
        return count_parameters(nn.LayerNorm(d_model))


def _check_widths(space: SearchSpace, d: int) -> None:
    for part, spec in space.parts():
        if isinstance(spec, Stack) and d % spec.splits:
            raise SpaceError(f"model.d_model: {d} is not divisible by {part}.splits="
                             f"{spec.splits}")
