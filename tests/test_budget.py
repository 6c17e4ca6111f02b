"""--memory-limit picks how many reversible layers keep their activations."""
from __future__ import annotations

import json

import torch

import nasframe as nf
from nasframe.run.config import SearchConfig, apply_overrides
from nasframe.searching.api import search
from nasframe.searching.budget import keep_layers_for, per_layer_bytes
from nasframe.text.data import collate


def test_k_grows_with_the_budget_and_counts_what_the_layers_keep() -> None:
    space = nf.spaces.get("dartsformer", layers=3)
    net = nf.Supernet(space, nf.ModelConfig(d_model=48, embed_dim=16, dropout=0.0), 30)
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randint(4, 30, (7,), generator=g).tolist(),
              torch.randint(4, 30, (6,), generator=g).tolist()) for _ in range(4)]
    batch = collate(pairs, 0, 2, 3)
    sizes = per_layer_bytes(net, batch)
    assert set(sizes) == {"encoder", "decoder"} and all(len(s) == 3 for s in sizes.values())
    assert all(b > 0 for s in sizes.values() for b in s)
    top = sizes["encoder"][-1] + sizes["decoder"][-1]
    assert keep_layers_for(net, batch, 0) == (0, 0)
    assert keep_layers_for(net, batch, top) == (1, top)
    assert keep_layers_for(net, batch, top - 1)[0] == 0
    assert keep_layers_for(net, batch, "1GiB") == (3, sum(map(sum, sizes.values())))


def test_search_records_the_k_the_limit_allows(tmp_path) -> None:
    cfg = apply_overrides(SearchConfig.preset_config("tiny"), {
        "device": "cpu", "steps": 2, "checkpoint_every": 2, "memory_limit": "1GiB",
        "data.source": "synthetic:reverse", "data.vocab_size": 12, "data.synthetic_pairs": 60,
        "data.synthetic_len": [2, 6], "data.max_tokens": 40, "model.d_model": 48,
        "model.embed_dim": 16})
    result = search("tiny", "darts-reversible", config=cfg, out=tmp_path / "big")
    recorded = json.loads((tmp_path / "big" / "config.json").read_text())
    assert recorded["model"]["keep_layers"] == 1  # the tiny space has one layer per stack
    assert result.supernet.encoder.keep_last == 1
    search("tiny", "darts-reversible", config=apply_overrides(cfg, {"memory_limit": "1B"}),
           out=tmp_path / "small")
    recorded = json.loads((tmp_path / "small" / "config.json").read_text())
    assert recorded["model"]["keep_layers"] == 0
