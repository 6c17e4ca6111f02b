"""Re-training a fixed architecture with ordinary backprop (paper.md §5, "Re-train").

A derived (or hand-written) architecture becomes a plain model (``build_model``) trained with
label-smoothed cross entropy, Adam and the inverse-square-root schedule, on token-budget
batches. Everything a later ``translate`` or ``evaluate`` needs is kept in the run directory,
so the directory alone is the trained model::

    runs/y/config.json        TrainConfig and where the data came from
    runs/y/arch.json          the architecture
    runs/y/vocab.model        the joint sentencepiece vocabulary
    runs/y/metrics.jsonl      one JSON object per logged update / validation
    runs/y/checkpoints/       checkpoint_last.pt (full state, for --resume),
                              checkpoint_best.pt (lowest validation loss),
                              checkpoint_<step>.pt (weights, for averaging), checkpoint_avg.pt

Resuming restores the model, the optimiser, the schedule, every random generator and the
batcher's position, so a run killed and resumed ends bitwise equal to one that never stopped.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.progress import TaskProgressColumn, TextColumn
from torch import Tensor

from nasframe.architecture import Architecture
from nasframe.data import (
    Batch,
    Pair,
    ParallelCorpus,
    TokenBatcher,
    Vocab,
    encode_corpus,
    get_or_train_vocab,
    load_split,
    read_pair,
    read_tsv,
    split_search,
)
from nasframe.data.corpus import EMBEDDED_NAME
from nasframe.errors import CheckpointError, ConfigError, DataError, describe_validation_error
from nasframe.runtime import (
    atomic_save,
    atomic_write_text,
    inverse_sqrt,
    label_smoothed_loss,
    progress_bar,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)
from nasframe.supernet import ModelConfig, Supernet, build_model, count_parameters

__all__ = [
    "TRAIN_PRESETS",
    "DataSpec",
    "LoadedRun",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "average_checkpoints",
    "cache_dir",
    "load_data",
    "load_run",
    "train",
]

CONFIG, ARCH, VOCAB, METRICS = "config.json", "arch.json", "vocab.model", "metrics.jsonl"
LAST, BEST, AVERAGE = "checkpoint_last.pt", "checkpoint_best.pt", "checkpoint_avg.pt"


# ----------------------------------------------------------------------------- configuration

class TrainConfig(BaseModel):
    """How to re-train. Values the paper does not state are marked *(ours)*."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    preset: str | None = None
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(d_model=528, embed_dim=512,
                                                                   blocks=3))
    vocab_size: int = Field(8000, ge=5, description="joint sentencepiece vocabulary size")
    max_len: int = Field(250, ge=1, description="drop pairs with a side longer than this")
    max_tokens: int = Field(4096, ge=1, description="token budget of a batch")
    steps: int | None = Field(100_000, ge=1, description="updates; None: only the time limit")
    minutes: float | None = Field(None, gt=0, description="wall-clock limit of training")
    lr: float = Field(7e-4, gt=0, description="peak learning rate (ours, as the search)")
    warmup: int = Field(4000, ge=1, description="inverse-sqrt warmup updates")
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-9, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    clip_norm: float | None = Field(1.0, gt=0, description="max gradient norm (ours)")
    checkpoint_every: int = Field(1000, ge=1, description="updates between checkpoints")
    valid_every: int | None = Field(None, ge=1, description="updates between validations; "
                                    "None: at every checkpoint")
    keep_checkpoints: int = Field(5, ge=1, description="numbered checkpoints kept")
    average_last: int = Field(0, ge=0, description="average the last k numbered checkpoints")
    log_every: int = Field(50, ge=1)
    seed: int = 1
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise ConfigError(describe_validation_error(err, root="train", field_prefix="train.")
                              ) from None
        if self.steps is None and self.minutes is None:
            raise ConfigError("train: give steps or minutes (or both): training needs an end")

    @classmethod
    def preset_config(cls, name: str, **overrides: Any) -> TrainConfig:
        """``tiny`` (CPU, minutes), ``small`` (one GPU, hours), ``paper`` (base size)."""
        if name not in TRAIN_PRESETS:
            raise ConfigError(f"preset: unknown preset {name!r}; choose one of "
                              f"{', '.join(TRAIN_PRESETS)}")
        data = {**TRAIN_PRESETS[name], "preset": name}
        data["model"] = ModelConfig(**data["model"])
        return cls(**{**data, **{k: v for k, v in overrides.items() if v is not None}})


# d_model must split evenly into 2 and 3 splits of a width divisible by 8 heads: 48 | d.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {  # 2 CPU cores, minutes: a demonstration, not a useful translator
        "model": {"d_model": 144, "embed_dim": 128, "blocks": 1, "dropout": 0.1},
        "vocab_size": 4000, "max_tokens": 1536, "steps": 100_000, "lr": 2e-3, "warmup": 300,
        "checkpoint_every": 500, "log_every": 10,
    },
    "small": {  # one GPU, about an hour (paper.md Fig. 5 "small": d = 128..256)
        "model": {"d_model": 288, "embed_dim": 256, "blocks": 2, "dropout": 0.1},
        "vocab_size": 8000, "max_tokens": 4096, "steps": 30_000, "lr": 1e-3, "warmup": 2000,
        "checkpoint_every": 2000, "average_last": 5, "log_every": 50,
    },
    "paper": {  # base size (paper.md §5: E = 512, ~62.5M parameters); d rounded to 48 | d
        "model": {"d_model": 528, "embed_dim": 512, "blocks": 3, "dropout": 0.1},
        "vocab_size": 32000, "max_tokens": 4096, "steps": 100_000, "lr": 7e-4,
        "warmup": 4000, "checkpoint_every": 2000, "average_last": 5, "log_every": 100,
    },
}


def cache_dir() -> Path:
    """Where trained vocabularies are cached: ``$NASFRAME_CACHE`` or ``~/.cache/nasframe``."""
    root = os.environ.get("NASFRAME_CACHE") or Path.home() / ".cache" / "nasframe"
    return Path(root) / "vocab"


# ----------------------------------------------------------------------------- data

class DataSpec(BaseModel):
    """Where training data come from, as given on the command line (recorded for --resume).

    ``data``: ``lohelp``, a TSV file, a folder of split files or a ``{split}`` pattern;
    or ``src`` + ``tgt``: two aligned text files. ``valid``: one TSV or two aligned files;
    when absent, the corpus's own ``valid`` split, or else 2% of the training pairs (at most
    1,000) held out.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str | None = None
    src: str | None = None
    tgt: str | None = None
    valid: tuple[str, ...] | None = None

    def absolute(self) -> DataSpec:
        """Paths made absolute, so a recorded spec still works from another directory."""
        def fix(p: str | None) -> str | None:
            if p is None or p == EMBEDDED_NAME:
                return p
            return str(Path(p).expanduser().resolve()) if "{split}" not in p else \
                str(Path(p).expanduser().absolute())
        valid = tuple(fix(v) or v for v in self.valid) if self.valid else None
        return DataSpec(data=fix(self.data), src=fix(self.src), tgt=fix(self.tgt), valid=valid)

    def has_splits(self) -> bool:
        """Whether ``data`` names its splits (embedded corpus, folder or pattern)."""
        d = self.data or EMBEDDED_NAME
        return d == EMBEDDED_NAME or "{split}" in d or Path(d).is_dir()


def load_data(spec: DataSpec, seed: int = 0) -> tuple[ParallelCorpus, ParallelCorpus]:
    """(train, valid) corpora of a spec; errors are DataError naming the file at fault."""
    if (spec.src is None) != (spec.tgt is None):
        raise DataError("give both --src and --tgt (two aligned files), or --data")
    if spec.src is not None and spec.data is not None:
        raise DataError("give either --data or --src/--tgt, not both")
    if spec.src is not None:
        train_corpus = read_pair(spec.src, spec.tgt)  # type: ignore[arg-type]
    else:
        train_corpus = load_split(spec.data or EMBEDDED_NAME, "train")
    if spec.valid:
        if len(spec.valid) not in (1, 2):
            raise DataError(f"--valid takes one TSV or two aligned files, got {len(spec.valid)}")
        valid = read_tsv(spec.valid[0]) if len(spec.valid) == 1 else read_pair(*spec.valid)
        return train_corpus, valid
    if spec.src is None and spec.has_splits():
        return train_corpus, load_split(spec.data or EMBEDDED_NAME, "valid")
    held_out = min(1000, max(1, len(train_corpus) // 50))
    if len(train_corpus) < 2:
        raise DataError(f"corpus {train_corpus.name!r} has {len(train_corpus)} pair(s); "
                        "need at least 2 to hold some out for validation (or give --valid)")
    return split_search(train_corpus, (len(train_corpus) - held_out, held_out), seed)


# ----------------------------------------------------------------------------- pieces

def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({err})") from None


def average_checkpoints(paths: Sequence[Path]) -> dict[str, Tensor]:
    """The element-wise mean of the models in ``paths`` (a cheap ensemble of late weights)."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    total: dict[str, Tensor] = {}
    for path in paths:
        state = load_checkpoint(path)["model"]
        for key, value in state.items():
            if key in total:
                total[key] += value.double()
            else:
                total[key] = value.double().clone()
    first = load_checkpoint(paths[0])["model"]
    return {k: (v / len(paths)).to(first[k].dtype) if first[k].is_floating_point()
            else first[k] for k, v in total.items()}


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


class Trainer:
    """The training loop over one run directory; ``run()`` trains until steps or time end."""

    def __init__(self, run_dir: Path, config: TrainConfig, arch: Architecture, vocab_size: int,
                 train_pairs: list[Pair], valid_pairs: list[Pair],
                 console: Console | None = None, progress: bool = True) -> None:
        self.run_dir, self.config, self.arch = run_dir, config, arch
        self.pad_id = config.model.pad_id
        run_dir.mkdir(parents=True, exist_ok=True)
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
        self.batcher = TokenBatcher(train_pairs, config.max_tokens, shuffle=True,
                                    seed=config.seed)
        self.valid_pairs = valid_pairs
        self.step = 0
        self.elapsed = 0.0   # training seconds over all sessions of this run
        self.best_valid: float | None = None
        self._validated: tuple[int, dict[str, float]] | None = None  # (step, scores)

    # -- paths ------------------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    def numbered(self) -> list[Path]:
        """Numbered checkpoints, oldest first."""
        found = [(int(p.stem.split("_")[1]), p) for p in self.checkpoints.glob("checkpoint_*.pt")
                 if p.stem.split("_")[1].isdigit()]
        return [p for _, p in sorted(found)]

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "elapsed": self.elapsed, "best_valid": self.best_valid,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "batcher": self.batcher.state_dict(),
            "rng": rng_state(self.device),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.batcher.load_state_dict(state["batcher"])
        set_rng_state(state["rng"], self.device)
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self.best_valid = state["best_valid"]

    def save(self) -> None:
        """checkpoint_last.pt (everything) and a numbered, weights-only checkpoint."""
        atomic_save(self.state_dict(), self.checkpoints / LAST)
        atomic_save({"step": self.step, "model": self.model.state_dict()},
                    self.checkpoints / f"checkpoint_{self.step}.pt")
        keep = max(self.config.keep_checkpoints, self.config.average_last)
        for old in self.numbered()[:-keep]:
            old.unlink(missing_ok=True)

    # -- one update -------------------------------------------------------------------------
    def train_step(self, batch: Batch) -> dict[str, float]:
        self.model.train()
        batch = batch.to(self.device)
        logits = self.model(batch.src, batch.tgt_in)
        loss, nll, n = label_smoothed_loss(logits, batch.tgt_out, self.config.label_smoothing,
                                           self.pad_id)
        self.optimizer.zero_grad(set_to_none=True)
        per_token = max(int(n), 1)
        (loss / per_token).backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                              self.config.clip_norm or math.inf)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return {"loss": float(loss.detach()) / per_token, "nll": float(nll.detach()) / per_token,
                "tokens": float(n), "grad_norm": float(norm)}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Per-token label-smoothed loss and NLL on the validation pairs (dropout off)."""
        self.model.eval()
        loss_sum = nll_sum = 0.0
        count = 0
        batcher = TokenBatcher(self.valid_pairs, self.config.max_tokens, shuffle=False)
        for batch in batcher.iter_epoch():
            batch = batch.to(self.device)
            logits = self.model(batch.src, batch.tgt_in)
            loss, nll, n = label_smoothed_loss(logits, batch.tgt_out,
                                               self.config.label_smoothing, self.pad_id)
            loss_sum, nll_sum, count = loss_sum + float(loss), nll_sum + float(nll), count + int(n)
        return {"valid_loss": loss_sum / max(count, 1), "valid_nll": nll_sum / max(count, 1)}

    def _validate_and_keep_best(self) -> dict[str, float]:
        if self._validated is not None and self._validated[0] == self.step:
            return self._validated[1]
        scores = self.validate()
        self._validated = (self.step, scores)
        if self.best_valid is None or scores["valid_loss"] < self.best_valid:
            self.best_valid = scores["valid_loss"]
            atomic_save({"step": self.step, "model": self.model.state_dict(), **scores},
                        self.checkpoints / BEST)
        log_metrics(self.run_dir, {"event": "valid", "step": self.step, **scores,
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
                    log_metrics(self.run_dir, {
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
        """Final validation and checkpoints, then the averaged model if asked for."""
        scores = self._validate_and_keep_best()
        self.save()
        chosen = self.checkpoints / BEST
        if self.config.average_last > 0:
            paths = self.numbered()[-self.config.average_last:]
            atomic_save({"step": self.step, "model": average_checkpoints(paths),
                         "averaged": [p.name for p in paths]}, self.checkpoints / AVERAGE)
            chosen = self.checkpoints / AVERAGE
        result = TrainResult(self.run_dir, self.step, self.elapsed,
                             count_parameters(self.model), self.best_valid, chosen)
        log_metrics(self.run_dir, {"event": "end", "step": self.step, "elapsed": self.elapsed,
                                   "parameters": result.parameters, **scores,
                                   "best_valid_loss": self.best_valid,
                                   "checkpoint": chosen.name})
        return result


# ----------------------------------------------------------------------------- run directory

def log_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metrics written after the checkpoint a resumed run restarts from."""
    path = run_dir / METRICS
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


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
    """Train ``arch`` into run directory ``out``; ``resume=True`` continues the run there.

    ``overrides`` replace fields of ``config`` (default: the ``tiny`` preset). On resume the
    recorded architecture, config and data are used, and ``overrides`` may change only
    how long to train and where: ``steps``, ``minutes``, ``average_last``, ``device``.
    ``corpora`` passes already loaded (train, valid) corpora instead of ``data``.
    """
    run_dir = Path(out)
    console = console or Console(stderr=True)
    overrides = dict(overrides or {})
    if resume:
        arch, config, data = _resume_setup(run_dir, arch, data, overrides)
    else:
        _check_fresh(run_dir)
        if arch is None:
            raise ConfigError("train: an architecture is needed (--arch arch.json)")
        config = config or TrainConfig.preset_config("tiny")
        if overrides:
            config = TrainConfig(**{**config.model_dump(), **overrides})
        data = (data or DataSpec()).absolute()
    train_corpus, valid_corpus = corpora or load_data(data, config.seed)
    vocab = _run_vocab(run_dir, train_corpus, config, resume, vocab_cache)
    train_pairs, dropped_train = _encode(train_corpus, vocab, config.max_len, "train", console)
    valid_pairs, dropped_valid = _encode(valid_corpus, vocab, config.max_len, "valid", console)
    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        arch.save(run_dir / ARCH)
        (run_dir / METRICS).unlink(missing_ok=True)
    atomic_write_text(json.dumps({"train": config.model_dump(mode="json"),
                                  "data": data.model_dump(mode="json")}, indent=2) + "\n",
                      run_dir / CONFIG)
    trainer = Trainer(run_dir, config, arch, len(vocab), train_pairs, valid_pairs, console,
                      progress)
    if resume:
        state = load_checkpoint(run_dir / "checkpoints" / LAST)
        trainer.load_state_dict(state)
        _truncate_metrics(run_dir, trainer.step)
        console.print(f"resumed {run_dir} at step {trainer.step:,}")
    dropped = {"train": dropped_train, "valid": dropped_valid}
    log_metrics(run_dir, {"event": "data", "step": trainer.step, "train_pairs": len(train_pairs),
                          "valid_pairs": len(valid_pairs), "dropped_train": dropped_train,
                          "dropped_valid": dropped_valid, "max_len": config.max_len,
                          "vocab_size": len(vocab),
                          "parameters": count_parameters(trainer.model)})
    console.print(f"model: {count_parameters(trainer.model):,} parameters on {trainer.device}")
    result = trainer.run()
    result.dropped = dropped
    return result


def _check_fresh(run_dir: Path) -> None:
    if (run_dir / "checkpoints" / LAST).exists():
        raise CheckpointError(f"{run_dir} already holds a training run; pass --resume to "
                              "continue it or choose another --out")


RESUMABLE = ("steps", "minutes", "average_last", "device")


def _resume_setup(run_dir: Path, arch: Architecture | None, data: DataSpec | None,
                  overrides: dict[str, Any]) -> tuple[Architecture, TrainConfig, DataSpec]:
    if not (run_dir / "checkpoints" / LAST).exists():
        raise CheckpointError(f"{run_dir}: nothing to resume (no checkpoints/{LAST})")
    recorded = _read_run_config(run_dir)
    saved_arch = Architecture.load(run_dir / ARCH)
    if arch is not None and arch.choices != saved_arch.choices:
        raise CheckpointError(f"{run_dir} was trained with another architecture; "
                              "resume without --arch or choose another --out")
    refused = sorted(k for k, v in overrides.items()
                     if k not in RESUMABLE and recorded["train"].get(k) != v)
    if refused:
        raise ConfigError(f"--resume continues the recorded config; only {', '.join(RESUMABLE)} "
                          f"may change, not {', '.join(refused)}")
    config = TrainConfig(**{**recorded["train"], **overrides})
    saved_data = DataSpec(**recorded["data"])
    if data is not None and data != DataSpec() and data.absolute() != saved_data:
        raise CheckpointError(f"{run_dir} was trained on other data ({saved_data.model_dump()}); "
                              "resume without data options")
    return saved_arch, config, saved_data


def _read_run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a training run directory (no {CONFIG})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None


def _run_vocab(run_dir: Path, corpus: ParallelCorpus, config: TrainConfig, resume: bool,
               vocab_cache: str | Path | None) -> Vocab:
    """The run's vocabulary: its own copy on resume, else the cached one for this corpus."""
    if resume:
        return Vocab.load(run_dir / VOCAB)
    vocab = get_or_train_vocab(corpus, vocab_cache or cache_dir(), config.vocab_size)
    vocab.save(run_dir / VOCAB)
    return Vocab.load(run_dir / VOCAB)


# ----------------------------------------------------------------------------- loading a run

@dataclass
class LoadedRun:
    """A trained model ready to translate, with what it needs from its run directory."""

    model: Supernet
    vocab: Vocab
    config: TrainConfig
    data: DataSpec
    arch: Architecture
    checkpoint: Path


def load_run(run_dir: str | Path, checkpoint: str = "auto", device: str | None = None
             ) -> LoadedRun:
    """Load a run directory's model in eval mode.

    ``checkpoint``: ``auto`` (averaged if present, else best, else last), ``avg``, ``best``,
    ``last``, or a file name in ``checkpoints/``.
    """
    run_dir = Path(run_dir)
    recorded = _read_run_config(run_dir)
    config = TrainConfig(**recorded["train"])
    arch = Architecture.load(run_dir / ARCH)
    vocab = Vocab.load(run_dir / VOCAB)
    path = _choose_checkpoint(run_dir / "checkpoints", checkpoint)
    model = build_model(arch, config.model, len(vocab))
    model.load_state_dict(load_checkpoint(path)["model"])
    model.to(resolve_device(device or config.device)).eval()
    return LoadedRun(model, vocab, config, DataSpec(**recorded["data"]), arch, path)


def _choose_checkpoint(folder: Path, which: str) -> Path:
    named = {"avg": AVERAGE, "best": BEST, "last": LAST}
    if which == "auto":
        for name in (AVERAGE, BEST, LAST):
            if (folder / name).is_file():
                return folder / name
        raise CheckpointError(f"{folder}: no checkpoint yet (is training still starting?)")
    path = folder / named.get(which, which)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    return path


def iter_metrics(run_dir: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a run's metrics.jsonl, in order."""
    path = Path(run_dir) / METRICS
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield json.loads(line)
