"""Faults injected into real runs: planted pickles, --out onto other runs and user files,
divergence, kills at random moments, a full disk, and bad invocations."""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import nasframe as nf
from nasframe.base.errors import NonFiniteError, RunDirError
from nasframe.cli import main
from nasframe.run.config import SearchConfig, TrainConfig, apply_overrides
from nasframe.run.rundir import RunDir, RunKind, load_checkpoint, read_metrics
from nasframe.searching.api import search
from nasframe.searching.executor import Executor
from nasframe.searching.strategy import SearchContext
from nasframe.text.data import DataSpec
from nasframe.text.training import train

SEARCH = {
    "device": "cpu", "seed": 5, "steps": 8, "checkpoint_every": 2, "log_every": 1,
    "data.source": "synthetic:reverse", "data.vocab_size": 12, "data.synthetic_len": [2, 6],
    "data.synthetic_pairs": 60, "data.max_tokens": 40, "model.d_model": 48,
    "model.embed_dim": 16, "model.dropout": 0.1, "optim.lr": 1e-2, "optim.warmup": 2,
    "optim.alpha_lr": 1e-2,
}


def set_flags(settings: dict[str, Any]) -> list[str]:
    """``--set key=value`` flags for the command line."""
    return [arg for k, v in settings.items() for arg in ("--set", f"{k}={json.dumps(v)}")]


def search_config(**extra: Any) -> SearchConfig:
    return apply_overrides(SearchConfig.preset_config("tiny"), {**SEARCH, **extra})


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def metrics(run: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s", "elapsed")}
            for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]



def train_config(**changes: Any) -> TrainConfig:
    base = dict(model=nf.ModelConfig(d_model=48, embed_dim=32, dropout=0.1), vocab_size=200,
                max_tokens=400, steps=6, lr=1e-3, warmup=4, checkpoint_every=2, log_every=1,
                device="cpu", seed=3)
    return TrainConfig(**{**base, **changes})


def arch() -> nf.Architecture:
    return nf.Architecture(space=nf.spaces.get("transformer"), choices={})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_tsv) -> Path:
    out = tmp_path_factory.mktemp("runs") / "trained"
    train(arch(), out, train_config(average_last=2), DataSpec(data=str(small_tsv)),
          progress=False)
    return out


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "searched"
    search("tiny", "darts-reversible", config=search_config(steps=4), out=out)
    return out


# ----------------------------------------------------------------------------- pickles

class Planted:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def plant(path: Path, marker: Path) -> None:
    state = torch.load(path, weights_only=True)
    torch.save({**state, "extra": Planted(marker)}, path)


@pytest.mark.parametrize("which", ["checkpoint_avg.pt", "checkpoint_best.pt", "numbered"])
def test_a_planted_pickle_in_a_trained_run_never_runs(which, trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    marker = tmp_path / "marker"
    ckpts = run / "checkpoints"
    if which == "numbered":  # translate with --checkpoint last, and --resume, read it
        target = max(ckpts.glob("checkpoint_[0-9]*.pt"), key=lambda p: int(p.stem[11:]))
        plant(target, marker)
        assert main(["train", "--out", str(run), "--resume", "--steps", "8",
                     "--no-progress"]) == 2
        assert "refused" in capsys.readouterr().err
        args = ["--checkpoint", "last"]
    else:
        if which == "checkpoint_best.pt":
            (ckpts / "checkpoint_avg.pt").unlink()
        plant(ckpts / which, marker)
        args = []
    source = tmp_path / "in.txt"
    source.write_text("Open the dialog.\n")
    assert main(["translate", "--model", str(run), "--input", str(source), *args]) == 2
    err = capsys.readouterr().err
    assert "refused: it holds objects other than tensors" in err and "Traceback" not in err
    assert not marker.exists()


def test_a_planted_pickle_in_a_search_run_never_runs(searched, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(searched, run)
    marker = tmp_path / "marker"
    plant(RunDir.open(run, RunKind.SEARCH).latest(), marker)
    assert main(["derive", str(run)]) == 2
    assert "refused" in capsys.readouterr().err
    with pytest.raises(nf.CheckpointError, match="refused"):
        search(out=run, resume=True, steps=6)
    assert not marker.exists()


# ----------------------------------------------------------------------------- --out

def test_out_onto_another_run_or_user_files_changes_no_byte(trained, searched, tmp_path,
                                                           capsys, small_tsv):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "config.json").write_text('{"my": "settings"}')
    (user / "metrics.jsonl").write_text("1 2 3\n")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("notes")
    search_args = ["search", "--preset", "tiny", *set_flags(SEARCH)]
    train_args = ["train", "--arch", "transformer", "--data", str(small_tsv), "--steps", "1",
                  "--vocab-size", "200", "--no-progress"]
    for target in (trained, searched, user, a_file):
        before = tree_digest(target) if target.is_dir() else target.read_bytes()
        for args in (search_args, train_args):
            if (target, args[0]) in ((searched, "search"), (trained, "train")):
                continue  # same kind: covered by 'already holds ... --resume'
            assert main([*args, "--out", str(target)]) == 2
            err = capsys.readouterr().err
            assert err.count("error:") == 1 and "Traceback" not in err, err
        after = tree_digest(target) if target.is_dir() else target.read_bytes()
        assert after == before, target


# ----------------------------------------------------------------------------- divergence

def nan_at(update: int):
    loss = SearchContext.loss

    def poisoned(self: SearchContext, batch: Any) -> torch.Tensor:
        value = loss(self, batch)
        return value * float("nan") if self.step == update else value
    return poisoned


def test_a_nan_stops_the_search_and_leaves_finite_checkpoints(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(SearchContext, "loss", nan_at(5))
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"update 5: .*loss.* not finite.*checkpoint_4\.pt"):
        search("tiny", "darts-reversible", config=search_config(), out=run)
    rundir = RunDir.open(run, RunKind.SEARCH)
    assert [s for s, _ in rundir.numbered()] == [2, 4]
    for _, path in rundir.numbered():
        assert all(torch.isfinite(t).all() for t in load_checkpoint(path)["model"].values()
                   if t.is_floating_point())
    nf.Architecture.load(run / "arch.json")  # readable: the last good architecture
    # the same from the command line: exit code 3, one error line
    args = ["search", "--preset", "tiny", "--strategy", "darts-reversible", "--space", "tiny",
            "--no-progress", "--out", str(tmp_path / "cli"),
            *set_flags(SEARCH)]
    capsys.readouterr()
    assert main(args) == 3
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--skip-nonfinite" in err
    # allowed to skip: the run ends, the poisoned update changed nothing
    result = search("tiny", "darts-reversible", config=search_config(skip_nonfinite=1),
                    out=tmp_path / "skipping")
    assert result.steps == 8 and result.skipped == 1
    assert all(torch.isfinite(p).all() for p in result.supernet.parameters())
    assert any(r["event"] == "skip" for r in metrics(tmp_path / "skipping"))


def test_a_nan_stops_training_and_keeps_the_best_finite(tmp_path, monkeypatch, small_tsv):
    import nasframe.text.training as training

    real = training.seq2seq_loss_terms
    calls = {"n": 0}

    def poisoned(model, batch, smoothing, pad_id=None):
        loss, nll, n = real(model, batch, smoothing, pad_id)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 5:
                return loss * float("nan"), nll, n
        return loss, nll, n

    monkeypatch.setattr(training, "seq2seq_loss_terms", poisoned)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteError, match="update 5: the training loss and grad_norm"):
        train(arch(), out, train_config(), DataSpec(data=str(small_tsv)), progress=False)
    run = RunDir.open(out, RunKind.TRAIN)
    assert [s for s, _ in run.numbered()] == [2, 4]
    best = load_checkpoint(out / "checkpoints" / "checkpoint_best.pt")
    assert best["step"] == 4 and all(torch.isfinite(t).all() for t in best["model"].values()
                                     if t.is_floating_point())
    calls["n"] = 0
    result = train(arch(), tmp_path / "skip", train_config(skip_nonfinite=1),
                   DataSpec(data=str(small_tsv)), progress=False)
    assert result.steps == 6 and result.skipped == 1


# ----------------------------------------------------------------------------- kills

class Killed(BaseException):
    """Stands for SIGKILL at one precise moment."""


def test_a_kill_between_the_checkpoint_and_the_architecture_is_repaired(tmp_path,
                                                                         monkeypatch):
    whole = search("tiny", "darts-reversible", config=search_config(), out=tmp_path / "whole")
    write = Executor._write_architecture

    def dies_after_checkpoint_6(self: Executor, step: int, arch: Any) -> None:
        if step == 6:
            raise Killed  # checkpoint_6.pt is renamed into place, arch*.json are not
        write(self, step, arch)

    monkeypatch.setattr(Executor, "_write_architecture", dies_after_checkpoint_6)
    with pytest.raises(Killed):
        search("tiny", "darts-reversible", config=search_config(), out=tmp_path / "killed")
    killed = tmp_path / "killed"
    assert (killed / "checkpoints" / "checkpoint_6.pt").is_file()
    assert not (killed / "arch_step6.json").exists()
    monkeypatch.setattr(Executor, "_write_architecture", write)
    resumed = search(out=killed, resume=True)
    assert resumed.architecture == whole.architecture
    for name in ("arch.json", "arch_step6.json", "arch_step8.json", "result.json"):
        a, b = (json.loads((d / name).read_text()) for d in (tmp_path / "whole", killed))
        for record in (a, b):  # wall-clock fields differ from run to run
            for key in ("time", "tokens_per_s"):
                record.get("metrics", {}).pop(key, None)
        assert a == b, name
    assert metrics(killed) == metrics(tmp_path / "whole")


_SEARCH_CHILD = """
import sys, torch; torch.set_num_threads(1)
from nasframe.run.config import SearchConfig, apply_overrides
from nasframe.run.rundir import RunDir, RunKind
from nasframe.searching.api import search
out = sys.argv[1]
cfg = apply_overrides(SearchConfig.preset_config("tiny"), {settings})
try:
    resume = RunDir.open(out, RunKind.SEARCH).latest() is not None
except Exception:
    resume = False
search("tiny", "darts-reversible", config=cfg, out=out, resume=resume)
"""

_TRAIN_CHILD = """
import sys, torch; torch.set_num_threads(1)
import nasframe as nf
from nasframe.run.config import TrainConfig
from nasframe.text.data import DataSpec
from nasframe.run.rundir import RunDir, RunKind
from nasframe.text.training import train
out, data = sys.argv[1], sys.argv[2]
config = TrainConfig(model=nf.ModelConfig(d_model=48, embed_dim=32), vocab_size=200,
                     max_tokens=400, steps=40, lr=1e-3, warmup=4, checkpoint_every=3,
                     log_every=1, device="cpu", seed=3)
arch = nf.Architecture(space=nf.spaces.get("transformer"), choices={})
try:
    resume = RunDir.open(out, RunKind.TRAIN).latest() is not None
except Exception:
    resume = False
if resume:
    train(None, out, resume=True, progress=False)
else:
    train(arch, out, config, DataSpec(data=data), progress=False)
"""


def _last_update(run: Path) -> int:
    try:
        return max((int(r["step"]) for r in read_metrics(run / "metrics.jsonl")
                    if r.get("event") == "train"), default=0)
    except RunDirError:
        return 0


def _run_with_kills(script: str, args: list[str], out: Path, total: int, kills: int,
                    seed: int) -> int:
    """Run ``script`` to the end, SIGKILLed ``kills`` times at random moments: after random
    updates (whatever the machine's load), plus a random fraction of a second, so a kill may
    land inside an update, a checkpoint write or an architecture write. Returns the kills."""
    rng = random.Random(seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    targets = sorted(rng.sample(range(1, total), kills))
    for target in targets:
        proc = subprocess.Popen([sys.executable, "-c", script, *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while _last_update(out) < target and proc.poll() is None:
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return len(targets)


def test_search_killed_at_random_moments_ends_bitwise_equal(tmp_path):
    settings = repr({**SEARCH, "steps": 30, "checkpoint_every": 3})
    script = _SEARCH_CHILD.replace("{settings}", settings)
    _run_with_kills(script, [str(tmp_path / "whole")], tmp_path / "whole", 30, 0, 0)
    assert _run_with_kills(script, [str(tmp_path / "killed")], tmp_path / "killed", 30, 10,
                           1) == 10
    whole, killed = (RunDir.open(tmp_path / d, RunKind.SEARCH) for d in ("whole", "killed"))
    a, b = whole.load(), killed.load()
    assert a["step"] == b["step"] == 30
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert (tmp_path / "whole" / "arch.json").read_text() == \
        (tmp_path / "killed" / "arch.json").read_text()
    assert metrics(tmp_path / "whole") == metrics(tmp_path / "killed")
    assert not list((tmp_path / "killed").rglob(".*.tmp"))


def test_training_killed_at_random_moments_ends_bitwise_equal(tmp_path, small_tsv):
    args = [str(small_tsv)]
    _run_with_kills(_TRAIN_CHILD, [str(tmp_path / "whole"), *args], tmp_path / "whole", 40, 0,
                    0)
    assert _run_with_kills(_TRAIN_CHILD, [str(tmp_path / "killed"), *args], tmp_path / "killed",
                           40, 10, 2) == 10
    whole, killed = (RunDir.open(tmp_path / d, RunKind.TRAIN) for d in ("whole", "killed"))
    a, b = whole.load(), killed.load()
    assert a["step"] == b["step"] == 40
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["batcher"] == b["batcher"]
    losses = [[r["loss"] for r in metrics(tmp_path / d) if r["event"] == "train"]
              for d in ("whole", "killed")]
    assert losses[0] == losses[1]
    assert not list((tmp_path / "killed").rglob(".*.tmp"))


# ----------------------------------------------------------------------------- full disk

def test_a_full_disk_gives_one_error_and_an_intact_checkpoint(tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(disk)],
                             capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a tmpfs here; test_rundir covers ENOSPC with a write hook")
    try:
        args = ["search", "--preset", "tiny", "--strategy", "darts-reversible", "--space",
                "tiny", "--no-progress", "--out", str(disk / "run"),
                *set_flags({**SEARCH, "steps": 200, "checkpoint_every": 1})]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and "no space left on device" in err, err
        assert "Traceback" not in err and "unexpected pos" not in err
        run = RunDir.open(disk / "run", RunKind.SEARCH)
        assert run.latest() is not None and load_checkpoint(run.latest())["step"] >= 1
        assert not list((disk / "run").rglob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ----------------------------------------------------------------------------- invocations

def test_bad_invocations_are_one_error_line(trained, searched, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text("Open the dialog.\n")
    cases = [
        (["translate", "--model", str(trained), "--input", str(tmp_path / "nope.txt")],
         "no such file"),
        (["translate", "--model", str(trained), "--input", str(source), "--output",
          str(tmp_path)], "is a folder"),
        (["translate", "--model", str(searched), "--input", str(source)], "search run"),
        (["evaluate", "--model", str(trained), "--limit", "0"], "--limit 0"),
        (["evaluate", "--model", str(trained), "--limit", "-1"], "--limit -1"),
        (["search", "--preset", "tiny", "--space-option", "nope=1", "--out",
          str(tmp_path / "x")], "has no option 'nope'"),
        (["derive", str(trained)], "training run"),
        (["search", "--out", str(searched), "--resume", "--d-model", "96"],
         "model.d_model: recorded 48, given 96"),
        (["search", "--out", str(searched), "--resume", "--lr", "0.5"],
         "optim.lr: recorded 0.01, given 0.5"),
        (["train", "--out", str(trained), "--resume", "--lr", "0.5"], "lr: recorded 0.001"),
        (["show", str(tmp_path / "nope.json")], "nope.json"),
    ]
    before = {d: tree_digest(d) for d in (trained, searched)}
    for args, expected in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and expected in err and "Traceback" not in err, \
            (args, err)
    assert {d: tree_digest(d) for d in (trained, searched)} == before  # refused: untouched


def test_translate_writes_one_line_per_input_line(trained, tmp_path, capsys):
    source = tmp_path / "in.txt"
    lines = ["Open the\x0cdialog.", "Click\rOK.", "Save\u2028the file.", "", "Close it."]
    source.write_bytes(("\n".join(lines) + "\n").encode())
    out = tmp_path / "out.txt"
    assert main(["translate", "--model", str(trained), "--input", str(source), "--output",
                 str(out), "--beam", "1"]) == 0
    written = out.read_bytes().decode().split("\n")
    assert written[-1] == "" and len(written) - 1 == len(lines)
    assert written[3] == ""
    source.write_bytes(b"fine\n\xff\xfe broken\n")
    assert main(["translate", "--model", str(trained), "--input", str(source)]) == 2
    assert "in.txt:2: not valid UTF-8" in capsys.readouterr().err
