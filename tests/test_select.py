"""nasframe select: every checkpoint's architecture re-trained briefly, the best kept."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import nasframe as nf
from nasframe.base.errors import CheckpointError, ConfigError
from nasframe.cli import main
from nasframe.compare import select
from nasframe.run.config import apply_overrides
from nasframe.text.data import ParallelCorpus, load_split, write_tsv


@pytest.fixture(scope="module")
def search_run(tmp_path_factory) -> tuple[Path, Path]:
    corpus = tmp_path_factory.mktemp("corpus")
    for split, n in (("train", 200), ("valid", 16), ("test", 8)):
        c = load_split("lohelp", split)
        write_tsv(ParallelCorpus(c.src[:n], c.tgt[:n], split), corpus / f"{split}.tsv")
    run = tmp_path_factory.mktemp("search") / "run"
    config = {"preset": "tiny", "steps": 4, "checkpoint_every": 2, "data.vocab_size": 200,
              "data.max_tokens": 256, "device": "cpu"}
    cfg = apply_overrides(nf.SearchConfig.preset_config("tiny"), config)
    nf.search("tiny", "darts-reversible", str(corpus), cfg, out=run)
    return run, corpus


def test_select_retrains_every_checkpoint_and_writes_the_best(search_run):
    run, corpus = search_run
    result = select(run, 2, preset="tiny", vocab_size=200, progress=False)
    steps = [r["step"] for r in result["rows"]]
    assert steps == [2, 4]
    chosen = nf.Architecture.load(run / "arch_selected.json")
    best = min(result["rows"], key=lambda r: r["valid_loss"])
    assert result["selected_step"] == best["step"]
    assert chosen.choices == nf.Architecture.load(run / f"arch_step{best['step']}.json").choices
    assert "selected by `nasframe select`" in chosen.note
    recorded = json.loads((run / "select.json").read_text())
    assert recorded["rows"] == result["rows"]
    assert "| 2" in (run / "select.md").read_text()
    for r in result["rows"]:
        if "same_as" not in r:
            assert (Path(r["run_dir"]) / "checkpoints" / "checkpoint_best.pt").is_file()


def _files(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``folder``: inode, mtime and bytes (a rewrite changes one of them)."""
    return {str(f.relative_to(folder)): (f.stat().st_ino, f.stat().st_mtime_ns, f.read_bytes())
            for f in sorted(folder.rglob("*")) if f.is_file()}


def test_select_cli_resume_and_errors(search_run, tmp_path, capfd):
    # capfd, not capsys: sentencepiece's trainer needs a real stderr file descriptor
    run, corpus = search_run
    argv = ["select", str(run), "--train-steps", "2", "--vocab-size", "200", "--no-progress"]
    assert main(argv) == 0  # re-trains every checkpoint's architecture
    capfd.readouterr()
    before = _files(run / "select")
    assert any(name.startswith("step") and name.endswith(".json") for name in before)
    assert any(name.endswith("checkpoint_best.pt") for name in before)
    first = json.loads((run / "select.json").read_text())
    assert main([*argv, "--resume"]) == 0
    assert capfd.readouterr().out.strip().endswith("arch_selected.json")
    # --resume reused every record: nothing under select/ was re-trained or rewritten
    assert _files(run / "select") == before
    assert json.loads((run / "select.json").read_text())["rows"] == first["rows"]
    assert main(["select", str(tmp_path), "--train-steps", "2"]) == 2
    assert "not a nasframe run directory" in capfd.readouterr().err


def test_select_needs_text_for_a_synthetic_search(tmp_path):
    run = tmp_path / "syn"
    cfg = apply_overrides(nf.SearchConfig.preset_config("tiny"), {
        "steps": 2, "checkpoint_every": 2, "data.vocab_size": 12, "data.max_tokens": 64,
        "device": "cpu"})
    nf.search("tiny", "darts-reversible", "synthetic:reverse", cfg, out=run)
    with pytest.raises(ConfigError, match="--data"):
        select(run, 2, progress=False)
    with pytest.raises(CheckpointError):
        select(tmp_path / "none", 2, progress=False)
