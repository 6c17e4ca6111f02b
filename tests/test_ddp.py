"""Two processes under torchrun (gloo) equal one process over the same global batches."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import torch

from nasframe import spaces
from nasframe.run.config import SearchConfig, apply_overrides
from nasframe.run.rundir import RunDir, RunKind
from nasframe.searching.api import SearchData, build_supernet, prepare_data
from nasframe.searching.executor import Executor, World
from nasframe.searching.strategy import SearchContext, get_strategy, seq2seq_loss
from nasframe.text.data import Batch, TokenBatcher

SETTINGS = {
    "device": "cpu", "seed": 5, "steps": 4, "checkpoint_every": 4, "log_every": 1,
    "dtype": "float64", "data.source": "synthetic:reverse", "data.vocab_size": 12,
    "data.synthetic_len": [2, 6], "data.synthetic_pairs": 120, "data.max_tokens": 40,
    "model.d_model": 48, "model.embed_dim": 16, "model.dropout": 0.0, "optim.lr": 1e-2,
    "optim.warmup": 2, "optim.alpha_lr": 1e-2,
}


@dataclass
class GlobalBatch:
    """The batches of every rank at one update, as one process sees them."""

    parts: list[Batch]

    def to(self, device: torch.device) -> GlobalBatch:
        return GlobalBatch([b.to(device) for b in self.parts])

    @property
    def n_tgt_tokens(self) -> int:
        return sum(b.n_tgt_tokens for b in self.parts) // len(self.parts)


class GlobalStream:
    def __init__(self, batchers: list[TokenBatcher]) -> None:
        self.batchers = batchers

    def __next__(self) -> GlobalBatch:
        return GlobalBatch([next(b) for b in self.batchers])


def ddp_loss(self: SearchContext, batch: Any) -> torch.Tensor:
    """What DDP optimises: the mean over ranks of each rank's per-token loss."""
    smoothing = self.config.optim.label_smoothing
    if isinstance(batch, GlobalBatch):
        losses = [seq2seq_loss(self.supernet, b, smoothing) for b in batch.parts]
        return torch.stack(losses).mean()
    return seq2seq_loss(self.supernet, batch, smoothing)


def test_two_gloo_processes_equal_one_process_over_the_same_batches(tmp_path, monkeypatch):
    out = tmp_path / "ddp"
    flags = [a for k, v in SETTINGS.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "nasframe.cli", "search", "--preset", "tiny", "--space", "tiny",
           "--strategy", "darts-reversible", "--no-progress", "--out", str(out), *flags]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    run = RunDir.open(out, RunKind.SEARCH)
    assert run.info()["sessions"][0]["world_size"] == 2
    ddp = run.load()["model"]

    cfg = apply_overrides(SearchConfig.preset_config("tiny"),
                          {**SETTINGS, "strategy": "darts-reversible", "space": "tiny"})
    ranks = [SearchData.from_pairs(*_pairs(cfg), 12, cfg, World(r, 2, r)) for r in range(2)]
    net = build_supernet(spaces.get("tiny"), cfg, 12)
    monkeypatch.setattr(SearchContext, "loss", ddp_loss)
    strategy = get_strategy("darts-reversible")()
    Executor(net, strategy, GlobalStream([d.train for d in ranks]),
             GlobalStream([d.valid for d in ranks]), cfg).run()
    one = net.state_dict()
    assert one.keys() == ddp.keys()
    worst = max(float((one[k] - ddp[k]).abs().max()) for k in one if one[k].is_floating_point())
    assert worst < 1e-10, worst
    moved = max(float((one[k] - build_supernet(spaces.get("tiny"), cfg, 12).state_dict()[k])
                      .abs().max()) for k in one if one[k].is_floating_point())
    assert moved > 1e-3  # the runs did train


def _pairs(cfg: SearchConfig) -> tuple[list, list]:
    data = prepare_data(cfg)  # one process: the same synthetic pairs, before sharding
    return data.train.pairs, data.valid.pairs

