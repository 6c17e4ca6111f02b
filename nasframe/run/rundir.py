"""The run directory: the one layer the search executor and the trainer keep their runs in.

A run directory is the user's data. It is created only in a new or empty folder, it records
its kind (``search`` or ``train``) and is written only by a run of that kind (``--resume``).
Everything in it is written atomically, checkpoints are loaded with ``weights_only=True``
only, and nothing non-finite is ever written as a checkpoint. A run directory may come from
someone else, so it is read as data: a symbolic link anywhere in it is refused (naming the
link), every file is read as a bounded regular file, a checkpoint whose compressed content
would inflate out of proportion is refused before loading, and the code it recorded is never
imported (``nasframe.dsl.plugins.check_recorded``)::

    run.json                  kind, nasframe version, processes and threads of each session
    config.json               the config the run was started with (resume starts from it)
    metrics.jsonl             one JSON object per line: {"event", "step", "time", ...}
    checkpoints/checkpoint_N.pt   numbered, the full state to resume from (newest = last)
    checkpoints/checkpoint_best.pt, checkpoint_avg.pt   (training: best valid, averaged)
    arch.json, vocab.model ...    what the kind adds (derived or trained architecture, ...)

Numbered checkpoints are listed, pruned and averaged by the same helpers for both loops.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import stat
import time
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nasframe.base.errors import CheckpointError, NonFiniteError, RunDirError
from nasframe.base.files import (
    GiB,
    append_line,
    atomic_write_text,
    clean_temporaries,
    lines_of,
    read_json,
    read_text,
    refuse_links,
)
from nasframe.base.runtime import atomic_save
from nasframe.dsl.plugins import check_recorded, save_imports
from nasframe.run.lock import LOCK_FILE, RunLock

__all__ = ["CHECKPOINT_FORMAT", "RunDir", "RunKind", "average_states", "check_finite",
           "check_recorded_code", "divergence", "load_checkpoint", "read_metrics"]

CHECKPOINT_FORMAT = 2
"""Version of the checkpoint layout this code writes and reads."""
RUN_FILE, CONFIG_FILE, METRICS_FILE, CHECKPOINTS = ("run.json", "config.json", "metrics.jsonl",
                                                    "checkpoints")
_NUMBERED = re.compile(r"^checkpoint_(\d+)\.pt$")
#: What a run killed before its first checkpoint may hold; anything else is someone else's.
_EARLY_FILES = {RUN_FILE, CONFIG_FILE, METRICS_FILE, "space.json", "vocab.model", "arch.json",
                LOCK_FILE}
_EARLY_FOLDERS = {CHECKPOINTS, "imports"}
#: A metrics.jsonl of ours stays far below this (a line per logged update).
MAX_METRICS_BYTES = 1 * GiB
#: The bytes a checkpoint's zip entries may inflate to, beyond its own size (torch.save
#: stores entries uncompressed, so a checkpoint of ours inflates by about 1x).
_INFLATE_RATIO, _INFLATE_SLACK = 1.5, 1 << 20


class RunKind(StrEnum):
    """What a run directory holds: a search (``search``) or a re-training (``train``)."""

    SEARCH = "search"
    TRAIN = "train"


#: What to do with a run directory of the other kind, for the error message.
_HINT = {
    RunKind.SEARCH: "a search run: derive or show its arch.json, or re-train it with "
                    "`nasframe train --arch {path}/arch.json --out NEW`",
    RunKind.TRAIN: "a training run: translate or evaluate it with --model {path}",
}


# ----------------------------------------------------------------------------- checkpoints

def load_checkpoint(path: str | Path, kind: RunKind | None = None) -> dict[str, Any]:
    """A nasframe checkpoint, loaded with ``weights_only=True``: tensors and plain data only.

    Anything else (a pickled object that could run code when loaded) is refused, never
    executed. ``kind`` checks which loop wrote it.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read it as a checkpoint ("
                              f"{'a symbolic link' if path.is_symlink() else err.strerror})"
                              ) from None
    with os.fdopen(fd, "rb") as f:
        _check_archive(f, path)
        return _load_checked(f, path, kind)


def _check_archive(f: Any, path: Path) -> None:
    """Refuse a checkpoint that is not a regular file, or whose zip entries would inflate out
    of proportion to its size (a decompression bomb), before torch reads a byte of it."""
    size = os.fstat(f.fileno())
    if not stat.S_ISREG(size.st_mode):
        raise CheckpointError(f"{path}: not a regular file; refused as a checkpoint")
    try:
        with zipfile.ZipFile(f) as archive:
            inflated = sum(i.file_size for i in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        inflated = 0  # not a zip: torch.load says what it is
    limit = size.st_size * _INFLATE_RATIO + _INFLATE_SLACK
    if inflated > limit:
        raise CheckpointError(f"{path}: its entries inflate to {inflated:,} bytes from "
                              f"{size.st_size:,}; a nasframe checkpoint is stored "
                              "uncompressed, so it is refused before loading")
    f.seek(0)


def _load_checked(f: Any, path: Path, kind: RunKind | None) -> dict[str, Any]:
    try:
        ckpt = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found is None:  # not a pickle of anything we know: damaged or another format
            raise CheckpointError(f"{path}: not a readable checkpoint (damaged, or not written "
                                  "by torch.save)") from None
        raise CheckpointError(
            f"{path}: refused: it holds objects other than tensors and plain data "
            f"({found.group(1)}), which could run code when loaded; nasframe loads checkpoints "
            "with weights_only=True only") from None
    except Exception as err:  # torch raises RuntimeError, EOFError, zipfile errors, ...
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: "
                              f"{str(err)[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a nasframe checkpoint (format "
                              f"{CHECKPOINT_FORMAT})")
    if kind is not None and ckpt.get("kind") != kind:
        raise CheckpointError(f"{path}: a {ckpt.get('kind')} checkpoint, not a {kind} one")
    return ckpt


def check_finite(tensors: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]], what: str
                 ) -> None:
    """Raise NonFiniteError naming the first floating tensor that holds a NaN or an inf."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    for name, t in items:
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise NonFiniteError(f"{what}: {name} is not finite")


def average_states(states: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """The element-wise mean of model state dicts (float64 sums, each tensor's dtype kept;
    integer buffers are taken from the first)."""
    if not states:
        raise CheckpointError("no checkpoints to average")
    first = states[0]
    out: dict[str, Tensor] = {}
    for key, value in first.items():
        if not value.is_floating_point():
            out[key] = value.clone()
            continue
        total = sum((s[key].double() for s in states[1:]), value.double())
        out[key] = (total / len(states)).to(value.dtype)
    return out


# ----------------------------------------------------------------------------- metrics

def divergence(run: RunDir | None, step: int, what: str) -> NonFiniteError:
    """The error that stops a diverged run: what went wrong, where to restart from, what to
    change."""
    last = run.latest() if run is not None else None
    where = f"the last good checkpoint is {last}" if last is not None else \
        "no checkpoint was written yet"
    return NonFiniteError(
        f"update {step}: {what} is not finite, so the run stopped and wrote nothing of it; "
        f"{where}. Lower the learning rate, or let up to N such batches be skipped with "
        "--skip-nonfinite N (also with --resume)")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a partial last line (a kill mid-write) is ignored, a
    damaged line elsewhere (or a ``step`` that is not a whole number) is an error naming the
    line."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return []
    text = read_text(path, MAX_METRICS_BYTES, "metrics file")
    lines = lines_of(text, path)
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if number == len(lines):  # the unterminated last line of a killed writer
                break
            raise RunDirError(f"{path}:{number}: not a JSON line") from None
        if not isinstance(record, dict):
            raise RunDirError(f"{path}:{number}: not a JSON object")
        step = record.get("step", 0)
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise RunDirError(f"{path}:{number}: step {step!r} is not an update number")
        records.append(record)
    return records


# ----------------------------------------------------------------------------- the directory

@dataclass
class RunDir:
    """A run directory of one kind; ``create`` a new one or ``open`` an existing one.

    ``create`` and ``resume`` take the run's lock (one writer at a time, ``run.lock``), which
    ``close`` frees; ``open`` (readers) takes none."""

    path: Path
    kind: RunKind
    lock: RunLock | None = field(default=None, repr=False, compare=False)

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def check_new(cls, path: str | Path, kind: RunKind) -> None:
        """Raise unless a new ``kind`` run may be created in ``path``: a new or empty folder,
        or a ``kind`` run killed before its first checkpoint (nothing of it is worth keeping)."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunDirError(f"{path}: exists and is not a folder; choose a new --out")
        if path.is_dir() and any(p.name != LOCK_FILE for p in path.iterdir()):
            recorded = _recorded_kind(path)
            if recorded is None:
                raise RunDirError(f"{path}: not empty and not a nasframe run; choose a new or "
                                  "empty folder (nothing there was changed)")
            if recorded != kind:
                raise RunDirError(f"{path}: holds " + _HINT[recorded].format(path=path)
                                  + f"; a {kind} run would overwrite it. Choose another --out")
            if cls(path, kind).latest() is not None:
                raise RunDirError(f"{path}: already holds a {kind} run; continue it with "
                                  "--resume or choose another --out")
            _check_early_run(path, kind)  # a run of ours killed early: start it over

    @classmethod
    def create(cls, path: str | Path, kind: RunKind, info: Mapping[str, Any] | None = None,
               lock: bool = True) -> RunDir:
        """A new run in ``path``, which must be new or an empty folder; ``lock``: take the
        run's lock first (every writer but the other ranks of a distributed run)."""
        path = Path(path)
        cls.check_new(path, kind)
        held = RunLock.acquire(path, f"start a {kind} run in") if lock else None
        try:
            cls.check_new(path, kind)  # again, holding the lock: a writer may have just begun
        except BaseException:
            if held is not None:
                held.release()
            raise
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path, kind, held)
        clean_temporaries(path)
        for folder in _EARLY_FOLDERS:  # what an earlier start left: checked, ours, start over
            if (path / folder).is_dir():
                shutil.rmtree(path / folder)
        atomic_write_text("", run.metrics_path)
        run.write_json(RUN_FILE, {"kind": str(kind), "created": time.time(),
                                  "imports": save_imports(path), **(info or {})})
        return run

    @classmethod
    def open(cls, path: str | Path, kind: RunKind, purpose: str = "read") -> RunDir:
        """The existing run of ``kind`` in ``path``; ``purpose`` words the errors."""
        path = Path(path)
        if not path.is_dir():
            raise RunDirError(f"{path}: no such run directory (to {purpose})")
        refuse_links(path)
        if not (path / RUN_FILE).is_file():
            raise RunDirError(f"{path}: not a nasframe run directory (no {RUN_FILE})")
        info = read_json(path / RUN_FILE, what="run record")
        recorded = _kind_of(info)
        if recorded is None:
            raise RunDirError(f"{path}: not a nasframe run directory (no {RUN_FILE} with a "
                              "kind)")
        if recorded != kind:
            raise RunDirError(f"{path}: is " + _HINT[recorded].format(path=path)
                              + f"; to {purpose} it must be a {kind} run")
        check_recorded(info.get("imports", []), path)  # the user's ops and spaces
        return cls(path, kind)

    @classmethod
    def resume(cls, path: str | Path, kind: RunKind, lock: bool = True) -> RunDir:
        """``open`` for writing: takes the run's lock (``lock``) and removes the temporaries
        a killed run left."""
        run = cls.open(path, kind, "resume")
        if run.latest() is None:
            raise RunDirError(f"{run.path}: nothing to resume (no checkpoint yet); start it "
                              "again without --resume in a new folder")
        if lock:
            run.lock = RunLock.acquire(run.path, "resume")
        for folder in (run.path, run.checkpoints):
            if folder.is_dir():
                clean_temporaries(folder)
        return run

    def close(self) -> None:
        """Free the run's lock (if this object holds it); the run stays as it is."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # -- files ------------------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    def file(self, name: str) -> Path:
        return self.path / name

    def info(self) -> dict[str, Any]:
        return self.read_json(RUN_FILE)

    def update_info(self, **fields: Any) -> None:
        self.write_json(RUN_FILE, {**self.info(), **fields})

    def read_json(self, name: str) -> Any:
        path = self.path / name
        if not path.exists() and not path.is_symlink():
            raise RunDirError(f"{path}: missing from the run directory")
        return read_json(path)

    def write_json(self, name: str, data: Any) -> None:
        atomic_write_text(json.dumps(data, indent=2) + "\n", self.path / name)

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(text, self.path / name)

    # -- checkpoints ------------------------------------------------------------------------
    def numbered(self) -> list[tuple[int, Path]]:
        """(update, path) of the numbered checkpoints, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoints.iterdir()
                 if (m := _NUMBERED.match(p.name))]
        return sorted(found)

    def latest(self) -> Path | None:
        found = self.numbered()
        return found[-1][1] if found else None

    def save_checkpoint(self, step: int, state: dict[str, Any], keep: int | None = None,
                        name: str | None = None) -> Path:
        """Write ``state`` (its ``model`` checked finite) as ``checkpoint_{step}.pt`` (or
        ``name``), then prune the numbered ones to the newest ``keep``."""
        check_finite(state.get("model", {}), f"update {step}: refusing to write a checkpoint")
        path = self.checkpoints / (name or f"checkpoint_{step}.pt")
        atomic_save({"format": CHECKPOINT_FORMAT, "kind": str(self.kind), "step": step,
                     **state}, path)
        if keep is not None:
            self.prune(keep)
        return path

    def prune(self, keep: int) -> None:
        for _, path in self.numbered()[:-keep]:
            path.unlink(missing_ok=True)

    def load(self, path: str | Path | None = None) -> dict[str, Any]:
        """A checkpoint of this run (default: the newest numbered one)."""
        path = Path(path) if path is not None else self.latest()
        if path is None:
            raise RunDirError(f"{self.path}: no checkpoint yet")
        return load_checkpoint(path, self.kind)

    def average(self, last: int) -> tuple[dict[str, Tensor], list[str]]:
        """The mean model of the newest ``last`` numbered checkpoints and their names."""
        paths = [p for _, p in self.numbered()[-last:]]
        return average_states([self.load(p)["model"] for p in paths]), [p.name for p in paths]

    # -- metrics ----------------------------------------------------------------------------
    def log(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Append one metrics line (``event`` and ``step`` first, then ``time``)."""
        line = {"event": record.get("event", "train"), "step": record.get("step", 0),
                "time": round(time.time(), 3), **record}
        append_line(self.metrics_path, json.dumps(line, allow_nan=True))
        return line

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.metrics_path)

    def truncate_metrics(self, step: int) -> list[dict[str, Any]]:
        """Keep the lines up to update ``step`` (a resumed run logs the rest again)."""
        kept = [r for r in self.metrics() if int(r.get("step", 0)) <= step]
        atomic_write_text("".join(json.dumps(r) + "\n" for r in kept), self.metrics_path)
        return kept


def check_recorded_code(folder: str | Path) -> None:
    """If ``folder`` is a run directory, check that this command line imported the user's
    code it recorded (for commands that read one of its files, such as ``train --arch
    RUN/arch.json``); nothing recorded is imported."""
    folder = Path(folder)
    if not (folder / RUN_FILE).exists() and not (folder / RUN_FILE).is_symlink():
        return
    info = read_json(folder / RUN_FILE, what="run record")
    if isinstance(info, dict):
        check_recorded(info.get("imports", []), folder)


def _kind_of(info: Any) -> RunKind | None:
    try:
        return RunKind(info["kind"])
    except (ValueError, KeyError, TypeError):
        return None


def _recorded_kind(path: Path) -> RunKind | None:
    """The kind a folder's run.json records; None if there is no readable one."""
    try:
        return _kind_of(read_json(path / RUN_FILE, what="run record"))
    except RunDirError:
        return None


def _check_early_run(path: Path, kind: RunKind) -> None:
    """``path`` holds only what a ``kind`` run killed before its first checkpoint writes:
    no link, no file of anyone else's."""
    refuse_links(path)
    for entry in path.iterdir():
        mode = entry.lstat().st_mode
        ours = (entry.name in _EARLY_FILES and stat.S_ISREG(mode)) or \
            (entry.name in _EARLY_FOLDERS and stat.S_ISDIR(mode)) or \
            (entry.name.startswith(".") and entry.name.endswith(".tmp"))
        if ours and entry.name in _EARLY_FOLDERS:  # only temporaries, or the imports' copies
            ours = all(stat.S_ISREG(f.lstat().st_mode) and (
                (f.name.startswith(".") and f.name.endswith(".tmp")) or
                (entry.name == "imports" and f.suffix == ".py")) for f in entry.iterdir())
        if not ours:
            raise RunDirError(f"{entry}: not what a {kind} run writes before its first "
                              f"checkpoint, so {path} is not provably a run of ours; choose a "
                              "new or empty folder (nothing there was changed)")

