"""Supernet and fixed models: choice modes, shared alphas, derived models, parameter counts."""
from __future__ import annotations

import pytest
import torch

import nasframe as nf
from nasframe.engine.choice import ChoiceNode


def tiny_batch():
    g = torch.Generator().manual_seed(0)
    return torch.randint(4, 40, (2, 6), generator=g), torch.randint(4, 40, (2, 5), generator=g)


def test_alphas_are_shared_across_blocks_weights_are_not():
    space = nf.spaces.get("tiny", layers=2)
    model = nf.Supernet(space, nf.ModelConfig(d_model=48, blocks=3), vocab_size=40)
    nodes = list(model.choice_nodes())
    assert len(nodes) == 3 * len(space.choice_nodes())  # one module per node per block
    by_name: dict[str, list[ChoiceNode]] = {}
    for node in nodes:
        by_name.setdefault(node.name, []).append(node)
    for name, group in by_name.items():
        assert len({id(n.alpha) for n in group}) == 1, name
        assert len({id(n.candidates[0]) for n in group}) == 3, name
    assert len(model.arch_parameters()) == len(space.choice_nodes())
    weight_ids = {id(p) for p in model.weight_parameters()}
    assert not weight_ids & {id(a) for a in model.arch_parameters()}
    assert len(weight_ids) + len(model.arch_parameters()) == len(list(model.parameters()))


def test_modes_weighted_and_single():
    space = nf.spaces.get("tiny")
    model = nf.Supernet(space, nf.ModelConfig(d_model=48, dropout=0.0), vocab_size=40).eval()
    src, tgt = tiny_batch()
    weighted = model(src, tgt)
    choice = {n: "ffn" for n in space.choice_nodes()}
    model.set_mode("single")
    model.select(choice)
    sampled = model(src, tgt)
    assert not torch.allclose(weighted, sampled)
    arch = nf.Architecture(space=space, choices=choice)
    fixed = nf.build_model(arch, nf.ModelConfig(d_model=48, dropout=0.0), vocab_size=40).eval()
    # the fixed model holds exactly the chosen ops; copy the shared weights it keeps
    fixed_state = fixed.state_dict()
    super_state = model.state_dict()
    for key in fixed_state:
        src_key = key.replace(".op.", ".op.candidates.2.") if key not in super_state else key
        fixed_state[key] = super_state[src_key]
    fixed.load_state_dict(fixed_state)
    torch.testing.assert_close(fixed(src, tgt), sampled, rtol=0, atol=1e-6)
    model.set_mode("weighted")
    model.set_mode("single")  # the selection stays
    torch.testing.assert_close(model(src, tgt), sampled, rtol=0, atol=0)
    with pytest.raises(ValueError, match="choice mode must be one of"):
        model.set_mode("sampled")


def test_fixed_model_holds_no_unchosen_parameters_and_counts_parameters():
    space = nf.spaces.get("dartsformer", layers=1)
    cfg = nf.ModelConfig(d_model=48, embed_dim=16)
    supernet = nf.Supernet(space, cfg, vocab_size=100)
    identity = nf.Architecture(space=space, choices={n: "identity"
                                                     for n in space.choice_nodes()})
    attention = nf.Architecture(space=space, choices={n: "self_attention"
                                                      for n in space.choice_nodes()})
    small = nf.build_model(identity, cfg, vocab_size=100)
    big = nf.build_model(attention, cfg, vocab_size=100)
    assert not any(isinstance(m, ChoiceNode) for m in big.modules())
    assert len(big.alphas) == 0
    n_small, n_big, n_super = (nf.count_parameters(m) for m in (small, big, supernet))
    assert n_small < n_big < n_super
    # identity has no parameters: the only extra weights of the attention model are its ops
    per_layer = nf.count_parameters(nf.ops.create_op("self_attention", 24)) * 2 + \
        nf.count_parameters(nf.ops.create_op("self_attention", 16, causal=True)) * 2
    assert n_big - n_small == per_layer
    assert not big.encoder.memory_saving  # re-training uses ordinary backprop


def test_memory_saving_switch_gives_identical_outputs():
    space = nf.spaces.get("tiny")
    model = nf.Supernet(space, nf.ModelConfig(d_model=48), vocab_size=40).double()
    src, tgt = tiny_batch()
    torch.manual_seed(0)
    a = model(src, tgt)
    model.set_memory_saving(False)
    torch.manual_seed(0)
    b = model(src, tgt)
    assert torch.equal(a, b)


def test_select_rejects_unknown_candidate():
    model = nf.Supernet(nf.spaces.get("tiny"), nf.ModelConfig(d_model=48), vocab_size=40)
    node = next(model.choice_nodes())
    with pytest.raises(ValueError, match="'glu' is not a candidate"):
        node.select("glu")
