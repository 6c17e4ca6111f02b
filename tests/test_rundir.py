"""The run-directory layer: kinds, the user's files, weights_only loading, atomic writes,
metrics, the resume policy and the vocabulary cache."""
from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
from pathlib import Path

import pytest
import torch

import nasframe as nf
from nasframe.base.errors import DiskFullError, NonFiniteError, RunDirError
from nasframe.base.runtime import atomic_save, atomic_write_text, clean_temporaries
from nasframe.run.config import SearchConfig, TrainConfig
from nasframe.run.resume import TRAIN_RESUMABLE, record_session, resume_config
from nasframe.run.rundir import RunDir, RunKind, load_checkpoint, read_metrics
from nasframe.text.data import ParallelCorpus, Vocab, get_or_train_vocab, load_split


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- kinds

def test_a_run_is_created_only_in_a_new_or_empty_folder(tmp_path: Path) -> None:
    RunDir.create(tmp_path / "new", RunKind.SEARCH)
    (tmp_path / "empty").mkdir()
    RunDir.create(tmp_path / "empty", RunKind.TRAIN)
    user = tmp_path / "user"
    user.mkdir()
    (user / "config.json").write_text('{"mine": 1}')
    (user / "metrics.jsonl").write_text("my numbers\n")
    before = tree_digest(user)
    for kind in RunKind:
        with pytest.raises(RunDirError, match="not empty and not a nasframe run"):
            RunDir.create(user, kind)
    assert tree_digest(user) == before
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(RunDirError, match="not a folder"):
        RunDir.create(a_file, RunKind.SEARCH)


def test_a_run_refuses_the_other_kind(tmp_path: Path) -> None:
    RunDir.create(tmp_path / "s", RunKind.SEARCH).close()  # killed before a checkpoint:
    search = RunDir.create(tmp_path / "s", RunKind.SEARCH)   # started over
    search.save_checkpoint(1, {"model": {"w": torch.ones(1)}})
    RunDir.create(tmp_path / "t", RunKind.TRAIN).close()
    with pytest.raises(RunDirError, match="search run.*a train run would overwrite it"):
        RunDir.create(tmp_path / "s", RunKind.TRAIN)
    with pytest.raises(RunDirError, match="training run.*a search run would overwrite it"):
        RunDir.create(tmp_path / "t", RunKind.SEARCH)
    with pytest.raises(RunDirError, match="already holds a search run; continue it"):
        RunDir.create(tmp_path / "s", RunKind.SEARCH)
    with pytest.raises(RunDirError, match="to translate it must be a train run"):
        RunDir.open(tmp_path / "s", RunKind.TRAIN, "translate")
    with pytest.raises(RunDirError, match="nothing to resume"):
        RunDir.resume(tmp_path / "t", RunKind.TRAIN)


# ----------------------------------------------------------------------------- checkpoints

class Planted:
    """An object whose unpickling would run code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_planted_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    run = RunDir.create(tmp_path / "run", RunKind.TRAIN)
    path = run.save_checkpoint(3, {"model": {"w": torch.ones(2)}})
    clean = load_checkpoint(path, RunKind.TRAIN)
    assert clean["step"] == 3 and clean["kind"] == "train"
    torch.save({**clean, "extra": Planted(marker)}, path)
    with pytest.raises(nf.CheckpointError, match="refused: it holds objects other than"):
        load_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # what an unsafe loader would do: the plant is real
    assert marker.read_text() == "code ran"


def test_checkpoints_are_numbered_pruned_averaged_and_finite(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "run", RunKind.SEARCH)
    for step in (1, 2, 10, 3):
        run.save_checkpoint(step, {"model": {"w": torch.full((2,), float(step))}}, keep=3)
    assert [s for s, _ in run.numbered()] == [2, 3, 10]
    assert run.latest() == run.checkpoints / "checkpoint_10.pt"
    model, names = run.average(2)
    assert torch.equal(model["w"], torch.full((2,), 6.5))
    assert names == ["checkpoint_3.pt", "checkpoint_10.pt"]
    with pytest.raises(NonFiniteError, match="update 11: refusing.*w is not finite"):
        run.save_checkpoint(11, {"model": {"w": torch.tensor([1.0, float("nan")])}})
    assert run.latest() == run.checkpoints / "checkpoint_10.pt"
    with pytest.raises(nf.CheckpointError, match="a search checkpoint, not a train one"):
        load_checkpoint(run.latest(), RunKind.TRAIN)
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(nf.CheckpointError, match="junk.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_a_full_disk_is_one_error_and_the_old_file_survives(tmp_path: Path,
                                                            monkeypatch) -> None:
    path = tmp_path / "checkpoint_1.pt"
    atomic_save({"w": torch.ones(3)}, path)
    before = path.read_bytes()

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFullError, match="checkpoint_1.pt: no space left on device"):
        atomic_save({"w": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_temporaries_of_dead_processes_are_cleaned(tmp_path: Path) -> None:
    dead = multiprocessing.get_context("spawn").Process(target=int)
    dead.start()
    dead.join()
    stale = tmp_path / f".checkpoint_5.pt.{dead.pid}.tmp"
    live = tmp_path / f".checkpoint_5.pt.{os.getppid()}.tmp"
    stale.write_text("half")
    live.write_text("being written")
    assert clean_temporaries(tmp_path) == [stale]
    assert live.exists() and not stale.exists()


# ----------------------------------------------------------------------------- metrics

def test_metrics_tolerate_a_partial_last_line(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "run", RunKind.TRAIN)
    for step in (1, 2, 3):
        run.log({"event": "train", "step": step, "loss": 1.0 / step})
    with open(run.metrics_path, "a") as f:
        f.write('{"event": "train", "step": 4, "lo')  # killed mid-write
    assert [r["step"] for r in run.metrics()] == [1, 2, 3]
    assert list(run.metrics()[0])[:3] == ["event", "step", "time"]
    kept = run.truncate_metrics(2)
    assert [r["step"] for r in kept] == [1, 2]
    assert run.metrics_path.read_text().count("\n") == 2
    run.metrics_path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(RunDirError, match="metrics.jsonl:2: not a JSON line"):
        read_metrics(run.metrics_path)


# ----------------------------------------------------------------------------- resume policy

def test_resume_allows_only_the_allow_list() -> None:
    recorded = TrainConfig.preset_config("tiny", steps=100)
    resumed = resume_config(recorded, overrides={"steps": 300, "checkpoint_every": 7},
                            allowed=TRAIN_RESUMABLE)
    assert (resumed.steps, resumed.checkpoint_every, resumed.lr) == (300, 7, recorded.lr)
    with pytest.raises(nf.ConfigError) as err:
        resume_config(recorded, overrides={"lr": 0.5, "model.d_model": 96},
                      allowed=TRAIN_RESUMABLE)
    assert "lr: recorded 0.003, given 0.5" in str(err.value)
    assert "model.d_model: recorded 144, given 96" in str(err.value)
    search = SearchConfig.preset_config("tiny")
    same = resume_config(search, requested=SearchConfig.preset_config("tiny"))
    assert same == search
    with pytest.raises(nf.ConfigError, match="optim.lr"):
        resume_config(search, requested=SearchConfig.preset_config("small"))


def test_sessions_record_processes_and_threads(tmp_path: Path, capsys) -> None:
    from rich.console import Console

    run = RunDir.create(tmp_path / "run", RunKind.SEARCH)
    record_session(run, 0, 1, "cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        record_session(run, 5, 1, "cpu", Console(stderr=True))
    finally:
        torch.set_num_threads(threads)
    assert "no longer bitwise equal" in capsys.readouterr().err
    with pytest.raises(nf.ConfigError, match="started with 1 process.*this session has 2"):
        record_session(run, 5, 2, "cpu")
    sessions = run.info()["sessions"]
    assert [s["threads"] for s in sessions] == [threads, threads + 1]


# ----------------------------------------------------------------------------- vocabulary

def _small_corpus() -> ParallelCorpus:
    corpus = load_split("lohelp", "train")
    return ParallelCorpus(corpus.src[:300], corpus.tgt[:300], "small")


def test_a_truncated_cached_vocabulary_is_trained_again(tmp_path: Path) -> None:
    corpus = _small_corpus()
    vocab = get_or_train_vocab(corpus, tmp_path, 200)
    assert len(vocab) == 200
    assert vocab.path is not None
    good = vocab.path.read_bytes()
    vocab.path.write_bytes(good[: len(good) // 3])
    again = get_or_train_vocab(corpus, tmp_path, 200)
    assert len(again) == 200 and again.path.read_bytes() == good


def _train_vocab(cache: str, out: str) -> None:
    vocab = get_or_train_vocab(_small_corpus(), cache, 200)
    Path(out).write_text(json.dumps([len(vocab), vocab.encode("Open the dialog")]))


def test_two_processes_share_one_fresh_vocabulary_cache(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_train_vocab, args=(str(tmp_path / "cache"),
                                                     str(tmp_path / f"out{i}")))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    results = [json.loads((tmp_path / f"out{i}").read_text()) for i in range(2)]
    assert results[0] == results[1] and results[0][0] == 200
    models = list((tmp_path / "cache").glob("*.model"))
    assert len(models) == 1 and len(Vocab.load(models[0])) == 200
    assert not list((tmp_path / "cache").glob(".*.tmp"))


def test_atomic_text_is_all_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    atomic_write_text("first", path)
    atomic_write_text("second", path)
    assert path.read_text() == "second" and not list(tmp_path.glob(".*"))
