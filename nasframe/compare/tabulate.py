"""Tabulating a space (``nasframe tabulate``): every architecture trained stand-alone, its
held-out loss recorded, the ground truth that ``GroundTruth`` looks up.

Every architecture gets the same config (the ``tiny`` re-training preset at the search's
width, ``d_model=48``), the same number of updates and, at a seed, the same data order (the
seed sets both the initial weights and the order of the batches). After its last update
the loss is plain cross-entropy per target token on the corpus's valid split, dropout off.

The folder ``OUT`` holds::

    OUT/tabulate.json   the settings (a --resume must match them)
    OUT/table.jsonl     one line per architecture and seed, appended as each finishes
    OUT/runs/           each training run while it trains, deleted once its line is written
    OUT/run.lock        held while the tabulation writes (one writer at a time)

Seeds are tabulated in the order given, each over the whole space, so a run cut short has
the first seed complete first. A killed tabulation resumes with ``resume=True``: recorded
architectures and seeds are skipped, and a torn last line (a kill mid-write) is dropped.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import multiprocessing
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from nasframe.base.errors import ConfigError, DataError, RunDirError
from nasframe.base.files import (
    MAX_JSON_BYTES,
    MAX_LINE_BYTES,
    append_line,
    atomic_write_text,
    is_link,
    lines_of,
    read_json,
    read_text,
)
from nasframe.compare._deps import (
    DataSpec,
    DecodeOptions,
    ParallelCorpus,
    RunLock,
    TrainConfig,
    apply_overrides,
    cache_dir,
    evaluate_run,
    get_or_train_vocab,
    load_data,
    train,
)
from nasframe.compare.groundtruth import MAX_TABLE_BYTES, arch_digest, parse_record
from nasframe.compare.report import describe_architecture
from nasframe.dsl.architecture import Architecture
from nasframe.dsl.space import SearchSpace

__all__ = ["DEFAULT_MAX_ARCHS", "SETTINGS_FILE", "TABLE_FILE", "TabulateResult",
           "architectures", "tabulate", "tabulate_config"]

TABLE_FILE = "table.jsonl"
"""The table's name inside a tabulation folder."""
SETTINGS_FILE = "tabulate.json"
"""The settings' name inside a tabulation folder."""
DEFAULT_MAX_ARCHS = 1000
"""Spaces larger than this are refused unless the limit is raised (``--max-archs``)."""
_OURS = {TABLE_FILE, SETTINGS_FILE, "runs", "run.lock"}


@dataclass
class TabulateResult:
    """What a ``tabulate`` call did."""

    table: Path        #: the table file
    trained: int       #: records written by this call
    skipped: int       #: records already there (resumed)
    seconds: float     #: wall time of this call


def architectures(space: SearchSpace) -> Iterator[Architecture]:
    """Every architecture of ``space``: the product of its choice nodes, the first node's
    candidates varying slowest, in declaration order."""
    nodes = space.choice_nodes()
    for ops in itertools.product(*nodes.values()):
        yield Architecture(space=space, choices=dict(zip(nodes, ops)))


def tabulate_config(steps: int, d_model: int = 48, embed_dim: int | None = 32,
                    preset: str = "tiny", overrides: dict[str, Any] | None = None
                    ) -> TrainConfig:
    """The training config of every architecture: the ``preset`` re-training config at the
    search's width (``tiny`` search: d=48, E=32), ``steps`` updates, validated and
    checkpointed once, at the end."""
    config = TrainConfig.preset_config(preset)
    fixed = {"model.d_model": d_model, "model.embed_dim": embed_dim, "steps": steps,
             "minutes": None, "checkpoint_every": steps, "valid_every": None,
             "keep_checkpoints": 1, "average_last": 0, "log_every": max(1, min(50, steps))}
    return apply_overrides(config, {**fixed, **(overrides or {})})


def tabulate(space: SearchSpace, out: str | Path, steps: int, seeds: Sequence[int] = (1,), *,
             config: TrainConfig | None = None, data: DataSpec | None = None,
             resume: bool = False, max_archs: int = DEFAULT_MAX_ARCHS, jobs: int = 1,
             threads: int | None = None, bleu_sentences: int = 0, beam: int = 5,
             space_source: dict[str, Any] | None = None, console: Console | None = None,
             on_record: Callable[[int, int, dict[str, Any]], None] | None = None
             ) -> TabulateResult:
    """Train every architecture of ``space`` at each of ``seeds`` for ``steps`` updates and
    append its record to ``out/table.jsonl``.

    ``config`` defaults to ``tabulate_config(steps)``; ``data`` to the embedded corpus (its
    valid split is the held-out set). ``jobs > 1`` trains that many at once in worker
    processes (``threads`` torch threads each, default this process's shared out).
    ``bleu_sentences > 0`` also scores BLEU on the first that many valid sentences.
    ``space_source`` (how the space was named, e.g. ``{"name": "tiny", "options": {...}}``)
    is recorded. ``on_record(done, total, record)`` is called after each line is written.
    """
    started = time.perf_counter()
    console = console or Console(stderr=True)
    out = Path(out)
    seeds = list(dict.fromkeys(seeds))
    if not seeds:
        raise ConfigError("tabulate: give at least one seed")
    if steps < 1:
        raise ConfigError(f"tabulate: steps {steps}: must be at least 1")
    if jobs < 1:
        raise ConfigError(f"tabulate --jobs {jobs}: must be at least 1")
    if bleu_sentences < 0:
        raise ConfigError(f"tabulate: bleu_sentences {bleu_sentences}: must be 0 or more")
    size = space.size()
    if not space.choice_nodes():
        raise ConfigError(f"space {space.name!r} has no choice nodes: nothing to tabulate")
    if size > max_archs:
        raise ConfigError(f"space {space.name!r} has {size:,} architectures, above the limit "
                          f"of {max_archs:,}; raise it with --max-archs {size} if you mean it")
    config = config or tabulate_config(steps)
    config = apply_overrides(config, {"steps": steps, "checkpoint_every": steps})
    data = (data or DataSpec()).absolute()
    settings = {"space": json.loads(space.to_json()), "space_source": space_source or
                {"name": space.name}, "steps": steps,
                "config": config.model_dump(mode="json", exclude={"seed"}),
                "data": data.model_dump(mode="json"), "bleu_sentences": bleu_sentences,
                "beam": beam}
    _check_folder(out, resume)
    lock = RunLock.acquire(out, purpose="tabulate into")
    try:
        _check_folder(out, resume)
        table, runs = out / TABLE_FILE, out / "runs"
        if resume:
            _check_settings(out / SETTINGS_FILE, settings)
        else:
            atomic_write_text(json.dumps(settings, indent=2) + "\n", out / SETTINGS_FILE)
        if is_link(runs):
            raise RunDirError(f"{runs}: is a symbolic link; refusing to train under it")
        done = _recorded(table, space, console) if resume else set()
        todo = [(arch, seed) for seed in seeds for arch in architectures(space)
                if (arch_digest(arch), seed) not in done]
        total, skipped = len(todo) + len(done & _keys(space, seeds)), len(done)
        corpora = load_data(data)
        get_or_train_vocab(corpora[0], cache_dir(), config.vocab_size)  # once, then cached
        count = total - len(todo)
        written = 0

        def keep(record: dict[str, Any]) -> None:
            nonlocal count, written
            append_line(table, json.dumps(record))
            count, written = count + 1, written + 1
            if on_record is not None:
                on_record(count, total, record)

        job = {"config": config.model_dump(mode="json"), "data": data.model_dump(mode="json"),
               "runs": str(runs), "bleu_sentences": bleu_sentences, "beam": beam}
        if not table.exists() and not is_link(table):
            atomic_write_text("", table)
        if jobs == 1 or len(todo) <= 1:
            quiet = Console(file=io.StringIO())
            for arch, seed in todo:
                keep(train_one(arch, seed, job, corpora, quiet))
        else:
            for record in _parallel(todo, job, jobs, threads):
                keep(record)
        with contextlib.suppress(OSError):  # every run was deleted: no empty folder left
            runs.rmdir()
        return TabulateResult(table, written, skipped, time.perf_counter() - started)
    finally:
        lock.release()


def _keys(space: SearchSpace, seeds: Sequence[int]) -> set[tuple[str, int]]:
    return {(arch_digest(a), s) for s in seeds for a in architectures(space)}


# ----------------------------------------------------------------------------- the folder

def _check_folder(out: Path, resume: bool) -> None:
    if is_link(out):
        raise RunDirError(f"{out}: is a symbolic link; choose a real folder for --out")
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: exists and is not a folder; choose a new --out")
    entries = {p.name for p in out.iterdir()} if out.is_dir() else set()
    if resume:
        if SETTINGS_FILE not in entries:
            raise RunDirError(f"{out}: no tabulation to resume ({SETTINGS_FILE} is missing); "
                              "start one without --resume")
        return
    if TABLE_FILE in entries or SETTINGS_FILE in entries:
        raise RunDirError(f"{out}: already holds a tabulation; continue it with --resume or "
                          "choose another --out")
    if entries - {"run.lock"}:
        raise RunDirError(f"{out}: not empty and not a tabulation; choose a new or empty "
                          "folder (nothing there was changed)")


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    recorded = read_json(path, MAX_JSON_BYTES, "tabulation settings", RunDirError)
    if not isinstance(recorded, dict):
        raise RunDirError(f"{path}: not a tabulation's settings")
    differ = [key for key in settings if key != "space_source"
              and recorded.get(key) != settings[key]]
    if differ:
        raise RunDirError(f"{path.parent}: --resume with other settings ({', '.join(differ)} "
                          "differ from the recorded ones); resume with the same space, steps "
                          "and config, or choose another --out")


def _recorded(table: Path, space: SearchSpace, console: Console) -> set[tuple[str, int]]:
    """(digest, seed) of every record of the table; a torn last line is dropped (rewritten
    atomically without it), any other malformed line is a DataError naming it."""
    if not table.exists() and not is_link(table):
        return set()
    text = read_text(table, MAX_TABLE_BYTES, "ground-truth table", DataError)
    lines = lines_of(text, table, MAX_LINE_BYTES, DataError)
    if text and not text.endswith("\n"):
        try:
            parse_record(lines[-1], f"{table}:{len(lines)}")
        except DataError:
            kept = text[:len(text) - len(lines[-1])]
            atomic_write_text(kept, table)
            console.print(f"note: {table}:{len(lines)}: dropped a torn last line (a kill "
                          "while it was written)")
            lines = lines[:-1]
    nodes = set(space.choice_nodes())
    done = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = parse_record(line, f"{table}:{number}")
        if set(record["choices"]) != nodes:
            raise DataError(f"{table}:{number}: an architecture of another space (its choice "
                            "nodes are not this space's)")
        key = (record["digest"], record["seed"])
        if key in done:
            raise DataError(f"{table}:{number}: architecture {key[0][:12]} at seed {key[1]} "
                            "is recorded twice")
        done.add(key)
    return done


# ----------------------------------------------------------------------------- one training

def train_one(arch: Architecture, seed: int, job: dict[str, Any],
              corpora: tuple[ParallelCorpus, ParallelCorpus], console: Console
              ) -> dict[str, Any]:
    """Train ``arch`` at ``seed`` into a temporary run under ``job["runs"]``, score it, delete
    the run, and return its table record."""
    from nasframe.run.rundir import read_metrics

    digest = arch_digest(arch)
    run = Path(job["runs"]) / f"{digest[:16]}-seed{seed}"
    if is_link(run):
        raise RunDirError(f"{run}: is a symbolic link; refusing to train into it")
    if run.exists():  # an attempt a kill interrupted: start it over
        shutil.rmtree(run)
    config = TrainConfig(**{**job["config"], "seed": seed})
    data = DataSpec(**job["data"])
    started = time.perf_counter()
    result = train(arch, run, config, data, progress=False, console=console, corpora=corpora)
    ends = [r for r in read_metrics(run / "metrics.jsonl") if r.get("event") == "end"]
    if not ends or "valid_nll" not in ends[-1]:
        raise RunDirError(f"{run}: the training run recorded no final validation")
    bleu = None
    if job["bleu_sentences"]:
        scores = evaluate_run(run, "valid", None, DecodeOptions(beam=job["beam"]),
                              job["bleu_sentences"], progress=False, console=console)
        bleu = scores["bleu"]
    record = {"digest": digest, "space": arch.space.name, "choices": dict(arch.choices),
              "seed": seed, "params": result.parameters,
              "valid_loss": round(float(ends[-1]["valid_nll"]), 6), "bleu": bleu,
              "updates": result.steps, "seconds": round(result.train_seconds, 3),
              "wall_seconds": round(time.perf_counter() - started, 3),
              "threads": torch.get_num_threads(), "architecture": describe_architecture(arch)}
    shutil.rmtree(run)
    return record


# ----------------------------------------------------------------------------- --jobs N

_WORKER: dict[str, Any] = {}


def _parallel(todo: list[tuple[Architecture, int]], job: dict[str, Any], jobs: int,
              threads: int | None) -> Iterator[dict[str, Any]]:
    """Train ``todo`` ``jobs`` at a time in spawned worker processes (each loads the corpus
    once and trains many); yield each record as it finishes. A failure stops the tabulation
    after the running ones finish (their records are kept)."""
    from nasframe.dsl.plugins import imported

    per = threads if threads is not None else max(1, torch.get_num_threads() // jobs)
    context = multiprocessing.get_context("spawn")
    init = (per, imported(), job["data"])
    pending = list(todo)
    running: dict[Future[dict[str, Any]], int] = {}
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                             initargs=init) as pool:
        try:
            while pending or running:
                while pending and len(running) < jobs:
                    arch, seed = pending.pop(0)
                    running[pool.submit(_work, arch.to_json(indent=None), seed, job)] = 0
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    running.pop(future)
                    yield future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _init_worker(threads: int, imports: list[dict[str, Any]], data: dict[str, Any]) -> None:
    from nasframe.dsl.plugins import import_user_code

    torch.set_num_threads(threads)
    for record in imports:  # the parent's --import, read again: the same bytes only
        import_user_code(record.get("file") or record["module"], record.get("sha256"))
    _WORKER["corpora"] = load_data(DataSpec(**data))


def _work(arch_json: str, seed: int, job: dict[str, Any]) -> dict[str, Any]:
    arch = Architecture.from_json(arch_json)
    return train_one(arch, seed, job, _WORKER["corpora"], Console(file=io.StringIO()))
