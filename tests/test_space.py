"""The search-space DSL: construction, validation messages, size, graph, JSON, registry."""
from __future__ import annotations

import networkx as nx
import pytest
import torch

import nasframe as nf
from nasframe.dsl.space import check_invertible, split_graph


def small_space(fixed: dict | None = None) -> nf.SearchSpace:
    ops = nf.OpSet(["identity", "ffn"])
    return nf.SearchSpace(
        encoder=nf.Stack(splits=2, choices=ops),
        decoder=nf.Stack(splits=3, choices=ops + ["cross_attention"],
                         fixed=fixed or {3: "cross_attention"}),
    )


def test_dartsformer_size_matches_formula_and_paper_order_of_magnitude():
    space = nf.spaces.get("dartsformer")
    n_enc, n_dec = len(space.encoder.choices), len(space.decoder.choices)
    assert (n_enc, n_dec) == (11, 12)
    # |O_enc|^(n_e L) * |O_dec|^((n_d - 1) L) with n_e=2, n_d=3, L=2 (Zhao et al. 2021 section 4)
    assert space.size() == 11 ** (2 * 2) * 12 ** (2 * 2)
    assert 1e8 <= space.size() <= 1e9
    assert nf.spaces.get("dartsformer", layers=1).size() == 11 ** 2 * 12 ** 2


def test_builtin_spaces_and_choice_nodes():
    assert set(nf.spaces.names()) >= {"dartsformer", "darts-transformer", "transformer", "tiny"}
    dt = nf.spaces.get("darts-transformer")
    nodes = dt.choice_nodes()
    assert [n for n in nodes if n.startswith("encoder")] == ["encoder.layer1.sub1",
                                                              "encoder.layer1.sub2"]
    assert [n for n in nodes if n.startswith("decoder")] == ["decoder.layer1.sub1",
                                                              "decoder.layer1.sub3"]
    assert nf.spaces.get("transformer").size() == 1
    assert nf.spaces.get("transformer").choice_nodes() == {}
    with pytest.raises(nf.SpaceError, match="unknown space 'nope'"):
        nf.spaces.get("nope")


def test_json_round_trip_and_digest(tmp_path):
    space = nf.SearchSpace(
        name="custom",
        encoder=nf.Stack(splits=3, layers=2, choices=["ffn", nf.op("conv", kernel=5)],
                         pool="avg", topology=[["X2"], ["Y1", "X3"], ["Y2"]]),
        decoder=nf.Sequential([["identity", "ffn"], "cross_attention"], layers=2),
    )
    again = nf.SearchSpace.from_json(space.to_json())
    assert again == space and again.digest() == space.digest()
    path = tmp_path / "space.json"
    path.write_text(space.to_json())
    assert nf.SearchSpace.from_json(path) == space
    assert again.encoder.choices.labels == ["ffn", "conv:kernel=5"]


def test_graph_has_splits_functions_choices_and_is_a_dag():
    space = nf.spaces.get("dartsformer")
    g = space.graph()
    assert isinstance(g, nx.DiGraph) and nx.is_directed_acyclic_graph(g)
    assert g.nodes["encoder.layer1.F1.choice"]["kind"] == "choice"
    assert g.nodes["decoder.layer2.F3.op"]["op"] == "cross_attention"
    # the paper's topology: F_2 of a 3-split layer reads Y_1 and X_3
    assert set(g.predecessors("decoder.layer1.F2")) == {"decoder.layer1.Y1",
                                                        "decoder.layer1.X3",
                                                        "decoder.layer1.F2.choice"}
    choice_nodes = [n for n, d in g.nodes(data=True) if d["kind"] == "choice"]
    assert len(choice_nodes) == len(space.choice_nodes())


def test_custom_op_registered_in_user_module_is_usable():
    @nf.register_op("test_scaled_identity")
    def scaled(dim: int, *, causal: bool, dropout: float, scale: float = 2.0) -> nf.Operation:
        class Scaled(nf.Operation):
            def forward(self, x, ctx):
                return x * scale
        return Scaled()

    space = nf.SearchSpace(
        encoder=nf.Stack(splits=2, choices=["ffn", nf.op("test_scaled_identity", scale=3.0)]),
        decoder=nf.Stack(splits=2, choices=["cross_attention"]),
    )
    assert "test_scaled_identity:scale=3.0" in space.choice_nodes()["encoder.layer1.split1"]
    model = nf.Supernet(space, nf.ModelConfig(d_model=16, dropout=0.0), vocab_size=20)
    assert model(torch.randint(4, 20, (2, 5)), torch.randint(4, 20, (2, 4))).shape == (2, 4, 20)
    with pytest.raises(nf.SpaceError, match="takes no parameter 'kernel'"):
        nf.op("test_scaled_identity", kernel=3)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: nf.OpSet(["ffn", "no_such_op"]), "unknown op 'no_such_op'"),
    (lambda: nf.op("conv", width=3), "op 'conv' takes no parameter 'width'"),
    (lambda: nf.OpSet(["ffn", "ffn"]), "duplicate ops"),
    (lambda: nf.OpSet([]), "at least one op"),
    (lambda: small_space(fixed={4: "cross_attention"}), "fixed: split 4 out of range for 3"),
    (lambda: nf.Stack(splits=3, choices=["ffn"], fixed={3: "glu"}),
     "fixed: op 'glu' of split 3 is not in choices"),
    (lambda: nf.Stack(splits=3, choices=["ffn"], topology=[["X2"], ["X2"], ["Y1"]]),
     "topology: split 2 reads X2: not invertible"),
    (lambda: nf.Stack(splits=3, choices=["ffn"], topology=[["X2"], ["Y3"], ["Y1"]]),
     "topology: split 2 reads Y3: not invertible"),
    (lambda: nf.Stack(splits=2, choices=["ffn"], topology=[["X2"], []]),
     "topology: split 2 has no inputs"),
    (lambda: nf.Stack(splits=2, choices=["ffn"], topology=[["X2"]]),
     "topology: 1 entries for 2 splits"),
    (lambda: nf.Stack(splits=2, choices=["ffn"], topology=[["X9"], ["Y1"]]),
     "topology: split 1 input 'X9' is not one of"),
    (lambda: nf.Stack(splits=1, choices=["ffn"]), "splits: 1 is below the minimum 2"),
    (lambda: nf.Stack(splits=2, choices=["ffn"], pool="sum"),
     "pool: 'sum' is not one of 'max', 'avg'"),
    (lambda: nf.Sequential([["zero", "ffn"]]), "sublayers: sublayer 1: 'zero' would erase"),
    (lambda: nf.SearchSpace(encoder=nf.Stack(choices=["cross_attention"]),
                            decoder=nf.Stack(choices=["cross_attention"])),
     "encoder: cross_attention needs an encoder output"),
    (lambda: nf.SearchSpace(encoder=nf.Stack(choices=["ffn"]), decoder=nf.Stack(choices=["ffn"])),
     "decoder: no op reads the encoder"),
])
def test_bad_declarations_fail_with_a_message_naming_field_and_value(make, message):
    with pytest.raises(nf.SpaceError, match=message.replace("(", r"\(")):
        make()


def test_json_errors_name_the_nested_field(tmp_path):
    text = small_space().to_json().replace('"3": {', '"5": {')
    with pytest.raises(nf.SpaceError, match=r"decoder\.fixed: split 5 out of range for 3"):
        nf.SearchSpace.from_json(text)
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    with pytest.raises(nf.SpaceError, match="bad.json"):
        nf.SearchSpace.from_json(bad)


def test_widths_are_checked_when_a_model_is_built():
    with pytest.raises(nf.SpaceError, match="model.d_model: 32 is not divisible by "
                                            "decoder.splits=3"):
        nf.Supernet(nf.spaces.get("tiny"), nf.ModelConfig(d_model=32))
    with pytest.raises(nf.SpaceError, match="heads"):
        nf.Supernet(nf.spaces.get("tiny"), nf.ModelConfig(d_model=30))  # 10 / 8 heads
    with pytest.raises(nf.ConfigError, match="model.dropout"):
        nf.ModelConfig(dropout=1.5)


def test_invertibility_check_on_graph():
    g = split_graph(3, [["X2", "X3"], ["Y1", "X3"], ["Y1", "Y2"]])
    check_invertible(g, 3)
    g.add_edge("Y3", "F1")
    with pytest.raises(ValueError, match="split 1 reads Y3"):
        check_invertible(g, 3)


def test_architecture_json_table_diff_and_validation(tmp_path):
    space = nf.spaces.get("tiny")
    nodes = space.choice_nodes()
    alphas = {n: torch.arange(len(c), dtype=torch.float64) for n, c in nodes.items()}
    arch = nf.derive(space, alphas)
    assert all(arch.choices[n] == c[-1] for n, c in nodes.items())  # argmax (Eq. 2)
    probs = arch.probabilities["encoder.layer1.split1"]
    assert abs(sum(probs.values()) - 1) < 1e-12
    path = arch.save(tmp_path / "arch.json")
    assert nf.Architecture.load(path) == arch
    other = nf.Architecture(space=space, choices={**arch.choices,
                                                  "encoder.layer1.split1": "ffn"})
    best = nodes["encoder.layer1.split1"][-1]
    assert other.diff(arch) == {"encoder.layer1.split1": ("ffn", best)}
    assert arch.table().row_count == len(nodes)
    with pytest.raises(nf.SpaceError, match=r"choices.encoder.layer1.split1: 'glu' is not a"):
        nf.Architecture(space=space, choices={**arch.choices, "encoder.layer1.split1": "glu"})
    with pytest.raises(nf.SpaceError, match="missing nodes"):
        nf.Architecture(space=space, choices={})
    with pytest.raises(nf.SpaceError, match="no such architecture file"):
        nf.Architecture.load(tmp_path / "missing.json")


def test_space_command_prints_size_nodes_and_memory(capsys):
    from nasframe.cli import main

    assert main(["space", "tiny", "--memory", "--d-model", "48", "--blocks", "2",
                 "--tokens", "8", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    size = nf.spaces.get("tiny").size()
    assert f"{size:,} architectures" in out
    assert "encoder.layer1.split1" in out and "plain autograd" in out
    assert "activation memory kept for backward" in out
    assert main(["space", "no-such-space"]) == 2
    assert "unknown space 'no-such-space'" in capsys.readouterr().err
