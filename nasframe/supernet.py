"""The supernet: every module and choice node of a search space, as one seq2seq model.

The same class is the fixed model of a derived architecture: built with ``arch=...`` it holds
only the chosen op of every node and no parameters of the others (``build_model``).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor, nn

from nasframe import ops
from nasframe.backbones import FactorisedEmbedding, build_reversible_stack, build_sequential_stack
from nasframe.choice import ChoiceNode, Mode
from nasframe.errors import ConfigError, SpaceError, describe_validation_error
from nasframe.ops import IncrementalState
from nasframe.space import OpSpec, SearchSpace, Stack

if TYPE_CHECKING:
    from nasframe.architecture import Architecture

__all__ = ["ModelConfig", "Supernet", "build_model", "count_parameters"]


class ModelConfig(BaseModel):
    """Sizes of a model built from a space; the space says what, this says how big."""

    model_config = ConfigDict(extra="forbid")

    d_model: int = Field(64, ge=2, description="hidden size d of the searched layers")
    embed_dim: int | None = Field(None, ge=1, description="factorised embedding E (None: d)")
    blocks: int = Field(1, ge=1, description="repeats of the block of L searched layers")
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
    pad_id: int = 0

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
        self.space, self.config = space, config or ModelConfig()
        self.vocab_size, self.arch = vocab_size, arch
        cfg, d = self.config, self.config.d_model
        _check_widths(space, d)
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
        try:
            return ops.create_op(spec.name, width, causal=causal, dropout=self.config.dropout,
                                 memory_dim=self.config.d_model, norm=norm, **spec.params)
        except SpaceError as err:  # name where the op sits: its width comes from d_model
            raise SpaceError(f"{spec.label} at width {width} (model.d_model="
                             f"{self.config.d_model}): {err}") from None

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


def _key(node: str) -> str:
    return node.replace(".", "/")  # ParameterDict keys cannot contain dots


def _check_widths(space: SearchSpace, d: int) -> None:
    for part, spec in space.parts():
        if isinstance(spec, Stack) and d % spec.splits:
            raise SpaceError(f"model.d_model: {d} is not divisible by {part}.splits="
                             f"{spec.splits}")
