"""The one search loop every strategy runs in.

Per update: one search-train batch (for w) and one search-valid batch (for alpha) go to
``strategy.step``; the executor logs, shows progress, checkpoints and resumes. A checkpoint
holds everything the next update depends on (supernet weights and alphas, the strategy's
optimisers, the RNG states and both data positions), so a run killed after a checkpoint and
resumed ends bitwise equal to one that never stopped (on CPU).

Run directory::

    config.json  space.json  run.json     what was searched, recorded at the start
    metrics.jsonl                         one JSON line per ``log_every`` updates
    checkpoint_{N}.pt                     every ``checkpoint_every`` updates and at the end
    arch_step{N}.json  arch.json          derived architecture at each checkpoint / latest
    result.json                           final architecture, metrics (and candidates)

Under ``torchrun`` (WORLD_SIZE > 1) gradients are averaged across processes and rank 0
writes every file.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress, TextColumn
from torch import Tensor

from nasframe.architecture import Architecture
from nasframe.errors import CheckpointError, ConfigError
from nasframe.runtime import atomic_save, atomic_write_text, progress_bar, rng_state, set_rng_state
from nasframe.space import Sequential
from nasframe.strategy import SearchContext, Strategy

if TYPE_CHECKING:
    from nasframe.config import SearchConfig
    from nasframe.data import Batch, TokenBatcher
    from nasframe.supernet import Supernet

__all__ = ["Executor", "SearchResult", "World", "alpha_entropy", "find_checkpoint",
           "load_checkpoint_file"]

CHECKPOINT_FORMAT = 1
_CKPT = re.compile(r"^checkpoint_(\d+)\.pt$")


@dataclass
class SearchResult:
    """What a search returns: the derived architecture, its alphas and the metrics."""

    architecture: Architecture
    alphas: dict[str, Tensor]
    metrics: dict[str, float]
    history: list[dict[str, Any]]
    steps: int
    run_dir: Path | None = None
    #: (architecture, score) best first, for strategies that rank several (SPOS: val loss).
    candidates: list[tuple[Architecture, float]] = field(default_factory=list)
    supernet: Supernet | None = field(default=None, repr=False)
    strategy: Strategy | None = field(default=None, repr=False)

    @property
    def probabilities(self) -> dict[str, dict[str, float]] | None:
        return self.architecture.probabilities


# ----------------------------------------------------------------------------- DDP

@dataclass
class World:
    """The processes of a run; single process unless launched by torchrun (WORLD_SIZE > 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, device: torch.device) -> World:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sync_grads(self, params: Iterable[Tensor]) -> None:
        """Average ``.grad`` over processes: one all-reduce of the flattened gradients.

        Every process must hold gradients for the same parameters (strategies that sample a
        path seed their sampler alike on every rank).
        """
        if self.world_size == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast(self, module: torch.nn.Module) -> None:
        if self.world_size > 1:
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0)

    def gather(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


# ----------------------------------------------------------------------------- helpers

def alpha_entropy(supernet: Supernet) -> float | None:
    """Mean entropy of softmax(alpha) over choice nodes (log |O| at the start, 0 when decided);
    None when the alphas are not being searched."""
    alphas = [a for a in supernet.arch_parameters() if a.requires_grad]
    if not alphas:
        return None
    with torch.no_grad():
        ent = [-(torch.softmax(a, -1) * torch.log_softmax(a, -1)).sum() for a in alphas]
    return float(torch.stack(ent).mean())


def find_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint with the highest update number in ``run_dir``."""
    found = [(int(m.group(1)), p) for p in run_dir.glob("checkpoint_*.pt")
             if (m := _CKPT.match(p.name))]
    return max(found)[1] if found else None


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({err})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a nasframe search checkpoint "
                              f"(format {CHECKPOINT_FORMAT})")
    return ckpt


def check_backbone(strategy: Strategy, supernet: Supernet) -> None:
    if getattr(strategy, "backbone", "any") != "reversible":
        return
    sequential = [part for part, spec in supernet.space.parts() if isinstance(spec, Sequential)]
    if sequential:
        raise ConfigError(
            f"strategy {strategy.name!r} searches reversible spaces, but the "
            f"{' and '.join(sequential)} of space {supernet.space.name!r} is a standard "
            "(sequential) layer; use a reversible space or --strategy darts")


# ----------------------------------------------------------------------------- the loop

class Executor:
    """Runs ``strategy`` on ``supernet`` with two batch streams for ``config.steps`` updates.

    ``valid_scoring`` is a fixed list of search-valid batches for scoring architectures
    (``SearchContext.valid_batches``). ``out=None`` runs without writing anything.
    """

    def __init__(self, supernet: Supernet, strategy: Strategy, train: TokenBatcher,
                 valid: TokenBatcher, config: SearchConfig, out: str | Path | None = None, *,
                 valid_scoring: list[Batch] | None = None, device: torch.device | None = None,
                 world: World | None = None, progress: bool = False,
                 run_info: dict[str, Any] | None = None) -> None:
        self.net, self.strategy, self.config = supernet, strategy, config
        self.train, self.valid = train, valid
        self.device = device or next(supernet.parameters()).device
        self.world = world or World()
        self.out = Path(out) if out is not None else None
        self.progress, self.run_info = progress, dict(run_info or {})
        self.history: list[dict[str, Any]] = []
        scoring = [b.to(self.device) for b in (valid_scoring or [])]
        self.ctx = SearchContext(supernet, config, self.device, self.world.world_size,
                                 self.world.rank, valid_batches=lambda: iter(scoring),
                                 sync_grads=self.world.sync_grads)
        check_backbone(strategy, supernet)
        strategy.setup(self.ctx)
        self.world.broadcast(supernet)

    # -- public -----------------------------------------------------------------------------
    def run(self, resume: bool = False) -> SearchResult:
        start = self._resume() if resume else self._fresh()
        self.net.train()
        steps = self.config.steps
        if start < steps:
            self._loop(start, steps)
        return self._finish()

    # -- start ------------------------------------------------------------------------------
    def _fresh(self) -> int:
        if self.out is not None and self.world.main:
            if find_checkpoint(self.out) is not None:
                raise CheckpointError(f"{self.out}: already holds checkpoints; resume it "
                                      "(--resume) or choose another output directory")
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "metrics.jsonl").write_text("", encoding="utf-8")
            atomic_write_text(self.config.to_json(), self.out / "config.json")
            atomic_write_text(self.net.space.to_json(), self.out / "space.json")
            info = {"strategy": self.strategy.name, "space": self.net.space.name,
                    "space_digest": self.net.space.digest(), "vocab_size": self.net.vocab_size,
                    "world_size": self.world.world_size, **self.run_info}
            atomic_write_text(json.dumps(info, indent=2), self.out / "run.json")
        self.world.barrier()
        return 0

    def _resume(self) -> int:
        path = find_checkpoint(self.out) if self.out is not None else None
        if path is None:
            raise CheckpointError(f"{self.out}: no checkpoint to resume from")
        ckpt = load_checkpoint_file(path)
        if ckpt["strategy_name"] != self.strategy.name:
            raise CheckpointError(f"{path}: written by strategy {ckpt['strategy_name']!r}, "
                                  f"not {self.strategy.name!r}")
        if ckpt["space_digest"] != self.net.space.digest():
            raise CheckpointError(f"{path}: written for another search space "
                                  f"({ckpt['space_digest']} != {self.net.space.digest()})")
        step = int(ckpt["step"])
        self.ctx.step = step
        self.net.load_state_dict(ckpt["model"])
        self.strategy.load_state_dict(ckpt["strategy"])
        self.train.load_state_dict(ckpt["data"]["train"])
        self.valid.load_state_dict(ckpt["data"]["valid"])
        rngs = ckpt["rng"]
        set_rng_state(rngs[self.world.rank] if self.world.rank < len(rngs) else rngs[0],
                      self.device)
        self.history = list(ckpt.get("history", []))
        if self.world.main:  # drop lines logged after the checkpoint by the killed run
            assert self.out is not None
            atomic_write_text("".join(json.dumps(h) + "\n" for h in self.history),
                              self.out / "metrics.jsonl")
            atomic_write_text(self.config.to_json(), self.out / "config.json")  # e.g. more steps
        self.world.barrier()
        return step

    # -- loop -------------------------------------------------------------------------------
    def _loop(self, start: int, steps: int) -> None:
        cfg = self.config
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        tokens, t0 = 0, time.perf_counter()
        with self._progress_bar() as bar:
            task = bar.add_task("search", total=steps, completed=start, stats="")
            for step in range(start + 1, steps + 1):
                self.ctx.step = step
                train_b = next(self.train).to(self.device)
                val_b = next(self.valid).to(self.device)
                metrics = self.strategy.step(train_b, val_b)
                for k, v in metrics.items():  # a metric may be absent on some updates
                    sums[k] = sums.get(k, 0.0) + float(v)
                    counts[k] = counts.get(k, 0) + 1
                tokens += (train_b.n_tgt_tokens + val_b.n_tgt_tokens) * self.world.world_size
                if step % cfg.log_every == 0 or step == steps:
                    elapsed = time.perf_counter() - t0
                    line = self._log(step, {k: v / counts[k] for k, v in sums.items()},
                                     tokens / elapsed if elapsed > 0 else math.nan)
                    bar.update(task, stats=_describe(line))
                    if self._plain_log:  # no live bar (a file or a pipe): one line per log
                        self._console.print(f"step {step}/{steps} | {_describe(line)}")
                    sums, counts, tokens, t0 = {}, {}, 0, time.perf_counter()
                bar.update(task, completed=step)
                if step % cfg.checkpoint_every == 0 or step == steps:
                    self._checkpoint(step)

    def _progress_bar(self) -> Progress:
        self._console = Console(stderr=True)
        shown = self.progress and self.world.main
        self._plain_log = shown and not self._console.is_terminal
        return progress_bar(self._console, MofNCompleteColumn(),
                            TextColumn("{task.fields[stats]}"),
                            disable=not shown or self._plain_log)

    def _log(self, step: int, means: dict[str, float], tokens_per_s: float) -> dict[str, Any]:
        line: dict[str, Any] = {"step": step, **means, "tokens_per_s": tokens_per_s}
        entropy = alpha_entropy(self.net)
        if entropy is not None:
            line["alpha_entropy"] = entropy
        line["time"] = time.time()
        self.history.append(line)
        if self.out is not None and self.world.main:
            with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
        return line

    # -- checkpoints ------------------------------------------------------------------------
    def _checkpoint(self, step: int) -> None:
        if self.out is None:
            return
        arch = self.strategy.derive()  # first: it may cache what the checkpoint should hold
        rngs = self.world.gather(rng_state(self.device))
        if self.world.main:
            ckpt = {
                "format": CHECKPOINT_FORMAT, "step": step,
                "strategy_name": self.strategy.name, "space_digest": self.net.space.digest(),
                "space": self.net.space.to_json(), "config": self.config.to_json(),
                "vocab_size": self.net.vocab_size,
                "model": self.net.state_dict(), "strategy": self.strategy.state_dict(),
                "rng": rngs,
                "data": {"train": self.train.state_dict(), "valid": self.valid.state_dict()},
                "history": self.history,
            }
            atomic_save(ckpt, self.out / f"checkpoint_{step}.pt")
            arch.save(self.out / f"arch_step{step}.json")
            arch.save(self.out / "arch.json")
            self._prune_checkpoints()
        self.world.barrier()

    def _prune_checkpoints(self) -> None:
        keep = self.config.keep_checkpoints
        if keep is None or self.out is None:
            return
        found = sorted((int(m.group(1)), p) for p in self.out.glob("checkpoint_*.pt")
                       if (m := _CKPT.match(p.name)))
        for _, path in found[:-keep]:
            path.unlink()

    # -- end --------------------------------------------------------------------------------
    def _finish(self) -> SearchResult:
        arch = self.strategy.derive()
        cands = getattr(self.strategy, "candidates", None)
        candidates = [(c.arch, c.score) for c in cands()] if callable(cands) else []
        alphas = {k: v.clone() for k, v in self.net.alpha_dict().items()} \
            if any(a.requires_grad for a in self.net.arch_parameters()) else {}
        metrics = dict(self.history[-1]) if self.history else {}
        result = SearchResult(arch, alphas, metrics, self.history, self.ctx.step, self.out,
                              candidates, self.net, self.strategy)
        if self.out is not None and self.world.main:
            summary = {"steps": self.ctx.step, "metrics": metrics,
                       "architecture": json.loads(arch.to_json()),
                       "candidates": [{"choices": a.choices, "score": s} for a, s in candidates]}
            atomic_write_text(json.dumps(summary, indent=2), self.out / "result.json")
        return result


def _describe(line: dict[str, Any]) -> str:
    parts = [f"{k.removeprefix('loss_')} {line[k]:.3f}" for k in ("loss_train", "loss_val")
             if k in line]
    parts.append(f"{line['tokens_per_s']:,.0f} tok/s")
    if "alpha_entropy" in line:
        parts.append(f"H(alpha) {line['alpha_entropy']:.3f}")
    return " | ".join(parts)
