"""One writer per run directory (run.lock): a second writer is refused with every byte of the
run unchanged; a dead holder's lock is taken over and the takeover said; a holder on another
host is trusted until its lease expires; a finished run frees its lock."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import nasframe as nf
from nasframe.cli import main
from nasframe.run.config import TrainConfig, apply_overrides
from nasframe.run.lock import LOCK_FILE, RunLock
from nasframe.searching.api import search
from nasframe.text.data import DataSpec
from nasframe.text.training import train


def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus_dir) -> dict[str, Path]:
    """A finished training run and a finished search run (4 updates each)."""
    base = tmp_path_factory.mktemp("lock")
    config = TrainConfig(model=nf.ModelConfig(d_model=48, embed_dim=32), vocab_size=200,
                         max_tokens=400, steps=4, warmup=4, checkpoint_every=2, device="cpu")
    train(nf.Architecture(space=nf.spaces.get("transformer"), choices={}), base / "t", config,
          DataSpec(data=str(corpus_dir)), progress=False)
    settings = {"steps": 4, "checkpoint_every": 2, "data.vocab_size": 200,
                "data.max_tokens": 256, "device": "cpu"}
    search("tiny", "darts-reversible", str(corpus_dir),
           apply_overrides(nf.SearchConfig.preset_config("tiny"), settings), out=base / "s")
    return {"train": base / "t", "search": base / "s"}


@pytest.fixture
def run_copy(runs, tmp_path):
    def copy(kind: str) -> Path:
        target = tmp_path / kind
        shutil.copytree(runs[kind], target)
        return target
    return copy


def resume_args(kind: str, run: Path) -> list[str]:
    return [kind, "--resume", "--out", str(run), "--steps", "6", "--no-progress"]


def test_a_finished_run_frees_its_lock(runs):
    for run in runs.values():
        with RunLock.acquire(run) as lock:  # would raise if the writer had kept it
            assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
        assert lock.fd == -1
        assert json.loads((run / LOCK_FILE).read_text()) == {"released": True}


@pytest.mark.parametrize("kind", ["train", "search"])
def test_a_second_writer_is_refused_and_changes_no_byte(kind, run_copy, capfd):
    run = run_copy(kind)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from nasframe.run.lock import RunLock; "
        f"RunLock.acquire({str(run)!r}); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        before = snapshot(run)
        capfd.readouterr()
        assert main(resume_args(kind, run)) == 2
        err = capfd.readouterr().err
        assert f"another writer holds this run (process {holder.pid} on " \
               f"{socket.gethostname()}" in err, err
        assert err.count("error:") == 1 and "Traceback" not in err
        assert snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()
    assert main(resume_args(kind, run)) == 0  # the holder died: the kernel freed its lock


def test_a_second_new_run_beside_a_running_one_is_refused(run_copy, tmp_path, capfd,
                                                         corpus_dir):
    """Two `train --out same` started together: the second finds the first's early files and
    its lock, and leaves both alone."""
    out = tmp_path / "same"
    lock = RunLock.acquire(out)  # the first writer, just started
    (out / "run.json").write_text(json.dumps({"kind": "train"}))
    (out / "metrics.jsonl").write_text("")
    before = snapshot(out)
    capfd.readouterr()
    code = main(["train", "--arch", "transformer", "--out", str(out), "--data",
                 str(corpus_dir), "--steps", "2", "--vocab-size", "200", "--no-progress",
                 "--preset", "tiny"])
    err = capfd.readouterr().err
    after = snapshot(out)
    lock.release()
    assert code == 2 and "another writer holds this run" in err, err
    assert after == before


def test_a_dead_holders_lock_is_taken_over_and_said(run_copy, capfd):
    run = run_copy("train")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    (run / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": pid,
                                             "started": time.time() - 5,
                                             "renewed": time.time()}))
    capfd.readouterr()
    assert main(resume_args("train", run)) == 0
    err = capfd.readouterr().err
    assert f"took over the lock of process {pid}" in err and "no longer running" in err


@pytest.mark.parametrize("age, taken", [(5.0, False), (1000.0, True)])
def test_another_hosts_lock_holds_until_its_lease_expires(age, taken, run_copy, capfd):
    run = run_copy("search")
    (run / LOCK_FILE).write_text(json.dumps({"host": "node-7.cluster", "pid": 4242,
                                             "started": time.time() - age,
                                             "renewed": time.time() - age}))
    before = snapshot(run)
    capfd.readouterr()
    code = main(resume_args("search", run))
    err = capfd.readouterr().err
    if taken:
        assert code == 0 and "whose lease expired" in err, err
    else:
        assert code == 2 and "process 4242 on node-7.cluster" in err, err
        assert snapshot(run) == before


def test_the_holder_renews_its_lease(tmp_path):
    def record() -> dict:
        try:  # the holder may be rewriting it this instant
            return json.loads((tmp_path / "r" / LOCK_FILE).read_text())
        except ValueError:
            return {}

    with RunLock.acquire(tmp_path / "r", lease=0.2):
        first = record()["renewed"]
        deadline = time.time() + 5
        while time.time() < deadline and record().get("renewed", first) <= first:
            time.sleep(0.02)
        last = record()
        assert last["renewed"] > first and last["started"] < last["renewed"]


def test_readers_take_no_lock(runs, capfd, tmp_path):
    with RunLock.acquire(runs["train"]):  # a writer is busy with it
        (tmp_path / "in.txt").write_text("Click OK.\n")
        assert main(["translate", "--model", str(runs["train"]), "--input",
                     str(tmp_path / "in.txt"), "--beam", "1"]) == 0


def test_compare_and_select_refuse_a_second_writer(runs, run_copy, tmp_path, capfd):
    run = run_copy("search")
    with RunLock.acquire(run):
        before = snapshot(run)
        assert main(["select", str(run), "--train-steps", "2", "--no-progress"]) == 2
        assert "another writer holds this run" in capfd.readouterr().err
        assert snapshot(run) == before
    out = tmp_path / "cmp"
    with RunLock.acquire(out):  # a comparison just starting there
        assert main(["compare", "--baselines", "transformer", "--quick", "--out", str(out),
                     "--no-progress"]) == 2
        assert "another writer holds this run" in capfd.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
