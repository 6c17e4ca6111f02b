"""The one search loop every strategy runs in.

Per update: one search-train batch (for w) and one search-valid batch (for alpha) go to
``strategy.step``; the executor logs, shows progress, checkpoints and resumes. A checkpoint
holds everything the next update depends on (supernet weights and alphas, the strategy's
optimisers, the RNG states and both data positions), so a run killed after a checkpoint and
resumed ends bitwise equal to one that never stopped (on CPU).

The run directory (``nasframe.run.rundir``, kind ``search``)::

    run.json  config.json  space.json  vocab.model   what was searched, recorded at the start
    metrics.jsonl                         one JSON line per ``log_every`` updates
    checkpoints/checkpoint_{N}.pt         every ``checkpoint_every`` updates and at the end
    arch_step{N}.json  arch.json          derived architecture at each checkpoint / latest
    result.json                           final architecture, metrics (and candidates)

A non-finite loss or gradient stops the run (``NonFiniteError``) before anything of that
update is written, unless ``skip_nonfinite`` allows skipping the batch (the built-in
strategies then leave w and alpha unchanged).

Under ``torchrun`` (WORLD_SIZE > 1) gradients are averaged across processes and rank 0
writes every file.
"""
from __future__ import annotations

import json
import math
import os
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

from nasframe.base.errors import CheckpointError, ConfigError, NonFiniteError
from nasframe.base.runtime import progress_bar, rng_state, set_rng_state
from nasframe.dsl.architecture import Architecture
from nasframe.dsl.space import Sequential
from nasframe.run.resume import record_session
from nasframe.run.rundir import RunDir, check_finite, divergence
from nasframe.searching.strategy import SearchContext, Strategy

if TYPE_CHECKING:
    from nasframe.engine.supernet import Supernet
    from nasframe.run.config import SearchConfig
    from nasframe.text.data import Batch, TokenBatcher

__all__ = ["Executor", "SearchResult", "World", "alpha_entropy"]


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
    skipped: int = 0


# ----------------------------------------------------------------------------- DDP

@dataclass
class World:
    """The processes of a run; single process unless launched by torchrun (WORLD_SIZE > 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # from_env started the process group: close() ends it

    @classmethod
    def from_env(cls, device: torch.device) -> World:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                   owns)

    def close(self, wait: bool = True) -> None:
        """End the process group this world started, as torch asks of every program; with
        ``wait``, once every rank got here (a failing rank does not wait for the others). Left
        to interpreter exit, each rank tore its group down while the other could still be
        working: one CI run saw a rank abort with "terminate called without an active
        exception", the likely cause."""
        if self.owns_group and dist.is_initialized():
            if wait:
                dist.barrier()
            dist.destroy_process_group()
            self.owns_group = False

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
    (``SearchContext.valid_batches``). ``run=None`` runs without writing anything; under
    torchrun every process holds the RunDir and rank 0 writes.
    """

    def __init__(self, supernet: Supernet, strategy: Strategy, train: TokenBatcher,
                 valid: TokenBatcher, config: SearchConfig, run: RunDir | None = None, *,
                 valid_scoring: list[Batch] | None = None, device: torch.device | None = None,
                 world: World | None = None, progress: bool = False) -> None:
        self.net, self.strategy, self.config = supernet, strategy, config
        self.train, self.valid = train, valid
        self.device = device or next(supernet.parameters()).device
        self.world = world or World()
        self.run_dir = run
        self.writes = run is not None and self.world.main
        self.progress = progress
        self.history: list[dict[str, Any]] = []
        self.skipped = 0
        scoring = [b.to(self.device) for b in (valid_scoring or [])]
        self.ctx = SearchContext(supernet, config, self.device, self.world.world_size,
                                 self.world.rank, valid_batches=lambda: iter(scoring),
                                 sync_grads=self.world.sync_grads)
        check_backbone(strategy, supernet)
        strategy.setup(self.ctx)
        self.world.broadcast(supernet)

    # -- public -----------------------------------------------------------------------------
    def run(self, resume: bool = False) -> SearchResult:
        start = self._resume() if resume else 0
        if self.writes:
            assert self.run_dir is not None
            self.run_dir.write_text("config.json", self.config.to_json())  # e.g. more steps
            record_session(self.run_dir, start, self.world.world_size, str(self.device),
                           Console(stderr=True))
        self.world.barrier()
        self.net.train()
        steps = self.config.steps
        if start < steps:
            self._loop(start, steps)
        return self._finish()

    # -- start ------------------------------------------------------------------------------
    def _resume(self) -> int:
        if self.run_dir is None:
            raise CheckpointError("resume needs a run directory (out=...)")
        path = self.run_dir.latest()
        if path is None:
            raise CheckpointError(f"{self.run_dir.path}: no checkpoint to resume from")
        ckpt = self.run_dir.load(path)
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
        self.history, self.skipped = list(ckpt.get("history", [])), int(ckpt.get("skipped", 0))
        if self.writes:  # a kill may have come between the checkpoint and these files
            self.run_dir.truncate_metrics(step)
            self._write_architecture(step, self.strategy.derive())
            self.strategy.load_state_dict(ckpt["strategy"])  # as if derive had not run again
        rngs = ckpt["rng"]
        set_rng_state(rngs[self.world.rank] if self.world.rank < len(rngs) else rngs[0],
                      self.device)
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
                bad = [k for k, v in metrics.items() if not math.isfinite(float(v))]
                if bad:
                    self._nonfinite(step, bad)
                    metrics = {k: v for k, v in metrics.items() if k not in bad}
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

    def _nonfinite(self, step: int, keys: list[str]) -> None:
        """Skip the batch if the strategy left the parameters finite and the budget allows;
        otherwise stop, naming the last good checkpoint."""
        what = ", ".join(keys)
        params = ((n, p.detach()) for n, p in self.net.named_parameters())
        try:
            check_finite(params, f"update {step}")
        except NonFiniteError as err:
            raise divergence(self.run_dir, step, f"{what} (and then {err})") from None
        self.skipped += 1
        if self.skipped > self.config.skip_nonfinite:
            raise divergence(self.run_dir, step, what)
        if self.writes:
            assert self.run_dir is not None
            self.run_dir.log({"event": "skip", "step": step, "what": what,
                              "skipped": self.skipped})

    def _progress_bar(self) -> Progress:
        self._console = Console(stderr=True)
        shown = self.progress and self.world.main
        self._plain_log = shown and not self._console.is_terminal
        return progress_bar(self._console, MofNCompleteColumn(),
                            TextColumn("{task.fields[stats]}"),
                            disable=not shown or self._plain_log)

    def _log(self, step: int, means: dict[str, float], tokens_per_s: float) -> dict[str, Any]:
        line: dict[str, Any] = {"event": "train", "step": step, **means,
                                "tokens_per_s": tokens_per_s}
        entropy = alpha_entropy(self.net)
        if entropy is not None:
            line["alpha_entropy"] = entropy
        if self.writes:
            assert self.run_dir is not None
            line = self.run_dir.log(line)
        else:
            line["time"] = time.time()
        self.history.append(line)
        return line

    # -- checkpoints ------------------------------------------------------------------------
    def _checkpoint(self, step: int) -> None:
        if self.run_dir is None:
            return
        arch = self.strategy.derive()  # first: it may cache what the checkpoint should hold
        rngs = self.world.gather(rng_state(self.device))
        if self.writes:
            check_finite(self.alpha_items(), f"update {step}: refusing to write a checkpoint")
            state = {
                "strategy_name": self.strategy.name, "space_digest": self.net.space.digest(),
                "space": self.net.space.to_json(), "config": self.config.to_json(),
                "vocab_size": self.net.vocab_size,
                "model": self.net.state_dict(), "strategy": self.strategy.state_dict(),
                "rng": rngs, "skipped": self.skipped,
                "data": {"train": self.train.state_dict(), "valid": self.valid.state_dict()},
                "history": self.history,
            }
            self.run_dir.save_checkpoint(step, state, keep=self.config.keep_checkpoints)
            self._write_architecture(step, arch)
        self.world.barrier()

    def alpha_items(self) -> list[tuple[str, Tensor]]:
        return [(f"alpha {k}", v.detach()) for k, v in self.net.alpha_dict().items()]

    def _write_architecture(self, step: int, arch: Architecture) -> None:
        assert self.run_dir is not None
        arch.save(self.run_dir.file(f"arch_step{step}.json"))
        arch.save(self.run_dir.file("arch.json"))

    # -- end --------------------------------------------------------------------------------
    def _finish(self) -> SearchResult:
        arch = self.strategy.derive()
        cands = getattr(self.strategy, "candidates", None)
        candidates = [(c.arch, c.score) for c in cands()] if callable(cands) else []
        alphas = {k: v.clone() for k, v in self.net.alpha_dict().items()} \
            if any(a.requires_grad for a in self.net.arch_parameters()) else {}
        metrics = dict(self.history[-1]) if self.history else {}
        out = self.run_dir.path if self.run_dir is not None else None
        result = SearchResult(arch, alphas, metrics, self.history, self.ctx.step, out,
                              candidates, self.net, self.strategy, self.skipped)
        if self.writes:
            assert self.run_dir is not None
            summary = {"steps": self.ctx.step, "metrics": metrics, "skipped": self.skipped,
                       "architecture": json.loads(arch.to_json()),
                       "candidates": [{"choices": a.choices, "score": s} for a, s in candidates]}
            self.run_dir.write_json("result.json", summary)
        return result


def _describe(line: dict[str, Any]) -> str:
    parts = [f"{k.removeprefix('loss_')} {line[k]:.3f}" for k in ("loss_train", "loss_val")
             if k in line]
    parts.append(f"{line['tokens_per_s']:,.0f} tok/s")
    if "alpha_entropy" in line:
        parts.append(f"H(alpha) {line['alpha_entropy']:.3f}")
    return " | ".join(parts)
