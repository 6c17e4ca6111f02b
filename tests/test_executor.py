"""The executor: checkpoints, exact resume after a kill, run-directory contents, configs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import nasframe as nf
from nasframe.base.errors import CheckpointError, ConfigError
from nasframe.run.config import SearchConfig, apply_overrides, load_config, parse_assignment
from nasframe.run.rundir import RunDir, RunKind, load_checkpoint
from nasframe.searching.api import search
from nasframe.searching.executor import alpha_entropy
from nasframe.searching.strategy import get_strategy


def small_config(**extra: Any) -> SearchConfig:
    """Tiny shapes, float32, dropout on: resume must replay the RNG, not only the weights."""
    return apply_overrides(SearchConfig.preset_config("tiny"), {
        "device": "cpu", "seed": 5, "steps": 7, "checkpoint_every": 3, "log_every": 1,
        "data.source": "synthetic:reverse", "data.vocab_size": 12,
        "data.synthetic_len": [2, 6], "data.synthetic_pairs": 60, "data.max_tokens": 40,
        "model.d_model": 48, "model.embed_dim": 16, "model.dropout": 0.1,
        "optim.lr": 1e-2, "optim.warmup": 2, "optim.alpha_lr": 1e-2,
        "evolution.population": 3, "evolution.parents": 2, "evolution.iterations": 1,
        "evolution.eval_batches": 2, **extra})


class Killed(Exception):
    """Stands for SIGKILL: the run stops between two updates, after a checkpoint."""


def _metrics(run: Path) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in ("time", "tokens_per_s")}
            for line in lines]


@pytest.mark.parametrize("strategy, extra", [
    ("darts-reversible", {}),
    ("darts-reversible", {"optim.second_order": True}),
    ("darts", {}),
    ("spos", {}),
])
def test_killed_and_resumed_run_equals_an_uninterrupted_one(
        strategy: str, extra: dict[str, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = small_config(**extra)
    whole = search("tiny", strategy, config=cfg, out=tmp_path / "whole")

    cls = get_strategy(strategy)
    step = cls.step

    def dies_at_update_5(self: Any, train: Any, val: Any) -> dict[str, float]:
        if self.ctx.step == 5:  # checkpoint 3 is written, update 4 is lost with the process
            raise Killed
        return step(self, train, val)

    monkeypatch.setattr(cls, "step", dies_at_update_5)
    with pytest.raises(Killed):
        search("tiny", strategy, config=cfg, out=tmp_path / "killed")
    monkeypatch.setattr(cls, "step", step)
    killed = RunDir.open(tmp_path / "killed", RunKind.SEARCH)
    assert killed.latest() == tmp_path / "killed" / "checkpoints" / "checkpoint_3.pt"
    resumed = search("tiny", strategy, config=cfg, out=tmp_path / "killed", resume=True)

    a = dict(whole.supernet.named_parameters())
    b = dict(resumed.supernet.named_parameters())
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert all(torch.equal(whole.alphas[k], resumed.alphas[k]) for k in whole.alphas)
    assert resumed.architecture.choices == whole.architecture.choices
    assert _metrics(tmp_path / "killed") == _metrics(tmp_path / "whole")  # no duplicate lines
    for name in ("arch.json", "arch_step6.json"):
        assert (tmp_path / "killed" / name).read_text() == (tmp_path / "whole" / name).read_text()


def test_run_directory_records_everything(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = small_config(steps=6, keep_checkpoints=1)
    result = search("tiny", "darts-reversible", config=cfg, out=run)
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "space.json", "run.json", "metrics.jsonl", "checkpoints",
            "arch_step3.json", "arch_step6.json", "arch.json", "result.json"} <= names
    ckpts = {p.name for p in (run / "checkpoints").iterdir()}
    assert ckpts == {"checkpoint_6.pt"}  # keep_checkpoints=1 pruned checkpoint_3.pt
    assert not [n for n in names if n.endswith(".tmp")]  # written atomically
    assert SearchConfig.from_json((run / "config.json").read_text()) == \
        apply_overrides(cfg, {"strategy": "darts-reversible", "space": "tiny"})
    assert nf.SearchSpace.from_json(run / "space.json") == nf.spaces.get("tiny")
    arch = nf.Architecture.load(run / "arch.json")
    assert arch == result.architecture
    for node, probs in arch.probabilities.items():  # softmax of every node's alphas
        assert abs(sum(probs.values()) - 1) < 1e-6
        expected = torch.softmax(result.alphas[node].double(), -1)
        assert max(abs(p - float(e)) for p, e in zip(probs.values(), expected)) < 1e-9
    lines = _metrics(run)
    assert [x["step"] for x in lines] == list(range(1, 7))
    assert {"loss_train", "loss_val", "lr", "alpha_entropy"} <= set(lines[-1])
    ckpt = load_checkpoint(run / "checkpoints" / "checkpoint_6.pt")
    assert ckpt["step"] == 6 and ckpt["data"]["train"]["index"] >= 0
    assert {"torch", "numpy", "python"} <= set(ckpt["rng"][0])
    assert {"w_opt", "w_sched", "a_opt"} <= set(ckpt["strategy"])


def test_alpha_entropy_starts_at_log_of_the_choice_count() -> None:
    net = nf.Supernet(nf.spaces.get("tiny"), nf.ModelConfig(d_model=48, alpha_init_std=0.0))
    sizes = [len(v) for v in nf.spaces.get("tiny").choice_nodes().values()]
    expected = sum(torch.log(torch.tensor(float(n))) for n in sizes) / len(sizes)
    assert abs(alpha_entropy(net) - float(expected)) < 1e-6
    for a in net.arch_parameters():
        a.requires_grad_(False)
    assert alpha_entropy(net) is None


def test_spos_search_returns_ranked_candidates() -> None:
    result = search("tiny", "spos", config=small_config(steps=3))
    scores = [s for _, s in result.candidates]
    assert scores == sorted(scores) and len(scores) == 5  # evolution.top_k
    assert result.architecture.choices == result.candidates[0][0].choices
    assert result.alphas == {} and result.architecture.probabilities is None
    assert all(not a.requires_grad for a in result.supernet.arch_parameters())


def test_run_directory_errors(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = small_config(steps=3)
    with pytest.raises(CheckpointError, match="no such run directory"):
        search("tiny", "darts-reversible", config=cfg, out=run, resume=True)
    search("tiny", "darts-reversible", config=cfg, out=run)
    with pytest.raises(CheckpointError, match="already holds a search run"):
        search("tiny", "darts-reversible", config=cfg, out=run)
    with pytest.raises(CheckpointError, match="another search space"):
        search(nf.spaces.get("tiny", pool="avg"), "darts-reversible", config=cfg, out=run,
               resume=True)
    with pytest.raises(CheckpointError, match="strategy 'darts-reversible', not 'spos'"):
        search("tiny", "spos", config=cfg, out=run, resume=True)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")


def test_reversible_strategy_refuses_a_sequential_space() -> None:
    with pytest.raises(ConfigError, match="darts-reversible.*searches reversible spaces"):
        search("darts-transformer", "darts-reversible", config=small_config(steps=1))


# ----------------------------------------------------------------------------- configs

def test_presets() -> None:
    paper = SearchConfig.preset_config("paper")
    assert (paper.model.embed_dim, paper.model.d_model, paper.steps) == (256, 960, 60000)
    assert (paper.data.max_tokens, paper.checkpoint_every) == (4096, 10000)
    assert (paper.optim.lr, paper.optim.warmup, paper.optim.betas) == (7e-4, 4000, (0.9, 0.98))
    assert (paper.optim.alpha_lr, paper.optim.alpha_betas) == (3e-4, (0.5, 0.999))
    assert (paper.optim.alpha_weight_decay, paper.optim.label_smoothing) == (1e-3, 0.1)
    assert paper.data.split == (2.5, 2.0)
    tiny = SearchConfig.preset_config("tiny")
    assert tiny.preset == "tiny" and tiny.steps < 1000
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        SearchConfig.preset_config("huge")


def test_toml_over_preset_and_flags_over_toml(tmp_path: Path) -> None:
    path = tmp_path / "search.toml"
    path.write_text('preset = "small"\nsteps = 123\n[model]\nd_model = 96\n'
                    '[optim]\nbetas = [0.8, 0.9]\n', encoding="utf-8")
    cfg = load_config(path)
    assert (cfg.preset, cfg.steps, cfg.model.d_model, cfg.model.embed_dim) == \
        ("small", 123, 96, 128)
    assert cfg.optim.betas == (0.8, 0.9)
    cfg = apply_overrides(cfg, dict([parse_assignment("model.d_model=192"),
                                     parse_assignment("data.source=synthetic:copy")]))
    assert cfg.model.d_model == 192 and cfg.data.source == "synthetic:copy"
    path.write_text("[model]\nd_modle = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"search.toml: model.d_modle: unknown setting"):
        load_config(path)
    path.write_text("steps = 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="steps: Input should be greater than or equal to 1"):
        load_config(path)
    path.write_text("steps = \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="search.toml"):
        load_config(path)
