"""translate / evaluate on a trained run directory, and the quickstart job end to end (small)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

import nasframe as nf
from nasframe.cli import main
from nasframe.compare.pipeline import (
    QuickstartOptions,
    describe_architecture,
    fresh_directory,
    run_quickstart,
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, corpus_dir) -> Path:
    out = tmp_path_factory.mktemp("runs") / "y"
    mp = pytest.MonkeyPatch()
    mp.setenv("NASFRAME_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    code = main(["train", "--arch", "transformer", "--out", str(out), "--data", str(corpus_dir),
                 "--steps", "3", "--vocab-size", "200", "--max-tokens", "400", "--no-progress"])
    mp.undo()
    assert code == 0
    return out


def test_translate_reads_stdin_and_writes_one_line_per_input(run_dir, monkeypatch, capsys):
    lines = ["Click OK.", "", "Choose Format - Cells."]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    assert main(["translate", "--model", str(run_dir), "--beam", "2"]) == 0
    out = capsys.readouterr().out.split("\n")
    assert len(out) == len(lines) + 1 and out[-1] == "" and out[1] == ""


def test_translate_files_and_greedy(run_dir, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("Click OK.\nSelect the cells.\n", encoding="utf-8")
    dst = tmp_path / "out.txt"
    assert main(["translate", "--model", str(run_dir), "--input", str(src), "--output",
                 str(dst), "--beam", "1", "--checkpoint", "last"]) == 0
    assert len(dst.read_text(encoding="utf-8").splitlines()) == 2
    assert capsys.readouterr().out == ""


def test_evaluate_prints_and_records_bleu_and_chrf(run_dir, capsys):
    assert main(["evaluate", "--model", str(run_dir), "--split", "test", "--limit", "8",
                 "--beam", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "BLEU" in printed and "chrF" in printed and "first 8 of 20" in printed
    result = json.loads((run_dir / "eval_test.json").read_text())
    assert {"bleu", "chrf", "bleu_signature", "sentences"} <= result.keys()
    assert result["sentences"] == 8 and result["of"] == 20
    assert len((run_dir / "eval_test.hyp.txt").read_text().splitlines()) == 8


def test_evaluate_errors_are_clear(run_dir, tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "nothing")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(run_dir), "--split", "dev"]) == 2
    assert "dev" in capsys.readouterr().err


def test_fresh_directory_never_reuses_a_full_one(tmp_path):
    first = fresh_directory(tmp_path / "q")
    assert first == tmp_path / "q"
    (first / "results.json").write_text("{}")
    assert fresh_directory(tmp_path / "q") == tmp_path / "q-2"


def test_architecture_summary():
    text = describe_architecture(nf.Architecture(space=nf.spaces.get("transformer"), choices={}))
    assert text == "enc(seq) attn|ffn  dec(seq) attn|xattn|ffn"


def test_quickstart_runs_end_to_end(tmp_path, corpus_dir):
    options = QuickstartOptions(out=tmp_path / "qs", data=str(corpus_dir), vocab_size=200,
                                search_steps=2, train_steps=2, train_minutes=1.0,
                                test_sentences=5, beam=2, progress=False)
    result = run_quickstart(options)
    out = Path(result["run_dir"])
    assert json.loads((out / "results.json").read_text()) == result
    assert result["search_steps"] == 2
    names = [m["name"] for m in result["models"]]
    assert names == ["derived", "transformer"]
    for model in result["models"]:
        assert model["train_steps"] == 2 and model["parameters"] > 0
        assert 0 <= model["bleu"] <= 100 and model["extra"]["sentences"] == 5
        assert (Path(model["run_dir"]) / "eval_test.json").is_file()
    derived = nf.Architecture.load(out / "arch_derived.json")
    assert derived.space.name == "dartsformer"
    retrained = Path(result["models"][0]["run_dir"])
    assert nf.Architecture.load(retrained / "arch.json").choices == derived.choices
    # a two-row compare at equal size: both models near the Transformer's parameter count
    target = result["params_target"]
    assert result["models"][1]["parameters"] == target
    assert abs(result["models"][0]["parameters"] - target) <= 0.05 * target
    assert (out / "compare.json").is_file() and (out / "compare.md").is_file()
