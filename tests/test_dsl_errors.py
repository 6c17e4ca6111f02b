"""Malformed declarations of issue 23 item 8 and bad op arguments: one line each, naming the
field (with its place in the space), the value given, and no pydantic internals."""
from __future__ import annotations

from typing import Literal

import pytest

import nasframe as nf

DECODER = nf.Stack(splits=2, choices=["cross_attention"])


def message_of(make) -> str:
    with pytest.raises(nf.SpaceError) as info:
        make()
    message = str(info.value)
    for internal in ("function-after", "Input should be", "Value error", "discriminator"):
        assert internal not in message, message
    return message


@pytest.mark.parametrize(("make", "expected"), [
    # a Stack where an op is expected (the Evolved Transformer attempt)
    (lambda: nf.Sequential([nf.Stack(choices=["ffn"])]),
     "sublayers.0: a Stack is not an op; an op is a name or nf.op(...), a choice a list of ops"),
    (lambda: nf.OpSet(["ffn", nf.Stack(choices=["ffn"])]),
     "ops.1: a Stack is not an op; an op is a name or nf.op(...)"),
    (lambda: nf.Stack(choices=5),
     "choices: 5 is not an op set; a choice is a list of ops or nf.OpSet([...])"),
    (lambda: nf.Stack(choices=["ffn"], pool="sum"), "pool: 'sum' is not one of 'max', 'avg'"),
    (lambda: nf.Stack(choices=["ffn"], combine="add"),
     "combine: Stack has no field 'combine'; its fields: splits, layers, choices, pool, fixed, "
     "topology"),
    # HAT
    (lambda: nf.Stack(choices=["ffn"], layers="many"), "layers: 'many' is not an integer"),
    # the DARTS cell
    (lambda: nf.Stack(splits=2, choices=["ffn"], topology=[["X2"], [1]]),
     "topology.1.0: 1 is not a string"),
    (lambda: nf.Stack(choices=["ffn"], n_chosen=2),
     "n_chosen: Stack has no field 'n_chosen'; its fields: splits, layers, choices, pool, "
     "fixed, topology"),
    # ranges show the value given
    (lambda: nf.Stack(splits=1, choices=["ffn"]), "splits: 1 is below the minimum 2"),
    (lambda: nf.Stack(splits=40, choices=["ffn"]), "splits: 40 is above the maximum 32"),
    (lambda: nf.Sequential(["ffn"], layers=0), "layers: 0 is below the minimum 1"),
    (lambda: nf.Stack(splits=2), "choices: missing; it must be given"),
    (lambda: nf.Stack(choices=["ffn"], fixed=5), "fixed: 5 is not a mapping"),
    (lambda: nf.Stack(choices=["ffn"], topology=5), "topology: 5 is not a list"),
    (lambda: nf.SearchSpace(encoder=5, decoder=DECODER),
     "encoder: 5 is not a layer; a part is nf.Stack(...) or nf.Sequential(...)"),
    (lambda: nf.SearchSpace(encoder={"kind": "weird", "choices": ["ffn"]}, decoder=DECODER),
     "encoder: kind 'weird' is not 'reversible' (a Stack) or 'sequential' (a Sequential)"),
    (lambda: nf.SearchSpace(encoder={"choices": ["ffn"]}, decoder=DECODER),
     "encoder: a part given as a mapping needs kind 'reversible' (a Stack) or 'sequential' "
     "(a Sequential)"),
])
def test_malformed_declaration_says_what_and_where(make, expected):
    assert message_of(make) == expected


def test_a_part_from_a_mapping_or_json_has_its_full_path():
    assert message_of(lambda: nf.SearchSpace(
        encoder={"kind": "reversible", "splits": 1, "choices": ["ffn"]}, decoder=DECODER,
    )) == "encoder.splits: 1 is below the minimum 2"
    text = DECODER.model_dump_json()
    assert message_of(lambda: nf.SearchSpace.from_json(
        '{"encoder": {"kind": "reversible", "choices": {"ops": [{"name": "ffn"}]}, '
        f'"pool": "sum"}}, "decoder": {text}}}'
    )) == "encoder.pool: 'sum' is not one of 'max', 'avg'"


@pytest.mark.parametrize(("make", "expected"), [
    (lambda: nf.op("conv", kernel="nope"), "op 'conv': kernel='nope' is not an integer"),
    (lambda: nf.op("conv", kernel=0), "op 'conv': kernel=0 is not a positive integer"),
    (lambda: nf.op("dynamic_conv", heads=-2),
     "op 'dynamic_conv': heads=-2 is not a positive integer"),
    (lambda: nf.op("self_attention", heads=2.5),
     "op 'self_attention': heads=2.5 is not an integer"),
    (lambda: nf.op("cross_attention", heads=True),
     "op 'cross_attention': heads=True is not an integer"),
    (lambda: nf.op("ffn", expansion=0), "op 'ffn': expansion=0 is not a positive integer"),
    (lambda: nf.OpSet(["ffn", "glu:expansion=big"]),
     "ops.1: op 'glu': expansion='big' is not an integer"),
    (lambda: nf.op("conv", width=3),
     "op 'conv' takes no parameter 'width' (its parameters: kernel)"),
])
def test_built_in_op_arguments_are_checked_at_declaration(make, expected):
    assert message_of(make) == expected


def test_a_user_op_argument_is_checked_from_its_signature():
    @nf.register_op("test_padded", replace=True)
    def padded(dim: int, *, causal: bool, dropout: float,
               left: Literal["auto", "causal"] = "auto", scale: float = 1.0) -> nf.Operation:
        pad = {"auto": 0, "causal": 1}[left]  # before: a bare KeyError when the model was built

        class Padded(nf.Operation):
            def forward(self, x, ctx):
                return x * scale + pad
        return Padded()

    assert message_of(lambda: nf.op("test_padded", left="nope")) == (
        "op 'test_padded': left='nope' is not one of 'auto', 'causal'")
    assert message_of(lambda: nf.op("test_padded", scale="big")) == (
        "op 'test_padded': scale='big' is not a number")
    assert nf.op("test_padded", left="causal", scale=2).label == "test_padded:left=causal,scale=2"


def test_a_user_op_with_any_keywords_is_still_type_checked_on_its_named_arguments():
    @nf.register_op("test_kwargs", replace=True)
    def anything(dim: int, *, causal: bool, dropout: float, width: int = 3,
                 **extra: object) -> nf.Operation:
        return nf.Residual(dim, nf.Operation(), dropout)

    assert nf.op("test_kwargs", whatever="x").params == {"whatever": "x"}
    assert message_of(lambda: nf.op("test_kwargs", width="3")) == (
        "op 'test_kwargs': width='3' is not an integer")
