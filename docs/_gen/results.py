"""The results pages, generated from the committed measurements in ``benchmarks/results/``.

One page per folder there, ``results/<page>.md``: the folder's title and what it holds (from
its ``meta.json``), then for every JSON file its date, commit, command, machine and threads
and its rows as tables. Every number on a page is a value of a committed JSON file, formatted
by :func:`fmt` (``tests/test_results_pages.py`` checks it); nothing is copied by hand.

Where each header field comes from:

- date and commit: ``meta.json``'s ``files`` entry (the commit that committed the file
  before it moved into a dated folder), else the JSON's own ``date`` / ``code commit``, else
  ``git log -1`` of the file;
- command: ``meta.json``'s ``files`` entry, else the JSON's ``command``;
- machine and threads: the JSON (``meta.device``, ``meta.torch``, ``meta.threads``; a
  comparison's ``device``, ``cpus``, ``threads`` and ``jobs``).

Run by mkdocs-gen-files at build time (``mkdocs.yml``), or standalone into a folder:
``python docs/_gen/results.py OUTDIR``.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
#: The header fields every file section states (the test checks each page has them).
FIELDS = ("date", "commit", "command", "machine", "threads")
#: Keys of a benchmark's ``meta`` that the header or the command already state.
_NOT_OPTIONS = {"threads", "OMP_NUM_THREADS", "torch", "device", "out", "quick", "date",
                "code commit", "command"}


def fmt(value: Any) -> str:
    """A JSON value as the pages print it: integers (and integral floats) whole, floats
    from 1000 up rounded to a whole number, smaller ones to four significant digits."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        if abs(value) >= 1000:
            return f"{value:.0f}"
        return f"{value:.4g}"
    if value is None:
        return "-"
    if isinstance(value, list):
        return " ".join(fmt(v) for v in value)
    return str(value)


def _cell(value: Any) -> str:
    return fmt(value).replace("|", "\\|").replace("\n", " ")


def _mean_std(stat: Any) -> str:
    if not isinstance(stat, dict) or "mean" not in stat:
        return _cell(stat)
    return f"{fmt(stat['mean'])} ± {fmt(stat['std'])}"


def table(rows: list[dict[str, Any]], cell: Callable[[Any], str] = _cell,
          columns: list[str] | None = None) -> str:
    """Rows of flat values as a Markdown table (nested values are left out)."""
    if columns is None:
        columns = []
        for row in rows:
            for key, value in row.items():
                if key not in columns and not isinstance(value, dict):
                    columns.append(key)
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _git_last(path: Path) -> dict[str, str]:
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%h %ad", "--date=short", "--",
                              str(path.relative_to(ROOT))], cwd=ROOT, capture_output=True,
                             text=True, check=False, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    return {"commit": out[0], "date": out[1]} if len(out) == 2 else {}


def header(path: Path, data: dict[str, Any], entry: dict[str, Any]) -> dict[str, str]:
    """date, commit, command, machine and threads of one results file."""
    meta = data.get("meta", data)
    recorded = {"date": entry.get("date") or meta.get("date"),
                "commit": entry.get("commit") or meta.get("code commit")}
    if not (recorded["date"] and recorded["commit"]):
        found = _git_last(path)
        recorded = {k: recorded[k] or found.get(k, "not committed yet") for k in recorded}
    command = entry.get("command") or meta.get("command") or "not recorded"
    if "rows" in data and "summary" in data:  # a comparison
        machine = f"{data.get('device')}, {data.get('cpus')} cores"
        threads = (f"{data.get('threads')} per cell, {data.get('jobs')} cells at a time"
                   if (data.get("jobs") or 1) > 1 else f"{data.get('threads')}")
    else:
        machine = str(meta.get("device", "not recorded"))
        if meta.get("torch"):
            machine += f", torch {meta['torch']}"
        threads = fmt(meta.get("threads"))
        if meta.get("OMP_NUM_THREADS"):
            threads += f" (OMP_NUM_THREADS={meta['OMP_NUM_THREADS']})"
    return {"date": str(recorded["date"]), "commit": str(recorded["commit"]),
            "command": command, "machine": machine, "threads": threads}


def _options(meta: dict[str, Any]) -> str:
    parts = []
    for key, value in meta.items():
        if key in _NOT_OPTIONS or isinstance(value, dict) or value in (None, [], ""):
            continue
        parts.append(f"{key}: {_cell(value)}")
    return "; ".join(parts)


def _bench_body(data: dict[str, Any]) -> list[str]:
    out = []
    options = _options(data.get("meta", {}))
    if options:
        out.append(f"Recorded settings: {options}.")
    rows = data.get("rows") or []
    if rows:
        out.append(table(rows))
    return out


_SUMMARY = {"row": "name", "strategy": "strategy", "n": "n", "params": "params",
            "search updates": "search_updates", "search s": "search_seconds",
            "search peak bytes": "search_peak_bytes", "train updates": "train_updates",
            "train s": "train_seconds", "valid loss": "valid_loss", "BLEU": "bleu",
            "chrF": "chrf", "alpha entropy / uniform": "alpha_entropy_ratio"}


def _compare_body(data: dict[str, Any]) -> list[str]:
    s = data.get("settings", {})
    records = data.get("rows", [])
    scored = sorted({(r.get("test_sentences"), r.get("test_of")) for r in records})
    sentences = " / ".join(f"{fmt(a)} of {fmt(b)}" for a, b in scored)
    out = [f"Settings: corpus {s.get('data')}; seeds {fmt(s.get('seeds'))} from "
           f"{fmt(s.get('first_seed'))}; search {fmt(s.get('search_steps'))} updates at "
           f"`{s.get('search_preset')}`; re-training {fmt(s.get('train_steps'))} updates at "
           f"`{s.get('train_preset')}`; every model at {fmt(data.get('params_target'))} "
           f"parameters (matched to {data.get('params_matched_to')}, tolerance "
           f"{fmt(s.get('params_tolerance'))}); vocabulary {fmt(s.get('vocab_size'))}; "
           f"BLEU/chrF on {sentences} test sentences, beam {fmt(s.get('beam'))}; "
           f"wall time {fmt(data.get('seconds_total'))} s.",
           "Mean ± sample std over seeds (search peak: "
           + ", ".join(sorted({str(r["search_peak_kind"]) for r in records
                               if r.get("search_peak_kind")})) + "):"]
    rows = [{col: r.get(key) for col, key in _SUMMARY.items()} for r in data.get("summary", [])]
    out.append(table(rows, cell=_mean_std, columns=list(_SUMMARY)))
    contrasts = [{"row": c.get("row"), "reference": c.get("reference"),
                  "metric": c.get("metric"), "seeds": c.get("seeds"),
                  "difference": c.get("diff"),
                  "above in every seed": c.get("above_in_every_seed")}
                 for c in data.get("contrasts", [])]
    if contrasts:
        out.append("Differences, row - reference, paired by seed:")
        out.append(table(contrasts, cell=_mean_std, columns=list(contrasts[0])))
    per_cell = [{"row": r.get("name"), "seed": r.get("seed"), "params": r.get("params"),
                 "d": r.get("d_model"), "blocks": r.get("blocks"),
                 "valid loss": r.get("valid_loss"), "BLEU": r.get("bleu"),
                 "chrF": r.get("chrf"), "search peak bytes": r.get("search_peak_bytes"),
                 "architecture": r.get("architecture")} for r in records]
    out.append("Every cell:")
    out.append(table(per_cell))
    return out


def _spec_body(data: dict[str, Any]) -> list[str]:
    rows = [{"row": r.get("name"), "strategy": r.get("strategy"),
             "architecture": r.get("architecture"), "space": r.get("space"),
             "space options": ", ".join(f"{k}={fmt(v)}" for k, v in
                                        (r.get("space_options") or {}).items())}
            for r in data.get("rows", [])]
    return ["The comparison as run (rows of its TOML):", table(rows)]


def page(folder: Path) -> tuple[str, str, dict[str, bytes]]:
    """(page name, Markdown, images to write beside it) of one results folder."""
    info = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    name = info["page"]
    entries = info.get("files", {})
    rel = folder.relative_to(ROOT).as_posix()
    lines = [f"# {info['title']}", "", info["about"], "",
             f"Folder: `{rel}/` (its `README.md` says how each file was made). Every number "
             "below is read from the JSON files there when the site is built.", ""]
    images: dict[str, bytes] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".png":
            image = f"{name}-{path.name}"
            images[image] = path.read_bytes()
            lines += [f"![`{path.name}`]({image})", ""]
    for path in sorted(folder.glob("*.json")):
        if path.name == "meta.json":
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        head = header(path, data, entries.get(path.name, {}))
        lines += [f"## `{path.name}`", ""]
        if path.name == "spec.json":
            lines += [f"- {f}: {head[f]}" for f in ("date", "commit")]
            lines += [""] + _spec_body(data) + [""]
            continue
        for field in FIELDS:
            value = f"`{head[field]}`" if field == "command" else head[field]
            lines.append(f"- {field}: {value}")
        lines.append("")
        body = _compare_body(data) if "summary" in data else _bench_body(data)
        for block in body:
            lines += [block, ""]
    others = [p.name for p in sorted(folder.iterdir())
              if p.suffix not in (".json", ".png") and p.name != "meta.json"]
    if others:
        lines += ["Also in the folder: " + ", ".join(f"`{o}`" for o in others) + ".", ""]
    return name, "\n".join(lines).rstrip() + "\n", images


def folders() -> list[Path]:
    """The results folders that have a ``meta.json``, in order."""
    return sorted(p for p in RESULTS.iterdir() if (p / "meta.json").is_file())


def pages() -> Iterator[tuple[str, str, dict[str, bytes]]]:
    for folder in folders():
        yield page(folder)


def write(out: Path) -> list[Path]:
    """Write every page (and its images) into ``out``; return the pages."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text, images in pages():
        (out / f"{name}.md").write_text(text, encoding="utf-8")
        for image, data in images.items():
            (out / image).write_bytes(data)
        written.append(out / f"{name}.md")
    return written


def _gen_files() -> None:
    import mkdocs_gen_files

    for name, text, images in pages():
        with mkdocs_gen_files.open(f"results/{name}.md", "w") as f:
            f.write(text)
        for image, data in images.items():
            with mkdocs_gen_files.open(f"results/{image}", "wb") as f:
                f.write(data)


_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])")


def numbers_in(text: str) -> list[str]:
    """The number tokens of a text (not inside words such as ``float64`` or ``q1``)."""
    return _NUMBER.findall(text)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python docs/_gen/results.py OUTDIR")
    for written in write(Path(sys.argv[1])):
        print(written)
elif __name__ == "<run_path>":  # mkdocs-gen-files runs the script with runpy.run_path
    _gen_files()
