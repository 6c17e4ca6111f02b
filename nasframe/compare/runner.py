"""``nasframe.compare.compare``: every row of a comparison at every seed, same data, same
budgets, same parameter target; ``compare.json``, ``compare.md`` and ``compare.png``.

Output folder::

    spec.json                  the comparison as run (a resumed run must match it)
    <row>/seed<k>/search/      the search run (searched rows)
    <row>/seed<k>/train/       the re-training run (eval_test.json inside)
    <row>/seed<k>/result.json  the cell's record, written atomically when the cell ends
    compare.json  compare.md  compare.png

Cells run seed-major (every row at the first seed, then the next seed), so a comparison cut
short still has whole seeds.
"""
from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from nasframe.base.errors import CheckpointError, ConfigError, RunDirError
from nasframe.base.files import atomic_write_text, read_json, refuse_links
from nasframe.compare._deps import LOCK_FILE, RunLock, TrainConfig
from nasframe.compare.cells import Shared, load_inputs, run_cell
from nasframe.compare.parallel import run_parallel, worker_threads
from nasframe.compare.report import contrasts, contrasts_markdown, markdown, summarise
from nasframe.compare.spec import (
    QUICK_MODEL,
    CompareSpec,
    load_spec,
    miniature,
    row_space,
    spec_from_names,
)
from nasframe.dsl.architecture import Architecture
from nasframe.engine.supernet import ModelConfig, build_model, count_parameters

__all__ = ["CompareResult", "compare", "target_parameters"]

SPEC, JSON, MD, PNG = "spec.json", "compare.json", "compare.md", "compare.png"


@dataclass
class CompareResult:
    """What ``compare`` returns: the output folder, per-cell records, the per-row summary and
    the files written."""

    out: Path
    records: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)
    png_skipped: str | None = None


def compare(spec: CompareSpec | str | Path | None = None, out: str | Path = "runs/compare", *,
            strategies: list[str] | None = None, baselines: list[str] | None = None,
            resume: bool = False, quick: bool = False, progress: bool = True,
            console: Console | None = None, jobs: int = 1, job_threads: int | None = None,
            **settings: Any) -> CompareResult:
    """Run a comparison and write its three files into ``out``.

    ``spec``: a ``CompareSpec`` or a TOML file; or None with ``strategies`` / ``baselines``
    (names). ``settings`` override the spec's shared settings (``seeds=3``,
    ``params="1.1M"``, ``train_steps=...``). ``resume`` finishes an interrupted comparison in
    ``out``; ``quick`` runs every row in miniature. ``jobs`` runs that many cells at once,
    each in its own process with ``job_threads`` torch threads (default: this process's
    threads shared out); the results do not depend on it.
    """
    threads = worker_threads(jobs, job_threads) if jobs != 1 else torch.get_num_threads()
    if isinstance(spec, CompareSpec):
        given = {k: v for k, v in settings.items() if v is not None}
        spec = spec.model_copy(update={"settings": spec.settings.model_copy(update=given)})
    elif spec is not None:
        spec = load_spec(spec, **settings)
    else:
        spec = spec_from_names(strategies or [], baselines or [], **settings)
    if quick:
        spec = miniature(spec)
    out = Path(out)
    console = console or Console(stderr=True)
    _claim(out, spec, resume, write=False)  # refused before anything is touched
    with RunLock.acquire(out, "run a comparison in"):  # one writer at a time
        _claim(out, spec, resume)
        return _run(spec, out, resume, progress, console, jobs, threads)


def _run(spec: CompareSpec, out: Path, resume: bool, progress: bool, console: Console,
         jobs: int, threads: int) -> CompareResult:
    """Every cell of the claimed comparison in ``out``, then its tables."""
    before = _seconds_so_far(out) if resume else 0.0
    s = spec.settings
    with console.status("corpus and joint sentencepiece vocabulary (trained once, cached)"):
        corpora, vocab = load_inputs(s)
    base = base_model(spec)
    target, reference = target_parameters(spec, base, len(vocab))
    shared = Shared(s, out, corpora, vocab, base, target, reference,
                    console, progress, resume)
    cells = [(row, seed) for seed in s.seed_list() for row in spec.rows]
    source = f"matched to {reference}" if reference else "target"
    console.print(f"compare: {len(spec.rows)} rows x {s.seeds} seed(s) = {len(cells)} cells; "
                  f"{target:,} parameters each ({source}); {torch.get_num_threads()} thread(s); "
                  f"{out}")
    if jobs > 1:
        console.print(f"compare: {jobs} cells at a time, {threads} thread(s) each; each cell's "
                      "log is <row>/seed<k>/console.log")
    records: list[dict[str, Any]] = []
    started = time.perf_counter()

    def write(record: dict[str, Any]) -> None:
        records.append(record)
        records.sort(key=lambda r: order.index((r["name"], r["seed"])))
        _write_tables(out, spec, records, target, reference, time.perf_counter() - started,
                      jobs, threads, before)

    order = [(row.name, seed) for row, seed in cells]
    with _CellBar(console, len(cells), progress) as bar:
        if jobs > 1:
            for record in run_parallel(shared, spec, cells, jobs, threads, bar.start, bar.done):
                write(record)
        else:
            for i, (row, seed) in enumerate(cells, 1):
                label = f"{row.name} · seed {seed}"
                bar.start(i, label)
                record = run_cell(shared, row, seed,
                                  on_phase=lambda p, lb=label: bar.phase(lb, p))
                bar.done(i, record)
                write(record)
    result = _write_tables(out, spec, records, target, reference,
                           time.perf_counter() - started, jobs, threads, before)
    result.png_skipped = _try_png(result)
    return result


def base_model(spec: CompareSpec) -> ModelConfig:
    """The re-trained model's sizes before matching: the train preset's (quick: tinier)."""
    model = TrainConfig.preset_config(spec.settings.train_preset).model
    if spec.settings.quick:
        model = model.model_copy(update=QUICK_MODEL)
    return model


def target_parameters(spec: CompareSpec, base: ModelConfig, vocab_size: int
                      ) -> tuple[int, str | None]:
    """(target, reference row): ``params``, else the first baseline at the base size, else
    the Transformer at the base size."""
    if spec.settings.params is not None:
        return spec.settings.params, None
    row = spec.baseline()
    if row is not None:
        space = row_space(row)
        arch = Architecture.load(row.architecture) if space is None else \
            Architecture(space=space, choices={})
        name: str | None = row.name
    else:
        from nasframe.spaces import get as builtin_space

        arch, name = Architecture(space=builtin_space("transformer"), choices={}), None
    return count_parameters(build_model(arch, base, vocab_size)), name


def _claim(out: Path, spec: CompareSpec, resume: bool, write: bool = True) -> None:
    """Record the spec (``write``; else only check). A fresh comparison takes a new or empty
    folder; a resumed one must be the same comparison, in a folder without links (it may come
    from someone else)."""
    path = out / SPEC
    text = spec.model_dump_json(indent=2)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: exists and is not a folder; choose a new --out")
    if out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()):
        if not path.exists() and not path.is_symlink():
            raise RunDirError(f"{out}: not empty and not a comparison (no {SPEC}); choose a "
                              "new or empty folder (nothing there was changed)")
        if not resume:
            raise CheckpointError(f"{out} already holds a comparison; pass --resume to finish "
                                  "it or choose another --out")
        refuse_links(out, "comparison")
        if read_json(path, what="comparison spec") != json.loads(text):
            raise CheckpointError(f"{out} holds a comparison with other rows or settings "
                                  f"(see {path}); resume it with the same ones")
        return
    if write:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(text + "\n", path)


def _write_tables(out: Path, spec: CompareSpec, records: list[dict[str, Any]], target: int,
                  reference: str | None, seconds: float, jobs: int = 1,
                  threads: int | None = None, before: float = 0.0) -> CompareResult:
    order = [r.name for r in spec.rows]
    summary = summarise(records, order)
    paired = contrasts(records, order)
    s = spec.settings
    meta = {"settings": s.model_dump(mode="json"), "params_target": target,
            "params_matched_to": reference,
            "threads": threads if threads is not None else torch.get_num_threads(), "jobs": jobs,
            "cpus": os.cpu_count(), "device": _device_name(s.device),
            "search_peak_note": "search_peak_bytes: CUDA max_memory_allocated above the start "
            "on GPU; on CPU the peak resident set (VmHWM) above the resident set at the start "
            "(see search_peak_kind)", "seconds": round(seconds, 1),
            "seconds_total": round(before + seconds, 1),
            "seconds_note": "seconds: this session; seconds_total: every session of this "
            "comparison (an interrupted one counted to its last finished cell)"}
    atomic_write_text(json.dumps({**meta, "rows": records, "summary": summary,
                                  "contrasts": paired}, indent=2) + "\n",
                      out / JSON)
    header = (f"Compare: {len(order)} rows, seeds {s.seed_list()}, {s.data}; every model "
              f"re-trained at {target / 1e6:.3f}M parameters"
              f"{' (matched to ' + reference + ')' if reference else ''} for "
              f"{_budget(s.train_steps, s.train_minutes)}; search "
              f"{_budget(s.search_steps, s.search_minutes)} ({s.search_preset}); BLEU/chrF on "
              f"{_scored_sentences(records, s.test_sentences)}, beam {s.beam}; "
              f"{meta['threads']} thread(s)"
              f"{f' per cell, {jobs} cells at a time' if jobs > 1 else ''}, {meta['device']}. "
              "Mean ± sample std over n seeds."
              + (" --quick: a smoke test; sizes as near the target as miniature models allow "
                 "(params_off in compare.json)." if s.quick else ""))
    atomic_write_text(markdown(summary, header) + contrasts_markdown(paired), out / MD)
    return CompareResult(out, records, summary, {"json": out / JSON, "md": out / MD})


def _scored_sentences(records: list[dict[str, Any]], setting: int | None) -> str:
    """How many test sentences the records were scored on, from the records themselves
    (``test_sentences`` of ``test_of``): the setting asks for the first N, but a hold-out
    with fewer sentences scores all it has. Without records, the setting."""
    counts = sorted({(r["test_sentences"], r["test_of"]) for r in records
                     if isinstance(r.get("test_sentences"), int)
                     and isinstance(r.get("test_of"), int)})
    if not counts:
        return f"{setting or 'all'} test sentences"

    def one(scored: int, of: int) -> str:
        return f"all {of:,}" if scored == of else f"the first {scored:,} of {of:,}"

    return " / ".join(one(*c) for c in counts) + " test sentences"


def _seconds_so_far(out: Path) -> float:
    """Wall time of the earlier sessions of a resumed comparison (0 if none was recorded)."""
    try:
        data = read_json(out / JSON, what="comparison record")
        return float(data.get("seconds_total", data.get("seconds", 0.0)))
    except (RunDirError, ValueError, TypeError, AttributeError):
        return 0.0


def _budget(steps: int | None, minutes: float | None) -> str:
    parts = ([f"{steps:,} updates"] if steps else []) + ([f"{minutes:g} min"] if minutes else [])
    return " / ".join(parts) or "the preset's updates"


def _device_name(device: str) -> str:
    if device in ("auto", "cuda") or device.startswith("cuda"):
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    return "CPU"


def _try_png(result: CompareResult) -> str | None:
    from nasframe.compare.plots import plot_compare

    try:
        result.files["png"] = plot_compare(result.summary, result.out / PNG)
    except ConfigError as err:  # matplotlib missing: the JSON and table are the result
        return str(err)
    return None


# ----------------------------------------------------------------------------- progress

def _nesting_supported() -> bool:
    """Whether this rich shows a live bar inside another (rich >= 14); if not, the cells are
    reported as lines and only the inner bars are live."""
    quiet = Console(file=io.StringIO(), force_terminal=True)
    try:
        with Progress(console=quiet), Progress(console=quiet):
            return True
    except Exception:  # rich.errors.LiveError on older rich
        return False


class _CellBar:
    """Cells done out of all, the running cell and its phase; a line per finished cell."""

    def __init__(self, console: Console, total: int, enabled: bool) -> None:
        self.console, self.total = console, total
        live = enabled and console.is_terminal and _nesting_supported()
        self.progress = Progress(TextColumn("[bold]cells"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.description}"), TimeElapsedColumn(),
                                 console=console, disable=not live)
        self.task = self.progress.add_task("", total=total)
        self.started = time.perf_counter()
        self.finished = 0

    def __enter__(self) -> _CellBar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, i: int, label: str) -> None:
        self.console.rule(f"cell {i}/{self.total}: {label}")
        self.progress.update(self.task, description=label)

    def phase(self, label: str, phase: str) -> None:
        self.progress.update(self.task, description=f"{label}: {phase}")

    def done(self, i: int, r: dict[str, Any]) -> None:
        self.finished += 1  # cells may finish out of order (--jobs)
        n = self.finished
        self.progress.update(self.task, completed=n)
        elapsed = time.perf_counter() - self.started
        valid = "-" if r["valid_loss"] is None else f"{r['valid_loss']:.3f}"
        self.console.print(
            f"[{n}/{self.total}] {r['name']} seed {r['seed']}: {r['params'] / 1e6:.3f}M params, "
            f"valid loss {valid}, BLEU {r['bleu']:.2f}, chrF {r['chrf']:.2f}; cell "
            f"{r['cell_seconds']:.0f} s, all {elapsed / 60:.1f} min, about "
            f"{elapsed / n * (self.total - n) / 60:.1f} min left")
