"""Re-training a fixed architecture with ordinary backprop (Zhao et al. 2021, §5 "Re-train").

A derived (or hand-written) architecture becomes a plain model (``build_model``) trained with
label-smoothed cross entropy, Adam and the inverse-square-root schedule, on token-budget
batches. The run directory (``nasframe.run.rundir``, kind ``train``) alone is the trained model::

    runs/y/run.json  config.json (TrainConfig and the data)  arch.json  vocab.model
    runs/y/metrics.jsonl
    runs/y/checkpoints/checkpoint_<step>.pt   full state: --resume, averaging
    runs/y/checkpoints/checkpoint_best.pt     lowest validation loss; checkpoint_avg.pt

Resuming restores the model, the optimiser, the schedule, every random generator and the
batcher's position, so a run killed and resumed ends bitwise equal to one that never stopped
(at the same thread count, which the run records).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import torch
from rich.console import Console
from rich.progress import TaskProgressColumn, TextColumn
from torch import Tensor

from nasframe.base.errors import ConfigError, DataError, RunDirError
from nasframe.base.runtime import (
    autocast,
    inverse_sqrt,
    progress_bar,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)
from nasframe.dsl.architecture import Architecture
from nasframe.engine.sizing import parameter_breakdown
from nasframe.engine.supernet import build_model, count_parameters
from nasframe.run.config import TrainConfig, apply_overrides
from nasframe.run.resume import TRAIN_RESUMABLE, record_session, resume_config
from nasframe.run.rundir import RunDir, RunKind, divergence
from nasframe.text.data import (
    Batch,
    DataSpec,
    Pair,
    ParallelCorpus,
    TokenBatcher,
    Vocab,
    cache_dir,
    encode_corpus,
    get_or_train_vocab,
    load_data,
)
from nasframe.text.loading import ARCH, AVERAGE, BEST, VOCAB, read_train_config
from nasframe.text.output_loss import seq2seq_loss_terms

__all__ = ["TrainResult", "Trainer", "train"]


class TrainingBar:
    """A rich progress bar over the training budget (steps or minutes, whichever ends first)
    showing the step, the loss and tokens/s; disabled, it does nothing."""

    def __init__(self, console: Console, description: str, enabled: bool = True) -> None:
        self.progress = progress_bar(
            console, TaskProgressColumn(), TextColumn("step {task.fields[step]:,}"),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tok/s"),
            disable=not enabled)
        self.task = self.progress.add_task(description, total=1.0, step=0, loss="-", speed="-")

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, fraction: float, step: int, loss: float | None = None,
               speed: float | None = None) -> None:
        fields: dict[str, Any] = {"step": step}
        if loss is not None:
            fields["loss"] = f"{loss:.3f}"
        if speed is not None:
            fields["speed"] = f"{speed:,.0f}"
        self.progress.update(self.task, completed=fraction, **fields)


# ----------------------------------------------------------------------------- the trainer

@dataclass
class TrainResult:
    """What a finished ``train`` call did (also the last ``"event": "end"`` metrics line)."""

    run_dir: Path
    steps: int
    train_seconds: float
    parameters: int
    best_valid_loss: float | None
    checkpoint: Path
    dropped: dict[str, int] = field(default_factory=dict)
    skipped: int = 0


class Trainer:
    """The training loop over one run directory; ``run()`` trains until steps or time end."""

    def __init__(self, run: RunDir, config: TrainConfig, arch: Architecture, vocab_size: int,
                 train_pairs: list[Pair], valid_pairs: list[Pair],
                 console: Console | None = None, progress: bool = True) -> None:
        self.run_dir, self.config, self.arch = run, config, arch
        self.pad_id = config.model.pad_id
        self.console = console or Console(stderr=True)
        self.show_progress = progress
        self.device = resolve_device(config.device)
        seed_everything(config.seed)
        self.model = build_model(arch, config.model, vocab_size).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr,
                                          betas=config.betas, eps=config.eps,
                                          weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           inverse_sqrt(config.warmup))
        # fp16 needs loss scaling; its scaler skips the updates whose gradients overflow
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=config.precision == "fp16")
        self.batcher = TokenBatcher(train_pairs, config.max_tokens, shuffle=True,
                                    seed=config.seed)
        self.valid_pairs = valid_pairs
        self.step = 0
        self.elapsed = 0.0   # training seconds over all sessions of this run
        self.best_valid: float | None = None
        self.skipped = 0     # batches skipped for a non-finite loss or gradient
        self._validated: tuple[int, dict[str, float]] | None = None  # (step, scores)

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "elapsed": self.elapsed, "best_valid": self.best_valid,
            "skipped": self.skipped,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "batcher": self.batcher.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng_state(self.device),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.batcher.load_state_dict(state["batcher"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], self.device)
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self.best_valid, self.skipped = state["best_valid"], int(state.get("skipped", 0))

    def save(self) -> None:
        """A numbered checkpoint of the whole state; the oldest beyond the kept ones go."""
        keep = max(self.config.keep_checkpoints, self.config.average_last)
        self.run_dir.save_checkpoint(self.step, self.state_dict(), keep=keep)

    # -- one update -------------------------------------------------------------------------
    def train_step(self, batch: Batch) -> dict[str, float]:
        self.model.train()
        batch = batch.to(self.device)
        loss, nll, n = self._loss_terms(batch)
        self.optimizer.zero_grad(set_to_none=True)
        per_token = max(int(n), 1)
        self.scaler.scale(loss / per_token).backward()
        self.scaler.unscale_(self.optimizer)
        norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                    self.config.clip_norm or math.inf))
        self.step += 1
        stats = {"loss": float(loss.detach()) / per_token, "nll": float(nll.detach()) / per_token,
                 "tokens": float(n), "grad_norm": norm}
        # Under fp16 an overflowing gradient is the scaler's business (it skips the update and
        # lowers the scale); a non-finite loss is divergence in every precision.
        checked = ("loss",) if self.scaler.is_enabled() else ("loss", "grad_norm")
        bad = [k for k in checked if not math.isfinite(stats[k])]
        if bad:  # skip the update: the weights and the optimiser's moments stay as they were
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
            self._skip(" and ".join(bad))
            return stats
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return stats

    def _loss_terms(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """Summed label-smoothed loss, summed NLL and target count, the output layer and the
        loss in chunks of tokens (``nasframe.text.output_loss``: no (tokens, vocabulary) tensor is
        kept for backward)."""
        with autocast(self.config.precision, self.device):
            return seq2seq_loss_terms(self.model, batch, self.config.label_smoothing,
                                      self.pad_id)

    def _skip(self, what: str) -> None:
        self.skipped += 1
        if self.skipped > self.config.skip_nonfinite:
            raise divergence(self.run_dir, self.step, f"the training {what}")
        self.run_dir.log({"event": "skip", "step": self.step, "what": what,
                          "skipped": self.skipped})
        self.console.print(f"[yellow]update {self.step}: non-finite {what}; batch skipped "
                           f"({self.skipped} of at most {self.config.skip_nonfinite})[/]")

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Per-token label-smoothed loss and NLL on the validation pairs (dropout off)."""
        self.model.eval()
        loss_sum = nll_sum = 0.0
        count = 0
        batcher = TokenBatcher(self.valid_pairs, self.config.max_tokens, shuffle=False)
        for batch in batcher.iter_epoch():
            loss, nll, n = self._loss_terms(batch.to(self.device))
            loss_sum, nll_sum, count = loss_sum + float(loss), nll_sum + float(nll), count + int(n)
        return {"valid_loss": loss_sum / max(count, 1), "valid_nll": nll_sum / max(count, 1)}

    def _validate_and_keep_best(self) -> dict[str, float]:
        if self._validated is not None and self._validated[0] == self.step:
            return self._validated[1]
        scores = self.validate()
        self._validated = (self.step, scores)
        if not math.isfinite(scores["valid_loss"]):
            raise divergence(self.run_dir, self.step, "the validation loss")
        if self.best_valid is None or scores["valid_loss"] < self.best_valid:
            self.best_valid = scores["valid_loss"]
            self.run_dir.save_checkpoint(self.step, {"model": self.model.state_dict(), **scores},
                                         name=BEST)
        self.run_dir.log({"event": "valid", "step": self.step, **scores,
                          "best_valid_loss": self.best_valid})
        return scores

    # -- the loop ---------------------------------------------------------------------------
    def done(self) -> bool:
        cfg = self.config
        return ((cfg.steps is not None and self.step >= cfg.steps)
                or (cfg.minutes is not None and self.elapsed >= cfg.minutes * 60))

    def fraction_done(self) -> float:
        cfg = self.config
        parts = []
        if cfg.steps is not None:
            parts.append(self.step / cfg.steps)
        if cfg.minutes is not None:
            parts.append(self.elapsed / (cfg.minutes * 60))
        return min(1.0, max(parts))

    def run(self) -> TrainResult:
        """Train until the step or time budget ends. The time budget counts everything in the
        loop (validation and checkpoints too), so a run given N minutes takes about N."""
        cfg = self.config
        valid_every = cfg.valid_every or cfg.checkpoint_every
        window_tokens, window_start = 0.0, time.perf_counter()
        with TrainingBar(self.console, "train", enabled=self.show_progress) as bar:
            while not self.done():
                started = time.perf_counter()
                stats = self.train_step(next(self.batcher))
                window_tokens += stats["tokens"]
                if self.step % cfg.log_every == 0:
                    now = time.perf_counter()
                    speed = window_tokens / max(now - window_start, 1e-9)
                    window_tokens, window_start = 0.0, now
                    self.run_dir.log({
                        "event": "train", "step": self.step, **stats, "tokens_per_s": speed,
                        "lr": self.scheduler.get_last_lr()[0], "elapsed": self.elapsed,
                        "epoch": self.batcher.epoch})
                    bar.update(self.fraction_done(), self.step, stats["loss"], speed)
                last = cfg.steps is not None and self.step >= cfg.steps
                if self.step % valid_every == 0 and not last:
                    self._validate_and_keep_best()
                if self.step % cfg.checkpoint_every == 0 and not last:
                    self.save()
                self.elapsed += time.perf_counter() - started
            bar.update(self.fraction_done(), self.step)
        return self.finish()

    def finish(self) -> TrainResult:
        """Final validation and checkpoint, then the averaged model if asked for."""
        scores = self._validate_and_keep_best()
        self.save()
        chosen = self.run_dir.checkpoints / BEST
        if self.config.average_last > 0:
            model, names = self.run_dir.average(self.config.average_last)
            chosen = self.run_dir.save_checkpoint(self.step, {"model": model, "averaged": names},
                                                  name=AVERAGE)
        result = TrainResult(self.run_dir.path, self.step, self.elapsed,
                             count_parameters(self.model), self.best_valid, chosen,
                             skipped=self.skipped)
        self.run_dir.log({"event": "end", "step": self.step, "elapsed": self.elapsed,
                          "parameters": result.parameters, **scores,
                          "best_valid_loss": self.best_valid, "checkpoint": chosen.name,
                          "skipped": self.skipped})
        return result


# ----------------------------------------------------------------------------- the API

def _encode(corpus: ParallelCorpus, vocab: Vocab, max_len: int, what: str,
            console: Console) -> tuple[list[Pair], int]:
    pairs, dropped = encode_corpus(corpus, vocab, max_len)
    console.print(f"{what}: {len(pairs):,} pairs from {corpus.name}"
                  + (f", {dropped:,} dropped (a side over {max_len} subwords)" if dropped else ""))
    if not pairs:
        raise DataError(f"{corpus.name}: every pair was dropped (longer than max_len="
                        f"{max_len} subwords)")
    return pairs, dropped


def train(arch: Architecture | None, out: str | Path, config: TrainConfig | None = None,
          data: DataSpec | None = None, *, resume: bool = False,
          overrides: dict[str, Any] | None = None, progress: bool = True,
          console: Console | None = None, vocab_cache: str | Path | None = None,
          corpora: tuple[ParallelCorpus, ParallelCorpus] | None = None) -> TrainResult:
    """Train ``arch`` into a new run directory ``out``, or continue the run there.

    ``config`` defaults to the ``tiny`` preset; ``overrides`` replace its fields by (dotted)
    name. ``resume=True`` continues the recorded run: its architecture, config and data, of
    which only ``nasframe.run.resume.TRAIN_RESUMABLE`` fields may change (others are refused with
    the list of differences). ``corpora`` passes already loaded (train, valid) corpora.
    """
    console = console or Console(stderr=True)
    run: RunDir | None = None
    try:  # the run's lock is freed however the run ends
        if resume:
            run = RunDir.resume(out, RunKind.TRAIN)
            arch, config, data = _resumed_setup(run, arch, config, data, overrides or {})
        else:
            RunDir.check_new(out, RunKind.TRAIN)  # before any work: a refused --out costs nothing
            if arch is None:
                raise ConfigError("train: an architecture is needed (--arch arch.json)")
            config = apply_overrides(config or TrainConfig.preset_config("tiny"), overrides or {})
            data = (data or DataSpec()).absolute()
        train_corpus, valid_corpus = corpora or load_data(data)
        if resume:
            vocab = Vocab.load(run.file(VOCAB))
        else:
            vocab = get_or_train_vocab(train_corpus, vocab_cache or cache_dir(), config.vocab_size)
        train_pairs, dropped_train = _encode(train_corpus, vocab, config.max_len, "train", console)
        valid_pairs, dropped_valid = _encode(valid_corpus, vocab, config.max_len, "valid", console)
        if not resume:
            run = RunDir.create(out, RunKind.TRAIN, {"architecture": arch.space.name})
            arch.save(run.file(ARCH))
            vocab.save(run.file(VOCAB))
        run.write_json("config.json", {"train": config.model_dump(mode="json"),
                                       "data": data.model_dump(mode="json")})
        trainer = Trainer(run, config, arch, len(vocab), train_pairs, valid_pairs, console,
                          progress)
        if resume:
            trainer.load_state_dict(run.load())
            run.truncate_metrics(trainer.step)
            console.print(f"resumed {run.path} at update {trainer.step:,}")
        record_session(run, trainer.step, 1, str(trainer.device), console)
        dropped = {"train": dropped_train, "valid": dropped_valid}
        run.log({"event": "data", "step": trainer.step, "train_pairs": len(train_pairs),
                 "valid_pairs": len(valid_pairs), "dropped_train": dropped_train,
                 "dropped_valid": dropped_valid, "max_len": config.max_len,
                 "vocab_size": len(vocab), "parameters": count_parameters(trainer.model),
                 "embedding_parameters": parameter_breakdown(trainer.model)["embedding"],
                 "threads": torch.get_num_threads()})
        console.print(f"model: {count_parameters(trainer.model):,} parameters on {trainer.device}")
        result = trainer.run()
        result.dropped = dropped
        return result
    finally:
        if run is not None:
            run.close()


def _resumed_setup(run: RunDir, arch: Architecture | None, config: TrainConfig | None,
                   data: DataSpec | None, overrides: dict[str, Any]
                   ) -> tuple[Architecture, TrainConfig, DataSpec]:
    recorded, saved_data = read_train_config(run)
    saved_arch = Architecture.load(run.file(ARCH))
    if arch is not None and arch.choices != saved_arch.choices:
        raise RunDirError(f"{run.path} was trained with another architecture; resume without "
                          "--arch or choose another --out")
    if data is not None and data != DataSpec() and data.absolute() != saved_data:
        raise RunDirError(f"{run.path} was trained on other data ({saved_data.model_dump()}); "
                          "resume without data options")
    config = resume_config(recorded, requested=config, overrides=overrides,
                           allowed=TRAIN_RESUMABLE, where=f"{run.path}: --resume")
    return saved_arch, config, saved_data
