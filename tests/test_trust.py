"""Issue 21: a run directory, a TOML file or a shared folder someone gives you runs no code and
touches nothing outside it. Each attack starts from an honest run of the ``tiny`` kind (built
once per module, copied per test) and asserts what a user must see:

- no file outside the run changes (SHA-256 of everything around the run, before and after);
- no marker file appears (the planted code writes one when it is imported or called);
- the command exits with code 2 and one ``error:`` line that names what was refused, and no
  traceback.

Commands run in this process through ``nasframe.cli.main`` (fast), except those whose attack,
before the fix, could exhaust the machine's memory: they run in a child process with an
address-space limit and a timeout.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import traceback
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

import nasframe as nf
from nasframe.base.files import atomic_write_bytes, atomic_write_text
from nasframe.cli import main
from nasframe.run.config import TrainConfig, apply_overrides
from nasframe.searching.api import search
from nasframe.text.data import DataSpec, ParallelCorpus, get_or_train_vocab, load_split
from nasframe.text.training import train

EVIL_MODULE = "nasframe_trust_evil"  # an "installed" module a record may name


# ----------------------------------------------------------------------------- helpers

def snapshot(root: Path, skip: Iterable[Path] = ()) -> dict[str, str]:
    """Every entry under ``root`` (not following links): a file's SHA-256, a link's target,
    a folder's name; ``skip`` folders (the run under attack) are left out."""
    skipped = {Path(p) for p in skip}
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = [d for d in dirs if Path(folder, d) not in skipped]
        for name in [*dirs, *files]:
            path = Path(folder, name)
            if path in skipped:
                continue
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = "link -> " + os.readlink(path)
            elif path.is_dir():
                found[rel] = "folder"
            else:
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def cli(capfd: pytest.CaptureFixture[str], *args: Any) -> tuple[int | None, str, str]:
    """``nasframe ARGS`` in this process: (exit code, stdout, stderr). An exception escaping
    ``main`` is what a user would see as a traceback: it is returned as one in stderr.
    capfd, not capsys: sentencepiece's trainer writes to the real stderr."""
    capfd.readouterr()
    try:
        code: int | None = main([str(a) for a in args])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except Exception:  # noqa: BLE001 - exactly what must never happen
        out = capfd.readouterr()
        return None, out.out, out.err + "\nTraceback (escaped main):\n" + traceback.format_exc()
    out = capfd.readouterr()
    return code, out.out, out.err


def assert_refused(code: int | None, err: str, *words: str, first: bool = True) -> str:
    """Exit code 2 and one ``error:`` line naming one of ``words`` (case-insensitive); no
    traceback. ``first``: the error is the first line on stderr (hints aside), i.e. the
    command refused before doing any work. Returns the error line."""
    assert "Traceback" not in err, err[-3000:]
    assert code == 2, (code, err[-3000:])
    lines = [line for line in err.splitlines() if line.strip()
             and not line.startswith(("hint:", "preset:"))]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    if first:
        assert lines[0] == errors[0], err[-3000:]
    if words:
        assert any(w.lower() in errors[0].lower() for w in words), (words, errors[0])
    return errors[0]


def limited() -> None:  # pragma: no cover - runs in the child
    """A child's address space: enough for torch, far too little to exhaust the machine."""
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def nasframe(*args: Any, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    """``python -m nasframe ARGS`` in a child with bounded memory (see ``limited``)."""
    return subprocess.run([sys.executable, "-m", "nasframe", *map(str, args)], cwd=cwd,
                          text=True, capture_output=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=limited)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def edit_json(path: Path, **fields: Any) -> None:
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


def set_model(run: Path, **model: Any) -> None:
    config = json.loads((run / "config.json").read_text())
    config["train"]["model"].update(model)
    (run / "config.json").write_text(json.dumps(config))


# ----------------------------------------------------------------------------- honest runs

@pytest.fixture(scope="module")
def module_cache(tmp_path_factory) -> Iterable[None]:
    """The suite's private vocabulary cache also while module fixtures are built."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NASFRAME_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_dir, module_cache) -> Path:
    """A training run of 4 updates on a corpus with a test split, no imports."""
    out = tmp_path_factory.mktemp("honest") / "trained"
    config = TrainConfig(model=nf.ModelConfig(d_model=48, embed_dim=32, dropout=0.1),
                         vocab_size=200, max_tokens=400, steps=4, lr=1e-3, warmup=4,
                         checkpoint_every=2, log_every=1, device="cpu", seed=3,
                         average_last=2)
    train(nf.Architecture(space=nf.spaces.get("transformer"), choices={}), out, config,
          DataSpec(data=str(corpus_dir)), progress=False)
    return out


@pytest.fixture(scope="module")
def searched(tmp_path_factory, corpus_dir, module_cache) -> Path:
    """A search run of 4 updates on text (arch_step2.json, arch_step4.json), no imports."""
    out = tmp_path_factory.mktemp("honest") / "searched"
    settings = {"steps": 4, "checkpoint_every": 2, "data.vocab_size": 200,
                "data.max_tokens": 256, "device": "cpu"}
    config = apply_overrides(nf.SearchConfig.preset_config("tiny"), settings)
    search("tiny", "darts-reversible", str(corpus_dir), config, out=out)
    return out


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """The user's own files beside the run: what no attack may change."""
    folder = tmp_path / "victim"
    (folder / "sel" / "step4").mkdir(parents=True)
    (folder / "sel" / "step4" / "keep.txt").write_text("my re-training, keep it\n")
    (folder / "ckdir").mkdir()
    (folder / "secret").write_text('{"event": "train", "step": 1, "secret": "TOPSECRET"}\n'
                                   '{"event": "train", "step": 2, "secret": "TOPSECRET"}\n')
    (folder / "ops.py").write_text("# the user's own ops\nVALUE = 1\n")
    (folder / "notes.txt").write_text("my notes\n")
    return folder


def copy_run(source: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(source, run, symlinks=True)
    return run


def evil_code(marker: Path, space: bool = False) -> str:
    text = f"from pathlib import Path\nPath({str(marker)!r}).write_text('code ran')\n"
    if space:
        text += "import nasframe as nf\nS = nf.spaces.get('tiny')\n"
    return text


@pytest.fixture
def evil_module(tmp_path: Path, monkeypatch) -> Path:
    """An importable module ``nasframe_trust_evil`` (on sys.path, as if installed) that writes
    ``tmp_path/MARKER`` when imported; returns the marker's path."""
    marker = tmp_path / "MARKER"
    site = tmp_path / "site"
    site.mkdir()
    (site / f"{EVIL_MODULE}.py").write_text(evil_code(marker, space=True))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, EVIL_MODULE, raising=False)
    return marker


# ----------------------------------------------------------------------------- 1, 2: records

#: Commands that need a run's code: (which honest run, arguments; RUN, NEW, IN, DATA filled).
NEEDS_CODE = {
    "translate": ("trained", ["translate", "--model", "RUN", "--input", "IN", "--beam", "1"]),
    "evaluate": ("trained", ["evaluate", "--model", "RUN", "--limit", "2", "--beam", "1",
                             "--no-progress"]),
    "train --resume": ("trained", ["train", "--out", "RUN", "--resume", "--steps", "6",
                                   "--no-progress"]),
    "search --resume": ("searched", ["search", "--out", "RUN", "--resume", "--steps", "6",
                                     "--no-progress"]),
    "derive": ("searched", ["derive", "RUN"]),
    "show": ("searched", ["show", "RUN/arch.json"]),
    "train --arch": ("searched", ["train", "--preset", "tiny", "--arch", "RUN/arch.json",
                                  "--out", "NEW", "--data", "DATA", "--steps", "1",
                                  "--vocab-size", "200", "--d-model", "48", "--no-progress"]),
}


def command(name: str, run: Path, tmp_path: Path, data: Path) -> list[str]:
    source = tmp_path / "in.txt"
    if not source.exists():
        source.write_text("Open the dialog.\n")
    fill = {"RUN": str(run), "NEW": str(tmp_path / "new"), "IN": str(source),
            "DATA": str(data)}
    return [fill.get(a, a.replace("RUN/", f"{run}/")) for a in NEEDS_CODE[name][1]]


def attack_run(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return copy_run(request.getfixturevalue(NEEDS_CODE[name][0]), tmp_path)


@pytest.mark.parametrize("record", ["module path", "file copy", "installed module"])
@pytest.mark.parametrize("name", list(NEEDS_CODE))
def test_recorded_imports_are_never_executed(name, record, request, tmp_path, corpus_dir,
                                             evil_module, victim, capfd):
    """Attacks 1 and 2: run.json names the run's own evil.py (as a module, or as a file record
    whose hash is the planted copy's), or an installed module. No command imports it by
    itself: it refuses and says which --import would use the run's code."""
    run = attack_run(name, request, tmp_path)
    marker = tmp_path / "MARKER"
    evil = run / "imports" / "evil.py"
    evil.parent.mkdir(exist_ok=True)
    evil.write_text(evil_code(marker))
    records = {
        "module path": [{"module": str(evil)}],
        "file copy": [{"file": str(evil), "sha256": sha256(evil), "name": "evil.py",
                       "copy": "imports/evil.py"}],
        "installed module": [{"module": EVIL_MODULE}],
    }[record]
    edit_json(run / "run.json", imports=records)
    args = command(name, run, tmp_path, corpus_dir)
    before = snapshot(tmp_path, skip=[run, tmp_path / "new"])
    code, _, err = cli(capfd, *args)
    assert not marker.exists(), f"{name} executed the run's recorded code"
    assert EVIL_MODULE not in sys.modules
    assert_refused(code, err, "import")  # "pass --import ...", or "imports[0]: malformed"
    assert snapshot(tmp_path, skip=[run, tmp_path / "new"]) == before


@pytest.mark.parametrize("name", ["translate", "derive", "show"])
def test_a_module_record_imports_nothing_installed(name, request, tmp_path, corpus_dir,
                                                   monkeypatch, capfd):
    """Attack 1: ``{"module": "this"}`` imported any installed module (here the Zen)."""
    run = attack_run(name, request, tmp_path)
    monkeypatch.delitem(sys.modules, "this", raising=False)
    edit_json(run / "run.json", imports=[{"module": "this"}])
    code, out, err = cli(capfd, *command(name, run, tmp_path, corpus_dir))
    assert "this" not in sys.modules and "Beautiful is better" not in out + err
    assert_refused(code, err, "import", "this")


@pytest.mark.parametrize("imports", [5, "evil.py", [{}], [5], [{"file": 5, "sha256": 3}],
                                     [{"module": ["x"]}]],
                         ids=["5", "string", "empty-record", "list-of-int", "bad-file",
                              "bad-module"])
@pytest.mark.parametrize("name", ["translate", "derive", "train --resume"])
def test_malformed_imports_are_one_error_line(name, imports, request, tmp_path, corpus_dir,
                                               capfd):
    """Attack 10: ``"imports": 5`` or ``[{}]`` raised TypeError or KeyError."""
    run = attack_run(name, request, tmp_path)
    edit_json(run / "run.json", imports=imports)
    args = command(name, run, tmp_path, corpus_dir)
    before = snapshot(tmp_path, skip=[run])
    code, _, err = cli(capfd, *args)
    assert_refused(code, err, "imports", "run.json")
    assert snapshot(tmp_path, skip=[run]) == before


OPS = """
from pathlib import Path
with open({log!r}, "a") as f:
    f.write("imported\\n")
VALUE = 1
"""

_CALLS = """
import contextlib, io, json, os, sys
from nasframe.cli import main
results = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(args)
        except SystemExit as stop:
            code = stop.code
        except Exception as exc:
            code = None
            err.write("Traceback: " + repr(exc))
    results.append([code, err.getvalue(), os.path.exists(sys.argv[2])])
print(json.dumps(results))
"""


def test_the_runs_code_runs_only_with_a_matching_import(tmp_path, corpus_dir):
    """The honest way: a run trained with ``--import ops.py`` is used again only with an
    ``--import`` whose content is the recorded one (the user's file or the run's copy)."""
    log = tmp_path / "imported.log"
    (tmp_path / "ops.py").write_text(OPS.format(log=str(log)))
    done = nasframe("train", "--import", "ops.py", "--preset", "tiny", "--arch", "transformer",
                    "--data", corpus_dir, "--steps", "2", "--checkpoint-every", "2",
                    "--vocab-size", "200", "--d-model", "48", "--embed-dim", "32",
                    "--max-tokens", "400", "--no-progress", "--out", "t", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "t" / "imports" / "ops.py").read_text() == OPS.format(log=str(log))
    log.unlink()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "ops.py").write_text(OPS.format(log=str(tmp_path / "other.log"))
                                               + "# changed\n")
    (tmp_path / "in.txt").write_text("Open the dialog.\n")
    translate = ["translate", "--model", "t", "--input", "in.txt", "--beam", "1"]
    calls = [translate,  # no --import: refused, nothing imported
             [*translate, "--import", "other/ops.py"],  # other content: refused
             [*translate, "--import", "t/imports/ops.py"],  # the run's copy: same content
             [*translate, "--import", "ops.py"]]  # the user's file: same content
    done = subprocess.run([sys.executable, "-c", _CALLS, json.dumps(calls), str(log)],
                          cwd=tmp_path,
                          text=True, capture_output=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    (none, none_err, ran), (other, other_err, _), (copy, copy_err, _), (own, own_err, _) = \
        json.loads(done.stdout.strip().splitlines()[-1])
    assert not ran, "the run's recorded ops.py ran without --import"
    assert_refused(none, none_err, "--import")
    assert "ops.py" in none_err
    assert_refused(other, other_err, "ops.py", "sha", "content", "changed", "match")
    assert copy == 0, copy_err[-3000:]
    assert own == 0, own_err[-3000:]
    assert log.is_file()  # the user named it: it ran


# ----------------------------------------------------------------------------- 3, 4: TOML

def compare_toml(path: Path, corpus: Path, row: str) -> Path:
    path.write_text(f'[compare]\ndata = "{corpus}"\ntrain_steps = 1\nvocab_size = 200\n'
                    f'test_sentences = 2\nbeam = 1\n\n[[rows]]\nname = "row"\n{row}\n')
    return path


@pytest.mark.parametrize("imports", [[], ["--import", "os"]], ids=["plain", "import-os"])
def test_a_compare_toml_calls_no_arbitrary_callable(imports, tmp_path, corpus_dir, victim,
                                                    capfd):
    """Attack 3: ``architecture = "os:system"`` with ``space_options = { command = ... }``
    called os.system while the spec loaded. Even with ``--import os`` (the user named the
    module), ``os.system`` is no SearchSpace: nothing is called."""
    marker = tmp_path / "PWNED"
    toml = compare_toml(tmp_path / "c.toml", corpus_dir,
                        f'architecture = "os:system"\n'
                        f'space_options = {{ command = "touch {marker}" }}')
    before = snapshot(tmp_path)
    code, _, err = cli(capfd, "compare", "--config", toml, "--quick", "--no-progress",
                       "--out", tmp_path / "cmp", *imports)
    assert not marker.exists(), "the compare TOML ran a shell command"
    assert_refused(code, err, "os:system", "--import", "SearchSpace", "architecture")
    after = snapshot(tmp_path, skip=[tmp_path / "cmp"])
    assert after == before


def test_a_compare_row_space_from_a_file_needs_import(tmp_path, corpus_dir, capfd):
    """Attack 4 on compare: a row's ``space = "p.py:S"`` imported p.py."""
    marker = tmp_path / "MARKER"
    (tmp_path / "p.py").write_text(evil_code(marker, space=True))
    toml = compare_toml(tmp_path / "c.toml", corpus_dir,
                        f'strategy = "random"\nspace = "{tmp_path / "p.py"}:S"')
    code, _, err = cli(capfd, "compare", "--config", toml, "--quick", "--no-progress",
                       "--out", tmp_path / "cmp")
    assert not marker.exists(), "the compare TOML imported p.py"
    assert_refused(code, err, "--import", "p.py")


@pytest.mark.parametrize("kind", ["file", "module"])
def test_a_search_toml_space_needs_import(kind, tmp_path, evil_module, capfd):
    """Attack 4: a search TOML's ``space = "p.py:S"`` (or ``"module:S"``) imported it with no
    --import, recorded it, and re-imported it on every later command."""
    marker = evil_module
    if kind == "file":
        (tmp_path / "p.py").write_text(evil_code(marker, space=True))
        space, name = f"{tmp_path / 'p.py'}:S", "p.py"
    else:
        space, name = f"{EVIL_MODULE}:S", EVIL_MODULE
    toml = tmp_path / "s.toml"
    toml.write_text(f'preset = "tiny"\nspace = "{space}"\ndevice = "cpu"\nsteps = 1\n'
                    '[data]\nsource = "synthetic:reverse"\nvocab_size = 12\n')
    code, _, err = cli(capfd, "search", "--config", toml, "--no-progress", "--out",
                       tmp_path / "s")
    assert not marker.exists() and EVIL_MODULE not in sys.modules
    assert_refused(code, err, "--import", name)


# ----------------------------------------------------------------------------- 5: temporaries

def plant_temporaries(folder: Path, name: str, target: Path, pids: Iterable[int]) -> None:
    """Links ``.NAME.PID.tmp -> target``: the temporaries' old, predictable names."""
    folder.mkdir(parents=True, exist_ok=True)
    for pid in pids:
        link = folder / f".{name}.{pid}.tmp"
        if not link.is_symlink():
            link.symlink_to(target)


def around_us() -> list[int]:
    pid = os.getpid()
    return sorted({pid, *range(max(pid - 1000, 1), pid + 1000)})


@pytest.mark.parametrize("write", ["text", "bytes"])
def test_atomic_writes_never_follow_a_planted_temporary(write, tmp_path, victim):
    """Attack 5, at the source: 2000 planted links around this process's PID."""
    folder = tmp_path / "shared"
    plant_temporaries(folder, "eval_test.json", victim / "notes.txt", around_us())
    before = snapshot(victim)
    target = folder / "eval_test.json"
    if write == "text":
        atomic_write_text('{"bleu": 1}\n', target)
    else:
        atomic_write_bytes(b'{"bleu": 1}\n', target)
    assert snapshot(victim) == before
    assert not target.is_symlink() and target.read_text() == '{"bleu": 1}\n'
    # a link at the target itself is replaced, never written through
    link = folder / "arch.json"
    link.symlink_to(victim / "ops.py")
    atomic_write_text("{}\n", link)
    assert snapshot(victim) == before
    assert not link.is_symlink() and link.read_text() == "{}\n"


def _maybe_refused(code: int | None, err: str) -> None:
    """A command with planted temporaries beside its files may do its work or refuse."""
    if code != 0:
        assert_refused(code, err)


def test_evaluate_derive_and_translate_never_write_through_planted_temporaries(
        trained, searched, tmp_path, victim, capfd):
    """Attack 5 end to end (this process's PID, the one its writes would have used)."""
    pids = [os.getpid()]
    run = copy_run(trained, tmp_path)
    for name in ("eval_test.json", "eval_test.hyp.txt"):
        plant_temporaries(run, name, victim / "notes.txt", pids)
    search_run = tmp_path / "srun"
    shutil.copytree(searched, search_run, symlinks=True)
    plant_temporaries(search_run, "arch_derived.json", victim / "ops.py", pids)
    user = tmp_path / "user"
    user.mkdir()
    (user / "in.txt").write_text("Open the dialog.\n")
    plant_temporaries(user, "hyp.txt", victim / "secret", pids)
    before = snapshot(victim)
    code, _, err = cli(capfd, "evaluate", "--model", run, "--limit", "2", "--beam", "1",
                       "--no-progress")
    _maybe_refused(code, err)
    code, _, err = cli(capfd, "derive", search_run)
    _maybe_refused(code, err)
    code, _, err = cli(capfd, "translate", "--model", run, "--input", user / "in.txt",
                       "--output", user / "hyp.txt", "--beam", "1")
    _maybe_refused(code, err)
    assert snapshot(victim) == before


def test_select_never_writes_through_planted_temporaries(searched, tmp_path, victim, capfd):
    run = copy_run(searched, tmp_path)
    for name in ("select.json", "select.md", "arch_selected.json"):
        plant_temporaries(run, name, victim / "notes.txt", [os.getpid()])
    before = snapshot(victim)
    code, _, err = cli(capfd, "select", run, "--train-steps", "1", "--vocab-size", "200",
                       "--no-progress")
    _maybe_refused(code, err)
    assert snapshot(victim) == before


# ----------------------------------------------------------------------------- vocabulary

def _pieces(vocab: Any) -> list[str]:
    return [vocab._sp.id_to_piece(i) for i in range(len(vocab))]  # noqa: SLF001


@pytest.fixture(scope="module")
def two_corpora() -> tuple[ParallelCorpus, ParallelCorpus]:
    corpus = load_split("lohelp", "train")
    return (ParallelCorpus(corpus.src[:300], corpus.tgt[:300], "a"),
            ParallelCorpus(corpus.src[300:600], corpus.tgt[300:600], "b"))


@pytest.mark.parametrize("how", ["edited", "linked"])
def test_an_edited_vocabulary_cache_entry_is_rebuilt(how, two_corpora, tmp_path, victim,
                                                     monkeypatch):
    """The cache records what it was built from: an entry replaced by another valid model
    (or by a link to one) is trained again, not trusted; the link's target is not written."""
    a, b = two_corpora
    cache, other = tmp_path / "cache", tmp_path / "other"
    monkeypatch.setenv("NASFRAME_CACHE", str(cache))
    honest = _pieces(get_or_train_vocab(a, cache, 200))
    entries = sorted(cache.rglob("*.model"))
    assert len(entries) == 1
    planted_from = get_or_train_vocab(b, other, 200)
    assert _pieces(planted_from) != honest  # the two corpora give two vocabularies
    foreign = sorted(other.rglob("*.model"))[0]
    entry = entries[0]
    entry.unlink()
    if how == "edited":
        shutil.copyfile(foreign, entry)
    else:
        shutil.copyfile(foreign, victim / "b.model")
        entry.symlink_to(victim / "b.model")
    before = snapshot(victim)
    assert _pieces(get_or_train_vocab(a, cache, 200)) == honest
    assert snapshot(victim) == before
    assert _pieces(get_or_train_vocab(a, cache, 200)) == honest  # and again, from the cache


def test_the_vocabulary_cache_never_writes_through_planted_temporaries(two_corpora, tmp_path,
                                                                       victim):
    """Attack 5 on a shared cache: links under the names of the entry's temporaries."""
    a, _ = two_corpora
    probe = tmp_path / "probe"
    get_or_train_vocab(a, probe, 200)
    names = [p.name for p in probe.rglob("*") if p.is_file()]
    cache = tmp_path / "cache"
    for name in names:
        plant_temporaries(cache, name, victim / "notes.txt", [os.getpid()])
    before = snapshot(victim)
    get_or_train_vocab(a, cache, 200)
    assert snapshot(victim) == before


# ----------------------------------------------------------------------------- 6, 8: --out

@pytest.mark.parametrize("plant", ["linked checkpoints", "foreign file"])
def test_train_out_takes_only_an_empty_folder_or_its_own_run(plant, tmp_path, corpus_dir,
                                                              victim, capfd):
    """Attack 6: a pre-created --out with run.json {"kind": "train"} and checkpoints ->
    ../victim/ckdir (or a file of someone else's) is no run of ours: refused."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text('{"kind": "train"}')
    if plant == "linked checkpoints":
        (out / "checkpoints").symlink_to("../victim/ckdir")
    else:
        (out / "notes.txt").write_text("someone else's\n")
    before = snapshot(tmp_path)
    code, _, err = cli(capfd, "train", "--preset", "tiny", "--arch", "transformer", "--data",
                       corpus_dir, "--steps", "1", "--checkpoint-every", "1", "--vocab-size", "200",
                       "--d-model", "48", "--no-progress", "--out", out)
    assert_refused(code, err, "checkpoints", "symbolic link", "link", "out", "refused")
    assert snapshot(tmp_path) == before


def test_train_out_with_a_linked_import_changes_nothing(tmp_path, corpus_dir, victim):
    """Attack 6 in full: imports/my_ops.py -> ../../victim/ops.py and checkpoints ->
    ../victim/ckdir; ``train --import my_ops.py --out`` (a child: it imports my_ops.py)."""
    out = tmp_path / "out"
    (out / "imports").mkdir(parents=True)
    (out / "run.json").write_text('{"kind": "train"}')
    (out / "imports" / "my_ops.py").symlink_to("../../victim/ops.py")
    (out / "checkpoints").symlink_to("../victim/ckdir")
    user = tmp_path / "user"
    user.mkdir()
    (user / "my_ops.py").write_text("# my ops, changed\nVALUE = 2\n")
    before = snapshot(tmp_path)
    done = nasframe("train", "--import", "my_ops.py", "--preset", "tiny", "--arch",
                    "transformer", "--data", corpus_dir, "--steps", "1", "--checkpoint-every",
                    "1", "--vocab-size", "200", "--d-model", "48", "--no-progress", "--out",
                    out, cwd=user)
    assert_refused(done.returncode, done.stderr, "my_ops.py", "checkpoints", "symbolic link",
                   "link", "refused")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("resume", [False, True])
def test_compare_out_refuses_a_folder_that_is_not_a_comparison(resume, tmp_path, corpus_dir,
                                                               capfd):
    """Attack 8: ``compare --out`` into a folder without spec.json deleted
    transformer/seed1/train/model.bin and overwrote compare.md."""
    out = tmp_path / "mine"
    (out / "transformer" / "seed1" / "train").mkdir(parents=True)
    (out / "transformer" / "seed1" / "train" / "model.bin").write_bytes(b"\x00my model" * 100)
    (out / "compare.md").write_text("# my own notes\n")
    before = snapshot(tmp_path)
    code, _, err = cli(capfd, "compare", "--baselines", "transformer", "--quick", "--data",
                       corpus_dir, "--vocab-size", "200", "--no-progress", "--out", out,
                       *(["--resume"] if resume else []))
    assert_refused(code, err, str(out.name), "--out", "spec.json", "comparison", "refused")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- 7: select

@pytest.mark.parametrize("where", ["select", "select/step4"])
@pytest.mark.parametrize("resume", [False, True])
def test_select_never_deletes_through_a_link(where, resume, searched, tmp_path, victim, capfd):
    """Attack 7: RUN/select -> ../victim/sel; select ran rmtree on victim/sel/step4."""
    run = copy_run(searched, tmp_path)
    if where == "select":
        (run / "select").symlink_to("../victim/sel")
    else:
        (run / "select").mkdir()
        (run / "select" / "step4").symlink_to("../../victim/sel/step4")
    before = snapshot(tmp_path, skip=[run])
    code, _, err = cli(capfd, "select", run, "--train-steps", "1", "--vocab-size", "200",
                       "--no-progress", *(["--resume"] if resume else []))
    assert_refused(code, err, "select", "symbolic link", "link")
    assert snapshot(tmp_path, skip=[run]) == before
    assert (victim / "sel" / "step4" / "keep.txt").read_text() == "my re-training, keep it\n"


# ----------------------------------------------------------------------------- 9: reading

RESUME = {"train": ("trained", ["train", "--out", "RUN", "--resume", "--steps", "6",
                                "--no-progress"]),
          "search": ("searched", ["search", "--out", "RUN", "--resume", "--steps", "6",
                                  "--no-progress"])}


def resume_args(kind: str, run: Path) -> list[str]:
    return [str(run) if a == "RUN" else a for a in RESUME[kind][1]]


@pytest.mark.parametrize("kind", list(RESUME))
def test_resume_reads_no_linked_metrics(kind, request, tmp_path, victim, capfd):
    """Attack 9: metrics.jsonl -> ../victim/secret; --resume copied the secret's lines into
    the run's own metrics."""
    run = copy_run(request.getfixturevalue(RESUME[kind][0]), tmp_path)
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to("../victim/secret")
    before = snapshot(tmp_path, skip=[run])
    code, _, err = cli(capfd, *resume_args(kind, run))
    assert_refused(code, err, "metrics.jsonl", "symbolic link", "link")
    assert snapshot(tmp_path, skip=[run]) == before
    for path in run.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert b"TOPSECRET" not in path.read_bytes(), path


@pytest.mark.parametrize("kind", list(RESUME))
def test_resume_writes_no_checkpoint_through_a_linked_folder(kind, request, tmp_path, victim,
                                                             capfd):
    """A run with checkpoints -> a folder of the user's: resuming would write (and prune)
    there. Refused, naming the link."""
    run = copy_run(request.getfixturevalue(RESUME[kind][0]), tmp_path)
    shutil.move(run / "checkpoints", victim / "ckdir" / "checkpoints")
    (run / "checkpoints").symlink_to("../victim/ckdir/checkpoints")
    before = snapshot(tmp_path, skip=[run])
    code, _, err = cli(capfd, *resume_args(kind, run))
    assert_refused(code, err, "checkpoints", "symbolic link", "link")
    assert snapshot(tmp_path, skip=[run]) == before


# ----------------------------------------------------------------------------- 10: bounds

@pytest.mark.parametrize("kind", list(RESUME))
def test_a_metrics_line_with_a_bad_step_is_one_error_line(kind, request, tmp_path, capfd):
    """Attack 10: ``"step": "abc"`` raised ValueError on resume."""
    run = copy_run(request.getfixturevalue(RESUME[kind][0]), tmp_path)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines.insert(1, json.dumps({"event": "train", "step": "abc", "loss": 1.0}))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    code, _, err = cli(capfd, *resume_args(kind, run))
    assert_refused(code, err, "metrics.jsonl", "step", first=False)  # after loading the data


@pytest.mark.parametrize("name", ["translate", "derive", "train --resume", "search --resume"])
def test_a_deeply_nested_run_json_is_one_error_line(name, request, tmp_path, corpus_dir,
                                                    capfd):
    """Attack 10: a 100,000-deep run.json raised RecursionError."""
    run = attack_run(name, request, tmp_path)
    kind = json.loads((run / "run.json").read_text())["kind"]
    depth = 100_000
    (run / "run.json").write_text(f'{{"kind": "{kind}", "imports": [], "x": '
                                  + "[" * depth + "]" * depth + "}")
    code, _, err = cli(capfd, *command(name, run, tmp_path, corpus_dir))
    assert_refused(code, err, "run.json", "nest", "deep")


def bomb(source: Path, target: Path, inflated: int = 64 << 20) -> None:
    """``source`` (a torch zip) rewritten with deflated members, plus one member of
    ``inflated`` zero bytes: a few hundred KB on disk, far more once inflated."""
    with zipfile.ZipFile(source) as zin:
        members = [(info.filename, zin.read(info)) for info in zin.infolist()]
    prefix = members[0][0].split("/")[0]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED,
                         compresslevel=9) as zout:
        for name, data in members:
            zout.writestr(name, data)
        zout.writestr(f"{prefix}/data/padding", bytes(inflated))
    target.write_bytes(buffer.getvalue())
    assert inflated > 20 * target.stat().st_size


@pytest.mark.parametrize("name", ["translate", "train --resume"])
def test_a_compressed_checkpoint_is_refused_before_loading(name, request, tmp_path,
                                                           corpus_dir, capfd):
    """Attack 10: a deflated checkpoint that inflates far beyond its size on disk."""
    run = attack_run(name, request, tmp_path)
    ckpts = run / "checkpoints"
    bomb(ckpts / "checkpoint_4.pt", ckpts / "checkpoint_8.pt")
    for name_ in ("checkpoint_avg.pt", "checkpoint_best.pt"):
        (ckpts / name_).unlink()
    args = command(name, run, tmp_path, corpus_dir)
    if name == "train --resume":
        args = [a if a != "6" else "10" for a in args]
    else:
        args += ["--checkpoint", "last"]
    code, _, err = cli(capfd, *args)
    assert_refused(code, err, "checkpoint_8.pt", "compress", "inflate", first=False)


#: Recorded settings that could exhaust the machine before the fix: run in a bounded child.
BOUNDS = {
    "data /dev/zero": ({"data": "/dev/zero"}, ("/dev/zero", "regular file", "data")),
    "blocks 10**7": ({"blocks": 10**7}, ("blocks", "param", "--max-params", "size")),
    "d_model 199998": ({"d_model": 199_998}, ("d_model", "param", "--max-params", "size")),
}


@pytest.mark.parametrize(("case", "name"), [
    ("data /dev/zero", "evaluate"), ("data /dev/zero", "train --resume"),
    ("blocks 10**7", "translate"), ("blocks 10**7", "train --resume"),
    ("d_model 199998", "translate"), ("d_model 199998", "train --resume")])
def test_absurd_recorded_settings_are_refused_before_allocating(case, name, trained, tmp_path,
                                                                 victim):
    """Attack 10: data /dev/zero read one endless line; blocks 10**7 grew memory before the
    checkpoint was checked; d_model 199,998 ended in a traceback."""
    run = copy_run(trained, tmp_path)
    change, words = BOUNDS[case]
    if "data" in change:
        config = json.loads((run / "config.json").read_text())
        config["data"]["data"] = change["data"]
        (run / "config.json").write_text(json.dumps(config))
    else:
        set_model(run, **change)
    args = command(name, run, tmp_path, tmp_path)
    before = snapshot(tmp_path, skip=[run])
    done = nasframe(*args, cwd=tmp_path, timeout=90)
    assert_refused(done.returncode, done.stderr, *words, first=False)
    assert snapshot(tmp_path, skip=[run]) == before


def test_an_imported_file_is_read_once_and_those_bytes_run(tmp_path, monkeypatch):
    """Attack 2's race: the file is swapped right after nasframe read it. What runs, and what
    the run records, is what was read and hashed, never the swapped content."""
    import hashlib

    import nasframe.dsl.plugins as plugins

    honest = "VALUE = 'honest'\n"
    evil = f"open({str(tmp_path / 'PWNED')!r}, 'w').close()\nVALUE = 'evil'\n"
    path = tmp_path / "raced_ops.py"
    path.write_text(honest)
    reads = []
    real = plugins.read_bytes

    def read_then_swap(*args, **kwargs):
        data = real(*args, **kwargs)
        reads.append(data)
        path.write_text(evil)  # the attacker wins the race: too late
        return data

    monkeypatch.setattr(plugins, "read_bytes", read_then_swap)
    # this process's record of imports stays as it was: later tests (compare --jobs workers
    # re-import what it lists) must not meet the swapped file
    for name in ("_IMPORTED", "_FILES", "_SOURCES"):
        monkeypatch.setattr(plugins, name, type(getattr(plugins, name))())
    module = plugins.import_user_code(str(path))
    assert module.VALUE == "honest" and not (tmp_path / "PWNED").exists()
    assert len(reads) == 1
    record = next(r for r in plugins.imported() if r.get("file") == str(path.resolve()))
    assert record["sha256"] == hashlib.sha256(honest.encode()).hexdigest()
    run = tmp_path / "run"
    run.mkdir()
    records = plugins.save_imports(run)  # the copy is the bytes that ran
    copy = next(r for r in records if r.get("file") == str(path.resolve()))["copy"]
    assert (run / copy).read_text() == honest


@pytest.mark.parametrize("source, message", [(b"def (\n", "line 1: invalid syntax"),
                                             (b"x = 1\n\x00\n", "not Python source")])
def test_an_import_that_is_not_python_is_one_error_line(source, message, tmp_path, capfd):
    (tmp_path / "broken.py").write_bytes(source)
    code, _, err = cli(capfd, "space", "tiny", "--import", tmp_path / "broken.py")
    assert_refused(code, err, message)
