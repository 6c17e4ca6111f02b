"""The results pages are generated from the committed JSON: every number on them is a value of a
file in benchmarks/results/, every page states date, commit, command, machine and threads, and
every results folder says what it holds."""
from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("results_pages", ROOT / "docs/_gen/results.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _generator()


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("results")
    return {p.stem: p.read_text(encoding="utf-8") for p in gen.write(out)}


def _source_numbers(folder: Path) -> set[str]:
    """Every number of the folder's JSON files, as the generator formats it."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                found.update(gen.numbers_in(str(key)))
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            found.update(gen.numbers_in(value))
        elif isinstance(value, bool) or value is None:
            pass
        else:
            found.add(gen.fmt(value))

    for path in folder.glob("*.json"):
        if path.name != "meta.json":
            walk(json.loads(path.read_text(encoding="utf-8")))
    return found


def _checked_text(page: str) -> str:
    """The page less what is not a measurement: its title, the date and commit lines (from
    git), code spans (file names, commands: checked below) and images."""
    lines = page.splitlines()[1:]
    lines = [ln for ln in lines if not ln.startswith(("- date:", "- commit:", "!["))]
    return re.sub(r"`[^`]*`", "", "\n".join(lines))


def test_every_number_on_a_results_page_comes_from_a_committed_json(pages) -> None:
    folders = {json.loads((f / "meta.json").read_text())["page"]: f for f in gen.folders()}
    assert set(pages) == set(folders)
    for name, text in pages.items():
        allowed = _source_numbers(folders[name])
        stray = [n for n in gen.numbers_in(_checked_text(text)) if n not in allowed]
        assert not stray, f"{name}.md: numbers not in the folder's JSON: {stray[:10]}"


def test_a_number_not_in_the_json_is_caught(pages) -> None:
    name, text = next(iter(pages.items()))
    folder = next(f for f in gen.folders()
                  if json.loads((f / "meta.json").read_text())["page"] == name)
    forged = _checked_text(text + "\n| forged | 123456.789 |\n")
    assert "123456.789" in gen.numbers_in(forged)
    assert "123456.789" not in _source_numbers(folder)


def test_every_page_states_date_commit_command_machine_threads(pages) -> None:
    for name, text in pages.items():
        sections = re.split(r"^## ", text, flags=re.M)[1:]
        measured = [s for s in sections if not s.startswith("`spec.json`")]
        assert measured, f"{name}.md has no measurement"
        for section in measured:
            for field in gen.FIELDS:
                match = re.search(rf"^- {field}: (.+)$", section, flags=re.M)
                assert match, f"{name}.md, {section.splitlines()[0]}: no {field}"
                assert "not recorded" not in match.group(1), (name, field)
            date = re.search(r"^- date: (.+)$", section, flags=re.M).group(1)
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", date), (name, date)


def _prose(text: str) -> str:
    """Text less code spans and the names of the paper's figures and tables."""
    return re.sub(r"`[^`]*`|(?:Fig\.|Table) \d+", "", text)


def test_the_about_texts_hold_no_figures() -> None:
    for folder in gen.folders():
        about = json.loads((folder / "meta.json").read_text())["about"]
        assert not gen.numbers_in(_prose(about)), folder.name


def test_the_recorded_commands_parse_and_match_the_json() -> None:
    from nasframe.cli import build_parser

    parser = build_parser()
    checked = 0
    for folder in gen.folders():
        entries = json.loads((folder / "meta.json").read_text()).get("files", {})
        for path in sorted(folder.glob("*.json")):
            if path.name in ("meta.json", "spec.json"):  # spec.json: the comparison's rows
                continue
            data = json.loads(path.read_text())
            command = gen.header(path, data, entries.get(path.name, {}))["command"]
            words = shlex.split(command)
            if words[0] != "nasframe":
                assert (ROOT / words[1]).is_file(), command  # a script committed beside it
                continue
            args = parser.parse_args(words[1:])
            meta = data.get("meta", data)
            if args.command == "compare":  # threads per cell: the machine's, shared out
                assert args.jobs == data["jobs"], (path, command)
                checked += 1
                continue
            assert args.threads == meta["threads"], (path, command)
            for key in ("d", "depths", "batch", "repeats", "vocab", "tokens", "preset"):
                given = getattr(args, key, None)
                if given is not None and f"--{key}" in words and key in meta:
                    want = meta[key]
                    assert (list(given) if isinstance(given, (list, tuple)) else given) == want, \
                        (path, key, given, want)
            checked += 1
    assert checked > 40


def test_every_results_folder_has_a_readme_and_no_loose_files() -> None:
    loose = [p.name for p in RESULTS.iterdir() if p.is_file()]
    assert loose == [], loose
    for folder in (p for p in RESULTS.iterdir() if p.is_dir()):
        assert (folder / "README.md").is_file(), folder.name
        assert (folder / "meta.json").is_file(), folder.name
        readme = (folder / "README.md").read_text(encoding="utf-8")
        for path in folder.glob("*.json"):
            if path.name != "meta.json":
                assert path.name in readme or path.stem in readme, (folder.name, path.name)


def test_the_results_index_links_every_generated_page(pages) -> None:
    index = (ROOT / "docs/results/index.md").read_text(encoding="utf-8")
    links = set(re.findall(r"\]\(([\w.-]+)\.md\)", index))
    assert links == set(pages)
    assert not gen.numbers_in(_prose(index))


def test_history_is_one_page_and_the_old_file_is_gone() -> None:
    assert not (RESULTS / "HISTORY.md").exists()
    history = (ROOT / "docs/history.md").read_text(encoding="utf-8")
    # the lab notebook's phrases live here and nowhere else (spelt apart so that git grep
    # finds them only on the history page)
    assert "Read it " "honestly" in history and "the run " "before" in history


def test_compare_md_names_the_test_sentences_scored_not_the_setting() -> None:
    from nasframe.compare.runner import _scored_sentences

    records = [{"test_sentences": 150, "test_of": 150}, {"test_sentences": 150, "test_of": 150}]
    assert _scored_sentences(records, 300) == "all 150 test sentences"
    assert _scored_sentences([{"test_sentences": 300, "test_of": 2000}], 300) == \
        "the first 300 of 2,000 test sentences"
    assert _scored_sentences([], 300) == "300 test sentences"
    assert _scored_sentences([], None) == "all test sentences"


def test_compare_config_names_a_packaged_table(tmp_path, monkeypatch) -> None:
    from nasframe.commands.compare import packaged_config
    from nasframe.compare.spec import load_spec, miniature

    monkeypatch.chdir(tmp_path)  # no benchmarks/ here: the package's own files
    for name, rows in (("table1", 8), ("table2.toml", 4), ("benchmarks/table5.toml", 4)):
        path = packaged_config(Path(name))
        assert path.is_file() and path.parent.name == "benchmarks", path
        spec = miniature(load_spec(path))
        assert len(spec.rows) == rows and spec.settings.quick
    mine = tmp_path / "table1.toml"
    mine.write_text('[[rows]]\nname = "T"\narchitecture = "transformer"\n')
    assert packaged_config(Path("table1.toml")) == Path("table1.toml")  # a file given wins
    assert packaged_config(Path("nope")) == Path("nope")  # load_spec reports it
