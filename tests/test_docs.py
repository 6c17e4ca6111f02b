"""The documentation says what the code does:

- every ```python block of a page in docs/ runs, the blocks of a page in order in one
  namespace, in a fresh folder (a block marked ``<!-- no-test -->`` on the line before it is
  skipped; the page says why);
- every ``nasframe ...`` line of a shell block in docs/ and README.md parses with the real
  parser;
- every public name (``nasframe.__all__`` and each public module's ``__all__``) has a
  docstring and an entry on a reference page (docs/_gen/reference.py, which ``make docs``
  runs, builds the pages and raises on a name without either).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import shlex
import sys
from pathlib import Path

import pytest

from nasframe.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_gen" not in p.relative_to(DOCS).parts)
NO_TEST = "<!-- no-test -->"
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELLS = {"sh", "bash", "shell", "console"}


def _blocks(text: str, languages: set[str]) -> list[tuple[int, str, bool]]:
    """(line number, code, marked no-test) of each fenced block in one of ``languages``."""
    found = []
    for m in FENCE.finditer(text):
        if m.group(1) in languages:
            before = text[:m.start()].rstrip().rsplit("\n", 1)[-1].strip()
            found.append((text.count("\n", 0, m.start()) + 1, m.group(2), before == NO_TEST))
    return found


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ------------------------------------------------------------------------- python blocks

PYTHON_PAGES = [p for p in PAGES if _blocks(p.read_text(encoding="utf-8"), {"python"})]


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=_rel)
def test_the_python_blocks_of_a_page_run(page: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    for line, code, skipped in _blocks(page.read_text(encoding="utf-8"), {"python"}):
        if skipped:
            continue
        exec(compile(code, f"{_rel(page)} (python block at line {line})", "exec"), namespace)


# ------------------------------------------------------------------------- command lines

def _command_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command) of each ``nasframe ...`` line of the shell blocks."""
    found = []
    for start, code, skipped in _blocks(text, SHELLS):
        if skipped:
            continue
        lines = code.split("\n")
        i = 0
        while i < len(lines):
            number, line = start + 1 + i, lines[i]
            while line.rstrip().endswith("\\") and i + 1 < len(lines):  # a continuation
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            i += 1
            line = line.strip().removeprefix("$ ")
            if "  #" in line:
                line = line[:line.index("  #")]
            if line.startswith("nasframe "):
                found.append((number, line))
    return found


def _argv(line: str) -> list[str]:
    """The command's own arguments, up to the first redirection, pipe or next command."""
    argv = []
    for token in shlex.split(line, comments=True)[1:]:
        if token.startswith(("<", ">", "|", "&", ";", "2>", "1>")):
            break
        argv.append(token)
    return argv


COMMANDS = [(page, number, line) for page in [ROOT / "README.md", *PAGES]
            for number, line in _command_lines(page.read_text(encoding="utf-8"))]


def test_the_docs_show_command_lines() -> None:
    assert len(COMMANDS) >= 5


@pytest.mark.parametrize("page,number,line", COMMANDS,
                         ids=[f"{_rel(p)}:{n}" for p, n, _ in COMMANDS])
def test_a_command_line_of_the_docs_parses(page: Path, number: int, line: str) -> None:
    parser = build_parser()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(_argv(line))
        except SystemExit as stop:  # --help and --version exit 0
            assert stop.code == 0, f"{_rel(page)}:{number}: {line}\n{err.getvalue()}"


def test_the_command_line_check_cuts_redirections_and_continuations() -> None:
    text = ("```sh\n"
            "nasframe search --preset tiny \\\n    --out runs/s  # a comment\n"
            "echo hi | nasframe translate runs/t < in.txt > out.txt\n"
            "$ nasframe show arch.json | head\n"
            "```\n")
    lines = [line for _, line in _command_lines(text)]
    assert lines == ["nasframe search --preset tiny  --out runs/s",
                     "nasframe show arch.json | head"]
    assert _argv(lines[1]) == ["show", "arch.json"]
    assert _argv("nasframe translate runs/t < in.txt > out.txt") == ["translate", "runs/t"]


# ------------------------------------------------------------------------- the reference

def _load_reference():  # noqa: ANN202 - the module of docs/_gen/reference.py
    spec = importlib.util.spec_from_file_location("docs_reference",
                                                  DOCS / "_gen" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference():  # noqa: ANN201
    return _load_reference().build()  # raises on a public name without docstring or page


def test_every_public_name_has_a_docstring_and_a_reference_entry(reference) -> None:
    import nasframe

    assert reference.undocumented == [] and reference.unplaced == []
    for name in nasframe.__all__:
        assert f"nasframe.{name}" in reference.public, name
    for public, target in reference.public.items():
        page = reference.documented[target]
        text = reference.pages[page]
        module, name = target.rsplit(".", 1)
        blocks = re.findall(rf"^::: {re.escape(module)}\n((?:    .*\n)*)", text, re.MULTILINE)
        listed = f"::: {target}\n" in text or any(
            "members:" not in b or re.search(rf"members: \[(?:.*, )?{re.escape(name)}[,\]]", b)
            for b in blocks)
        assert listed, f"{public} ({target}) is not rendered on {page}"


def test_every_public_module_has_a_reference_section(reference) -> None:
    import pkgutil

    import nasframe

    text = "\n".join(reference.pages.values())
    for info in pkgutil.walk_packages(nasframe.__path__, "nasframe."):
        parts = info.name.split(".")[1:]
        if any(p.startswith("_") for p in parts):
            continue
        assert f"::: {info.name}\n" in text, info.name


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    found = []
    for action in parser._actions:
        found += action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _flags(sub)
    return found


def test_the_cli_reference_shows_every_flag_and_command(reference) -> None:
    page = reference.pages["reference/cli.md"]
    parser = build_parser()
    for flag in set(_flags(parser)) - {"-h", "--help"}:
        assert re.search(rf"[` ]{re.escape(flag)}[ ,`]", page), flag
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name in action.choices:
                assert f"## `nasframe {name}`" in page, name


def test_the_config_reference_shows_every_field(reference) -> None:
    from nasframe.compare.spec import CompareSettings, Row
    from nasframe.run.config import SearchConfig, TrainConfig

    page = reference.pages["reference/config.md"]
    for model in (SearchConfig, TrainConfig, CompareSettings, Row):
        for field in model.model_fields:
            assert f"| `{field}` |" in page, f"{model.__name__}.{field}"
