"""The supernet: every module and choice node of a search space, as one seq2seq model.

The same class is the fixed model of a derived architecture: built with ``arch=...`` it holds
only the chosen op of every node and no parameters of the others (``build_model``).
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from nasframe import ops
from nasframe.backbones import FactorisedEmbedding, build_reversible_stack, build_sequential_stack
from nasframe.choice import ChoiceNode, Mode
from nasframe.errors import ConfigError, SpaceError, describe_validation_error
from nasframe.limits import (
    MAX_BLOCKS,
    MAX_D_MODEL,
    MAX_EMBED_DIM,
    check_params,
    check_vocab_size,
    format_count,
)
from nasframe.ops import IncrementalState
from nasframe.space import OpSet, OpSpec, SearchSpace, Stack

if TYPE_CHECKING:
    from nasframe.architecture import Architecture

__all__ = ["MAX_OPS", "ModelConfig", "Supernet", "build_model", "count_parameters",
           "model_parameters"]

#: Op modules (candidates included) a model may hold: each is a Python object built one at a
#: time, so a recorded config of 10^7 layers would exhaust memory before any parameter.
MAX_OPS = 1 << 18


class ModelConfig(BaseModel):
    """Sizes of a model built from a space; the space says what, this says how big."""

    model_config = ConfigDict(extra="forbid")

    d_model: int = Field(64, ge=2, le=MAX_D_MODEL,
                         description="hidden size d of the searched layers")
    embed_dim: int | None = Field(None, ge=1, le=MAX_EMBED_DIM,
                                  description="factorised embedding E (None: d)")
    blocks: int = Field(1, ge=1, le=MAX_BLOCKS,
                        description="repeats of the block of L searched layers")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    memory_saving: bool = Field(True, description="backprop with reconstruction (reversible)")
    keep_layers: int = Field(0, ge=0, description="top K reversible layers of each stack keep "
                             "activations (ordinary autograd); the rest reconstruct")
    stream_dtype: Literal["float64", "model"] = Field(
        "float64", description="dtype of the reversible stream (the X/Y additions, the stored "
        "top output, the reconstruction) in a forward that builds a graph: float64 makes "
        "reconstruction exact in a float32 model, whose F_i still compute in float32 "
        "(gradients equal ordinary autograd's); model: the model's own dtype, which in "
        "float32 drifts ~1e-6 per layer. Inference keeps the model's dtype either way")
    split_norm: Literal["post", "branch"] = Field(
        "post", description="ops inside reversible splits: post: LayerNorm(x + f(x)), the "
        "paper's, which a supernet needs (its mixture compares candidates at one scale; DARTS "
        "with branch picks zero); branch: F_i = f(LayerNorm(x)), Y_i = X_i + F_i being the "
        "only residual, which re-trains a fixed model much better (README)")
    alpha_init_std: float = Field(1e-3, ge=0.0,
                                  description="alpha ~ N(0, std) (Zhao et al. 2021 §4)")
    pad_id: int = Field(0, ge=0)

    def __init__(self, **data: object) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise ConfigError(describe_validation_error(err, root="model", field_prefix="model.")
                              ) from None


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class Supernet(nn.Module):
    """Embedding, encoder stack, decoder stack and a tied output layer built from a space.

    ``forward(src, tgt_in) -> logits``; ``encode``/``decode`` for beam search (``decode`` with
    an ``IncrementalState`` runs one step at a time).
    """

    def __init__(self, space: SearchSpace, config: ModelConfig | None = None,
                 vocab_size: int = 1000, arch: Architecture | None = None) -> None:
        super().__init__()
        config = config or ModelConfig()
        vocab_size = _check_size(space, config, vocab_size, arch)
        self.space, self.config = space, config
        self.vocab_size, self.arch = vocab_size, arch
        cfg, d = self.config, self.config.d_model
        self.alphas = nn.ParameterDict()
        if arch is None:
            gen = torch.Generator().manual_seed(0)
            for name, labels in space.choice_nodes().items():
                init = torch.randn(len(labels), generator=gen) * cfg.alpha_init_std
                self.alphas[_key(name)] = nn.Parameter(init)
        self.embed = FactorisedEmbedding(vocab_size, cfg.embed_dim or d, d, cfg.pad_id,
                                         cfg.dropout)
        self.encoder = self._build_part("encoder", causal=False)
        self.decoder = self._build_part("decoder", causal=True)
        self.encoder_norm = nn.LayerNorm(d)
        self.decoder_norm = nn.LayerNorm(d)

    # -- construction -----------------------------------------------------------------------
    def _build_part(self, part: str, causal: bool) -> nn.Module:
        spec = getattr(self.space, part)
        units = dict(spec.units())
        width = self.config.d_model // spec.splits if isinstance(spec, Stack) else \
            self.config.d_model
        norm = self.config.split_norm if isinstance(spec, Stack) else "post"

        def make_unit(layer: int, unit: str) -> nn.Module:
            what, node = units[unit], f"{part}.layer{layer}.{unit}"
            if isinstance(what, OpSpec):
                return self._op(what, width, causal, norm)
            if self.arch is not None:
                return self._op(what.get(self.arch.choices[node]), width, causal, norm)
            return ChoiceNode(node, what.labels,
                              [self._op(o, width, causal, norm) for o in what.ops],
                              self.alphas[_key(node)])

        if isinstance(spec, Stack):
            stream = torch.float64 if self.config.stream_dtype == "float64" else None
            return build_reversible_stack(spec, self.config.blocks, self.config.memory_saving,
                                          make_unit, self.config.keep_layers, stream)
        return build_sequential_stack(spec, self.config.blocks, make_unit)

    def _op(self, spec: OpSpec, width: int, causal: bool, norm: str = "post") -> nn.Module:
        return _create_op(spec, width, causal, norm, self.config)

    # -- the model --------------------------------------------------------------------------
    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """(batch, src_len) token ids -> encoder output and its padding mask."""
        mask = src.eq(self.config.pad_id)
        h = self.encoder(self.embed(src), padding_mask=mask)
        return self.encoder_norm(h), mask

    def decode(self, tgt_in: Tensor, memory: Tensor, memory_mask: Tensor,
               state: IncrementalState | None = None) -> Tensor:
        """Logits for ``tgt_in``; with ``state``, ``tgt_in`` holds only the new positions."""
        return self.embed.logits(self._decoded(tgt_in, memory, memory_mask, state))

    def _decoded(self, tgt_in: Tensor, memory: Tensor, memory_mask: Tensor,
                 state: IncrementalState | None = None) -> Tensor:
        """The decoder's normalised output, before the output layer."""
        start = state.step if state is not None else 0
        mask = None if state is not None else tgt_in.eq(self.config.pad_id)
        h = self.embed(tgt_in, start)
        h = self.decoder(h, padding_mask=mask, memory=memory, memory_mask=memory_mask,
                         state=state)
        if state is not None:
            state.step += tgt_in.size(1)
        return self.decoder_norm(h)

    def forward(self, src: Tensor, tgt_in: Tensor,
                features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits; with ``features``, what ``output_features`` returns."""
        memory, memory_mask = self.encode(src)
        h = self._decoded(tgt_in, memory, memory_mask)
        return self.embed.output_features(h) if features else self.embed.logits(h)

    def output_features(self, src: Tensor, tgt_in: Tensor) -> tuple[Tensor, Tensor]:
        """``forward`` before its last product: (batch, tgt_len, E) features and the
        (vocabulary, E) output weight, whose product is the logits. The search loss takes them
        apart (``nasframe.output_loss``) so that no (tokens, vocabulary) tensor is kept. A
        module call, so hooks on the supernet (torch's memory tools) see it."""
        return self(src, tgt_in, features=True)  # type: ignore[return-value]

    # -- search interface -------------------------------------------------------------------
    def choice_nodes(self) -> Iterator[ChoiceNode]:
        """Every choice node module (a node name appears once per repeated block)."""
        return (m for m in self.modules() if isinstance(m, ChoiceNode))

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas.values())

    def weight_parameters(self) -> list[nn.Parameter]:
        alpha_ids = {id(a) for a in self.alphas.values()}
        return [p for p in self.parameters() if id(p) not in alpha_ids]

    def alpha_dict(self) -> dict[str, Tensor]:
        """Node name -> alpha (detached)."""
        names = self.space.choice_nodes()
        return {name: self.alphas[_key(name)].detach() for name in names}

    def set_mode(self, mode: Mode) -> None:
        for node in self.choice_nodes():
            node.set_mode(mode)

    def select(self, choices: Mapping[str, str | int]) -> None:
        """Set the op every node evaluates in ``single`` mode: node name -> label or index,
        for every choice node of the space (an unknown or missing node is a SpaceError)."""
        nodes = {node.name: node for node in self.choice_nodes()}
        missing = [n for n in nodes if n not in choices]
        unknown = [n for n in choices if n not in nodes]
        if missing or unknown:
            raise SpaceError("select: " + "; ".join(
                part for part in (f"no choice for {', '.join(missing)}" if missing else "",
                                  f"no such node {', '.join(unknown)}" if unknown else "")
                if part))
        for name, node in nodes.items():
            node.select(choices[name])

    def set_memory_saving(self, on: bool) -> None:
        for m in self.modules():
            if hasattr(m, "memory_saving"):
                m.memory_saving = on


def build_model(arch: Architecture, config: ModelConfig | None = None,
                vocab_size: int = 1000) -> Supernet:
    """The fixed model of an architecture: only chosen ops, trained with ordinary backprop."""
    config = (config or ModelConfig()).model_copy(update={"memory_saving": False})
    return Supernet(arch.space, config, vocab_size, arch=arch)


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


def _check_size(space: SearchSpace, config: ModelConfig, vocab_size: int,
                arch: Architecture | None) -> int:
    """Refuse, before anything is allocated, a model that a recorded config made absurd: field
    values out of bounds (also those set by ``model_copy``, which does not validate), too many
    op modules to build, or more parameters than ``nasframe.limits.max_params``. Returns the
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


def _create_op(spec: OpSpec, width: int, causal: bool, norm: str,
               config: ModelConfig) -> nn.Module:
    return _make_op(spec, width, causal, norm, config.dropout, config.d_model)


def _make_op(spec: OpSpec, width: int, causal: bool, norm: str, dropout: float,
             d_model: int) -> nn.Module:
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
            size = count_parameters(_make_op(spec, width, causal, norm, dropout, d_model))
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


def _key(node: str) -> str:
    return node.replace(".", "/")  # ParameterDict keys cannot contain dots


def _check_widths(space: SearchSpace, d: int) -> None:
    for part, spec in space.parts():
        if isinstance(spec, Stack) and d % spec.splits:
            raise SpaceError(f"model.d_model: {d} is not divisible by {part}.splits="
                             f"{spec.splits}")
