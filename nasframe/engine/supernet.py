"""The supernet: every module and choice node of a search space, as one seq2seq model.

The same class is the fixed model of a derived architecture: built with ``arch=...`` it holds
only the chosen op of every node and no parameters of the others (``build_model``).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from nasframe.base.errors import SpaceError
from nasframe.dsl.ops import IncrementalState
from nasframe.dsl.space import OpSpec, SearchSpace, Stack
from nasframe.engine.backbones import (
    FactorisedEmbedding,
    build_reversible_stack,
    build_sequential_stack,
)
from nasframe.engine.choice import ChoiceNode, Mode
from nasframe.engine.model_size import check_model_size, count_parameters, make_op
from nasframe.run.model_config import ModelConfig

if TYPE_CHECKING:
    from nasframe.dsl.architecture import Architecture

__all__ = ["ModelConfig", "Supernet", "build_model", "count_parameters"]


class Supernet(nn.Module):
    """Embedding, encoder stack, decoder stack and a tied output layer built from a space.

    ``forward(src, tgt_in) -> logits``; ``encode``/``decode`` for beam search (``decode`` with
    an ``IncrementalState`` runs one step at a time).
    """

    def __init__(self, space: SearchSpace, config: ModelConfig | None = None,
                 vocab_size: int = 1000, arch: Architecture | None = None) -> None:
        super().__init__()
        config = config or ModelConfig()
        vocab_size = check_model_size(space, config, vocab_size, arch)
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
        apart (``nasframe.text.output_loss``) so that no (tokens, vocabulary) tensor is kept. A
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


def _create_op(spec: OpSpec, width: int, causal: bool, norm: str,
               config: ModelConfig) -> nn.Module:
    return make_op(spec, width, causal, norm, config.dropout, config.d_model)
