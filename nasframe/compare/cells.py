"""One cell of a comparison: a row at one seed, searched (if it searches), sized to the
parameter target, re-trained and scored.

A cell's folder holds ``search/`` (the search run) and ``train/`` (the re-training run), and
a JSON file per finished stage (``search.json``, ``train.json``, ``result.json``), each
written atomically at the end of its stage. A re-run with ``resume`` skips finished stages,
continues an interrupted search or re-training from its last checkpoint, and starts over a
stage that had not reached one.
"""
from __future__ import annotations

import ctypes
import gc
import json
import math
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from nasframe.base.errors import ConfigError, NasframeError, RunDirError
from nasframe.base.files import atomic_write_text, read_json
from nasframe.base.runtime import resolve_device
from nasframe.compare._deps import (
    DataSpec,
    DecodeOptions,
    ParallelCorpus,
    SearchConfig,
    SearchData,
    TrainConfig,
    Vocab,
    apply_overrides,
    cache_dir,
    evaluate_run,
    get_or_train_vocab,
    has_checkpoint,
    load_data,
    match_size,
    parameter_breakdown,
    prepare_data,
    search,
    train,
)
from nasframe.compare.report import describe_architecture
from nasframe.compare.spec import CompareSettings, Row, row_space, slug
from nasframe.dsl.architecture import Architecture
from nasframe.engine.supernet import ModelConfig, build_model

__all__ = ["Shared", "PeakMemory", "run_cell", "cell_dir", "alpha_entropy_of", "load_inputs"]

#: How far from the target a --quick model may be when params_tolerance cannot be met.
QUICK_TOLERANCES = (0.25, math.inf)
#: Updates timed before a search with ``search_minutes`` fixes its length.
CALIBRATION_STEPS = 10


@dataclass
class Shared:
    """What every cell of one comparison uses."""

    settings: CompareSettings
    out: Path
    corpora: tuple[ParallelCorpus, ParallelCorpus]
    vocab: Vocab
    base_model: ModelConfig
    target: int
    reference: str | None          # the row whose size is the target (kept at base_model)
    console: Console
    progress: bool = True
    resume: bool = False

    def search_data(self, cfg: SearchConfig) -> SearchData:
        """Search-train / search-valid batches of the training split, with the shared
        vocabulary: the one data path of every search (``nasframe.searching.api.prepare_data``)."""
        return prepare_data(cfg, vocab=self.vocab, corpus=self.corpora[0])


def load_inputs(settings: CompareSettings) -> tuple[tuple[ParallelCorpus, ParallelCorpus], Vocab]:
    """The corpora (train, valid) and the joint vocabulary every cell of a comparison shares
    (the vocabulary is trained once, then read from the cache)."""
    corpora = load_data(DataSpec(data=settings.data))
    return corpora, get_or_train_vocab(corpora[0], cache_dir(), settings.vocab_size)


def cell_dir(out: Path, row: Row, seed: int) -> Path:
    """The folder of one row and seed of a comparison: ``OUT/<row slug>/seed<seed>``."""
    return out / slug(row.name) / f"seed{seed}"


# ----------------------------------------------------------------------------- memory

class PeakMemory:
    """Peak memory of a block above what was in use when it started.

    CUDA: ``torch.cuda.max_memory_allocated`` above the allocation at the start (tensors
    only). CPU on Linux with glibc: freed memory is returned to the system first
    (``malloc_trim``), then the process's peak resident set (``VmHWM``, reset through
    ``/proc/self/clear_refs``) above the resident set at the start, so it includes Python
    objects and allocator slack, not only tensors. Elsewhere the growth of the lifetime peak
    (a lower bound). ``kind`` says which was measured.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bytes: int | None = None
        self.kind = "none"

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.kind = "cuda_max_allocated_delta"
        elif _release_free_memory() and _reset_hwm():
            self._base = _status_kib("VmRSS") * 1024
            self.kind = "cpu_peak_rss_delta"
        else:  # the lifetime peak cannot be reset: a lower bound
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.kind = "cpu_maxrss_increase"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.kind.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.kind == "cpu_peak_rss_delta":
            peak = _status_kib("VmHWM") * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.bytes = max(0, peak - self._base)


def _release_free_memory() -> bool:
    """Hand memory freed by earlier cells back to the system (glibc ``malloc_trim``), so the
    resident set at the start is what is in use and a search that reuses freed pages still
    shows its peak. False where that is not possible (then no RSS figure is given)."""
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") > 0
    except OSError:
        return False


def _status_kib(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


# ----------------------------------------------------------------------------- stages

def alpha_entropy_of(arch: Architecture) -> tuple[float | None, float | None]:
    """(mean entropy of softmax(alpha) over nodes, mean log |O|): how far a search moved from
    uniform. (None, None) for strategies without alphas."""
    probs = arch.probabilities
    if not probs:
        return None, None
    ent = [-sum(p * math.log(p) for p in node.values() if p > 0) for node in probs.values()]
    uni = [math.log(len(node)) for node in probs.values()]
    return sum(ent) / len(ent), sum(uni) / len(uni)


def _read(path: Path) -> dict[str, Any] | None:
    """A stage's record, if the stage finished (bounded, never through a link)."""
    if not path.exists() and not path.is_symlink():
        return None
    record = read_json(path, what="cell record")
    if not isinstance(record, dict):
        raise RunDirError(f"{path}: not a cell record")
    return record


def _write(path: Path, record: dict[str, Any]) -> None:
    atomic_write_text(json.dumps(record, indent=2) + "\n", path)


def _fresh(folder: Path) -> None:
    """A stage starting over: what an interrupted attempt left goes."""
    if folder.exists():
        shutil.rmtree(folder)


def search_config(s: CompareSettings, row: Row, seed: int, vocab_size: int) -> SearchConfig:
    cfg = SearchConfig.preset_config(s.search_preset)
    base: dict[str, Any] = {"data.vocab_size": vocab_size, "seed": seed,
                            "strategy": row.strategy, "device": s.device}
    if s.search_steps is not None:
        base["steps"] = s.search_steps
    cfg = apply_overrides(cfg, base)
    try:
        return apply_overrides(cfg, row.search)
    except ConfigError as err:
        raise ConfigError(f"row {row.name!r}: search.{err}") from None


def _search(sh: Shared, row: Row, seed: int, folder: Path) -> dict[str, Any]:
    done = folder / "search.json"
    if (record := _read(done)) is not None:
        return record
    s = sh.settings
    cfg = search_config(s, row, seed, len(sh.vocab))
    space = row_space(row)
    data = sh.search_data(cfg)
    run, plan_file = folder / "search", folder / "search_plan.json"
    resuming = sh.resume and has_checkpoint(run, "search")
    if not resuming:
        _fresh(run)
    plan = _read(plan_file) if resuming else None
    limit = plan["steps"] if plan else cfg.steps
    device = resolve_device(cfg.device)
    started = time.perf_counter()
    with PeakMemory(device) as peak:
        if not resuming and s.search_minutes is not None:
            # A step budget fitted to a time budget: time a few updates, then continue
            # (exactly, from the checkpoint) for as many as the time allows.
            first = min(CALIBRATION_STEPS, limit)
            search(space, row.strategy, data, cfg, out=run, steps=first, progress=sh.progress)
            per_step = (time.perf_counter() - started) / first
            limit = max(first, min(limit, int(s.search_minutes * 60 / per_step)))
            resuming = True
        _write(plan_file, {"steps": limit})
        result = search(space, row.strategy, data, cfg, out=run, steps=limit, resume=resuming,
                        progress=sh.progress)
    seconds = time.perf_counter() - started
    arch = result.architecture
    arch.save(folder / "arch_derived.json")
    entropy, uniform = alpha_entropy_of(arch)
    record = {"search_updates": result.steps, "search_seconds": round(seconds, 2),
              "search_peak_bytes": peak.bytes, "search_peak_kind": peak.kind,
              "search_resumed": sh.resume and plan is not None,
              "alpha_entropy": entropy, "alpha_entropy_uniform": uniform,
              "architecture_json": json.loads(arch.to_json())}
    _write(done, record)
    return record


def _fixed_architecture(row: Row) -> Architecture:
    space = row_space(row)
    if space is None:
        return Architecture.load(row.architecture)  # type: ignore[arg-type]
    return Architecture(space=space, choices={})


def size_model(sh: Shared, row: Row, arch: Architecture) -> tuple[ModelConfig, dict[str, int]]:
    """The re-trained model's sizes: the base model for the reference row, else blocks/d
    matched to the target; and its parameter breakdown."""
    if row.name == sh.reference:
        cfg = sh.base_model
    else:
        # Miniature models are too coarse for 5% (one step of d or blocks is more): a
        # --quick run widens the tolerance, then takes the nearest size; the record's
        # params_off says how far off it is.
        first = sh.settings.params_tolerance
        tolerances = (first, *[t for t in QUICK_TOLERANCES if t > first]) \
            if sh.settings.quick else (first,)
        for i, tolerance in enumerate(tolerances):
            try:
                cfg = match_size(arch, sh.target, sh.base_model, len(sh.vocab),
                                 tolerance=tolerance)
                break
            except NasframeError as err:
                if i == len(tolerances) - 1:
                    raise type(err)(f"row {row.name!r}: cannot size to {sh.target:,} "
                                    f"parameters: {err}") from None
    return cfg, parameter_breakdown(build_model(arch, cfg, len(sh.vocab)))


def _train(sh: Shared, row: Row, seed: int, folder: Path, arch: Architecture,
           model: ModelConfig) -> dict[str, Any]:
    done = folder / "train.json"
    if (record := _read(done)) is not None:
        return record
    s, run = sh.settings, folder / "train"
    resuming = sh.resume and has_checkpoint(run, "train")
    if resuming:
        result = train(None, run, resume=True, progress=sh.progress, console=sh.console,
                       corpora=sh.corpora)
    else:
        _fresh(run)
        config = TrainConfig.preset_config(s.train_preset, seed=seed, vocab_size=s.vocab_size,
                                           device=s.device)
        try:
            config = TrainConfig(**{**config.model_dump(), "model": model,
                                    "steps": s.train_steps, "minutes": s.train_minutes,
                                    **row.train})
        except ConfigError as err:
            raise ConfigError(f"row {row.name!r}: {err}") from None
        result = train(arch, run, config, DataSpec(data=s.data), progress=sh.progress,
                       console=sh.console, corpora=sh.corpora)
    record = {"train_updates": result.steps, "train_seconds": round(result.train_seconds, 2),
              "valid_loss": result.best_valid_loss, "train_resumed": resuming}
    _write(done, record)
    return record


def _evaluate(sh: Shared, folder: Path) -> dict[str, Any]:
    s = sh.settings
    scores = evaluate_run(folder / "train", "test", DataSpec(data=s.data),
                          DecodeOptions(beam=s.beam), s.test_sentences, progress=sh.progress,
                          console=sh.console)
    return {"bleu": scores["bleu"], "chrf": scores["chrf"], "test_sentences": scores["sentences"],
            "test_of": scores["of"], "translate_seconds": scores["translate_seconds"]}


def run_cell(sh: Shared, row: Row, seed: int, on_phase: Any = None) -> dict[str, Any]:
    """Run (or, resuming, finish) one cell and return its record (also ``result.json``)."""
    folder = cell_dir(sh.out, row, seed)
    if (record := _read(folder / "result.json")) is not None:
        return record
    folder.mkdir(parents=True, exist_ok=True)
    phase = on_phase or (lambda name: None)
    started = time.perf_counter()
    searched: dict[str, Any] = {"search_updates": 0, "search_seconds": 0.0,
                                "search_peak_bytes": None, "search_peak_kind": None,
                                "alpha_entropy": None, "alpha_entropy_uniform": None}
    if row.searched:
        phase("search")
        searched = _search(sh, row, seed, folder)
        arch = Architecture.model_validate(searched.pop("architecture_json"))
    else:
        arch = _fixed_architecture(row)
    model, params = size_model(sh, row, arch)
    phase("train")
    trained = _train(sh, row, seed, folder, arch, model)
    phase("evaluate")
    scores = _evaluate(sh, folder)
    record = {
        "name": row.name, "strategy": row.strategy or "fixed", "seed": seed,
        "params": params["total"], "params_embedding": params["embedding"],
        "params_non_embedding": params["non_embedding"], "params_target": sh.target,
        "params_off": round(params["total"] / sh.target - 1, 4),
        "d_model": model.d_model, "embed_dim": model.embed_dim, "blocks": model.blocks,
        **searched, **trained, **scores,
        "architecture": describe_architecture(arch), "space": arch.space.name,
        "choices": dict(arch.choices),
        "cell_seconds": round(time.perf_counter() - started, 2),
        "run_dir": str(folder),
    }
    _write(folder / "result.json", record)
    return record
