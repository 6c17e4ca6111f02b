"""The README as a newcomer meets it: short, opening with the set-up, every Python block runs as
written (in order, in a fresh folder), no lab-notebook phrasing (nor on the guides), and the
headline results tables hold the numbers of the committed JSON they name. Its ``nasframe ...``
lines are parsed with the real parser by tests/test_docs.py."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```python\n(.*?)^```", TEXT, re.MULTILINE | re.DOTALL)
#: The pages written with the README (tests/test_docs.py runs their blocks and parses their lines).
PAGES = [ROOT / "docs" / p for p in (
    "index.md", "getting-started.md", "concepts.md", "development.md",
    "guides/declaring-a-space.md", "guides/your-own-op.md", "guides/searching.md",
    "guides/your-own-strategy.md", "guides/retraining-and-translating.md",
    "guides/comparing.md", "guides/memory-and-hidden-size.md", "guides/run-directories.md",
    "guides/scaling-out.md")]


def test_the_readme_is_short_and_opens_with_the_set_up() -> None:
    lines = TEXT.splitlines()
    assert len(lines) <= 200
    opening = "\n".join(lines[:6])
    assert "make demo" in opening and "make test" in opening


def test_the_readme_has_a_quickstart() -> None:
    assert BLOCKS and "nf.search(" in BLOCKS[0] and len(BLOCKS[0].splitlines()) <= 20


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_a_readme_block_runs_as_written(number: int, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code = compile(BLOCKS[number], f"README.md python block {number + 1}", "exec")
    exec(code, {"__name__": f"readme_block_{number + 1}"})


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_lab_notebook_phrasing(path: Path) -> None:
    if path.exists():
        text = path.read_text(encoding="utf-8")
        # spelt apart, so that git grep for them finds the history page only
        for phrase in ("previous" + " run", "the run" + " before", "Read it" + " honestly"):
            assert phrase not in text, f"{path.name}: {phrase!r}"


def _table_after(marker: str) -> list[list[str]]:
    """The rows (cells stripped) of the first Markdown table after ``marker``."""
    rest = TEXT[TEXT.index(marker):]
    rows = [line for line in rest.splitlines() if line.startswith("|")]
    start = rest.splitlines().index(rows[0])
    table = []
    for line in rest.splitlines()[start:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip("|").split("|")])
    return table[2:]  # header and rule dropped


def _source(marker: str, pattern: str) -> Path:
    paragraph = TEXT[TEXT.index(marker):].split("\n\n")[0]
    return ROOT / re.search(r"`(benchmarks/results/[^`]*" + pattern + ")`", paragraph)[1]


def _fmt(value: float, places: int | None = None) -> str:
    """Three significant figures (what the tables print), or ``places`` decimals."""
    if places is not None:
        return f"{value:.{places}f}"
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def test_the_memory_table_is_the_committed_json() -> None:
    marker = "Peak memory of one search step against hidden size d"
    data = json.loads(_source(marker, "memory_vs_hidden.json").read_text())
    table = {row[0]: row[1:] for row in _table_after(marker)}
    peaks = {(r["method"], r["d"]): r["peak MiB"] for r in data["rows"]}
    sizes = sorted({d for _, d in peaks})
    assert table["DARTS, MiB"] == [_fmt(peaks["DARTS", d]) for d in sizes]
    assert table["DARTSformer, MiB"] == [_fmt(peaks["DARTSformer", d]) for d in sizes]
    assert table["DARTS / DARTSformer"] == [
        f"{peaks['DARTS', d] / peaks['DARTSformer', d]:.1f}" for d in sizes]


def test_the_table1_table_is_the_committed_json() -> None:
    marker = "The paper's Table 1 in miniature"
    data = json.loads(_source(marker, "compare.json").read_text())
    summary = {row["name"]: row for row in data["summary"]}
    rows = _table_after(marker)
    assert [r[0] for r in rows] == list(summary)
    for name, _paper, bleu, peak in rows:
        s = summary[name]
        assert bleu == f"{s['bleu']['mean']:.2f} ± {s['bleu']['std']:.2f}", name
        mib = s.get("search_peak_bytes", {}).get("mean")
        assert peak == ("-" if mib is None else f"{mib / 2**20:.0f}"), name
