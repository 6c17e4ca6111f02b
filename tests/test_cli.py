"""The command line: search, strategies, derive, show, and user errors as `error: ...`."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from nasframe.cli import build_parser, main

SMALL = ["--space", "tiny", "--strategy", "darts-reversible", "--preset", "tiny",
         "--data", "synthetic:reverse", "--vocab-size", "12", "--max-tokens", "64",
         "--device", "cpu", "--no-progress"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse: --help, bad flags
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_strategies_lists_the_built_ins(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "strategies")
    assert code == 0
    for name in ("darts-reversible", "darts", "spos"):
        assert name in out
    assert "DARTSformer" in out and "SPOS" in out


def test_search_derive_show(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "search", *SMALL, "--steps", "3", "--out", str(out_dir))
    assert code == 0, err
    assert "encoder.layer1.split1" in out
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 3
    for name in ("checkpoints/checkpoint_3.pt", "arch_step3.json", "arch.json", "config.json",
                 "space.json"):
        assert (out_dir / name).is_file(), name
    config = json.loads((out_dir / "config.json").read_text())
    assert config["steps"] == 3 and config["data"]["vocab_size"] == 12

    code, out, err = run(capsys, "derive", str(out_dir / "checkpoints" / "checkpoint_3.pt"),
                         "--out", str(tmp_path / "derived.json"))
    assert code == 0, err
    derived = json.loads((tmp_path / "derived.json").read_text())
    assert derived["choices"] == json.loads((out_dir / "arch.json").read_text())["choices"]
    assert "softmax(alpha)" in out

    code, out, err = run(capsys, "show", str(out_dir / "arch.json"), "--top", "2")
    assert code == 0, err
    assert "decoder.layer1.split2" in out and "softmax(alpha), top 2" in out

    code, _, err = run(capsys, "search", *SMALL, "--steps", "5", "--out", str(out_dir),
                       "--resume")
    assert code == 0, err
    assert (out_dir / "checkpoints" / "checkpoint_5.pt").is_file()
    steps = [json.loads(x)["step"] for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 5]  # log_every 10 of the tiny preset: the last update of each run


def test_toml_config_and_flag_precedence(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('steps = 2\nseed = 9\n[model]\nd_model = 96\n', encoding="utf-8")
    out_dir = tmp_path / "run"
    code, _, err = run(capsys, "search", *SMALL, "--config", str(toml), "--seed", "4",
                       "--set", "optim.alpha_lr=0.01", "--out", str(out_dir))
    assert code == 0, err
    config = json.loads((out_dir / "config.json").read_text())
    assert (config["steps"], config["seed"], config["model"]["d_model"]) == (2, 4, 96)
    assert config["optim"]["alpha_lr"] == 0.01 and config["preset"] == "tiny"


@pytest.mark.parametrize("argv, message", [
    (["search", "--strategy", "nope"], "error: strategy: unknown strategy 'nope'"),
    (["search", "--steps", "0"], "error: steps: Input should be greater than or equal to 1"),
    (["search", "--steps", "x"], "error: argument --steps: invalid int value: 'x'"),
    (["search", "--space", "nowhere"], "error: unknown space 'nowhere'"),
    (["search", "--set", "model.width=3"], "error: model.width: unknown setting"),
    (["show", "missing.json"], "error: missing.json: no such architecture file"),
    (["derive", "missing.pt"], "error: missing.pt: no such checkpoint"),
])
def test_user_errors_exit_2_without_traceback(capsys: pytest.CaptureFixture[str], argv: list[str],
                                              message: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    if argv[0] == "search":
        argv = ["search", *SMALL[4:], "--out", "run", *argv[1:]]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_search_help_documents_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "search", "--help")
    assert code == 0
    parser = _subcommand(build_parser(), "search")
    flags = [(flag, action) for action in parser._actions for flag in action.option_strings]
    assert len(flags) > 40
    for flag, action in flags:  # every flag of the parser, each with its own help text
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", out), flag
        own = re.sub(r"\s*\[[^\]]*\]$", "", action.help or "")  # less the preset values
        assert own.strip() and argparse.SUPPRESS not in own, flag
    assert argparse.SUPPRESS not in out
    assert "[60000 / 10000 / 300]" in out  # --steps in the paper / small / tiny presets


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]
