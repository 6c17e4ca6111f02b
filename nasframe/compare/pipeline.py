"""The quickstart job (``nasframe quickstart``, ``make demo``): a two-row comparison at equal
size, small enough for a CPU.

1. the joint sentencepiece vocabulary of the embedded corpus (trained once, then cached);
2. row ``derived``: a DARTSformer search (``darts-reversible``, ``tiny`` preset) on the
   training split, its derived architecture sized (blocks, d) to the Transformer's parameter
   count, re-trained with ordinary backprop, the test split translated with beam search and
   scored (BLEU, chrF);
3. row ``transformer``: the fixed Transformer baseline, re-trained and scored the same way
   with the same budget;
4. a table of both, ``results.json`` and the comparison's own files (``compare.json``,
   ``compare.md``) in the run directory.

It is ``nasframe compare`` with two rows (``nasframe.compare``). Phases get shares of one
wall-clock budget, so the job fits the machine: the search runs as many updates as its share
allows (at most the preset's), each re-training runs for the same minutes. Steps actually done
are recorded. At this size the scores are low; the job shows the method end to end, not the
paper's numbers.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from nasframe.base.files import atomic_write_bytes
from nasframe.compare import CompareSettings, CompareSpec, Row, compare
from nasframe.compare.report import describe_architecture

__all__ = ["QuickstartOptions", "describe_architecture", "run_quickstart"]

#: Shares of the budget: search, each of the two re-trainings. The rest covers the vocabulary,
#: data preparation and translating the test split twice.
SEARCH_SHARE, TRAIN_SHARE = 0.25, 0.27


@dataclass
class QuickstartOptions:
    """What the quickstart runs; the defaults are ``make demo``."""

    out: Path = Path("runs/quickstart")
    budget_minutes: float = 10.0
    data: str = "lohelp"
    vocab_size: int = 4000
    space: str = "dartsformer"
    strategy: str = "darts-reversible"
    search_preset: str = "tiny"
    search_steps: int | None = None   # None: what the budget allows, at most the preset's
    train_preset: str = "tiny"
    train_minutes: float | None = None  # None: a share of the budget
    train_steps: int | None = None    # optional cap on re-training updates
    baseline: str = "transformer"
    test_sentences: int | None = None  # None: the whole test split
    beam: int = 5
    seed: int = 1
    progress: bool = True


@dataclass
class ModelRow:
    """One line of the results table."""

    name: str
    architecture: str
    parameters: int
    bleu: float
    chrf: float
    search_seconds: float | None
    train_seconds: float
    train_steps: int
    translate_seconds: float
    run_dir: str
    extra: dict[str, Any] = field(default_factory=dict)


def quickstart_spec(options: QuickstartOptions) -> CompareSpec:
    """The two rows and the shared budgets of the quickstart, as a comparison."""
    budget = options.budget_minutes
    settings = CompareSettings(
        data=options.data, seeds=1, first_seed=options.seed,
        search_preset=options.search_preset, search_steps=options.search_steps,
        search_minutes=None if options.search_steps else SEARCH_SHARE * budget,
        train_preset=options.train_preset, train_steps=options.train_steps,
        train_minutes=options.train_minutes or TRAIN_SHARE * budget,
        vocab_size=options.vocab_size, test_sentences=options.test_sentences,
        beam=options.beam)
    rows = [Row(name="derived", strategy=options.strategy, space=options.space),
            Row(name=options.baseline, architecture=options.baseline)]
    return CompareSpec(settings=settings, rows=rows)


def results_table(rows: list[ModelRow]) -> Table:
    first = rows[0].extra
    which = f"all {first['of']:,}" if first["sentences"] == first["of"] else \
        f"the first {first['sentences']:,} of {first['of']:,}"
    table = Table(title="quickstart: searched architecture vs Transformer, equal size, same budget",
                  caption=f"BLEU and chrF (sacrebleu) on {which} test sentences, beam search")
    table.add_column("model", overflow="fold")
    table.add_column("architecture", overflow="fold")
    for col in ("params", "BLEU", "chrF", "search", "train"):
        table.add_column(col, overflow="fold")
    for r in rows:
        search = "-" if r.search_seconds is None else f"{r.search_seconds / 60:.1f} min"
        layers = r.architecture.replace("  ", "\n").replace(" ; ", "\n")  # a layer a line
        size = f"{r.parameters / 1e6:.2f}M\nd={r.extra['d_model']}, blocks={r.extra['blocks']}"
        table.add_row(r.name, layers, size,
                      f"{r.bleu:.2f}", f"{r.chrf:.2f}", search,
                      f"{r.train_seconds / 60:.1f} min\n{r.train_steps:,} steps")
    return table


def run_quickstart(options: QuickstartOptions | None = None,
                   console: Console | None = None) -> dict[str, Any]:
    """Run the whole job; returns (and writes to ``<out>/results.json``) the results."""
    options = options or QuickstartOptions()
    options = replace(options, out=fresh_directory(options.out))
    console = console or Console(stderr=True)
    started = time.perf_counter()
    console.rule("nasframe quickstart")
    console.print(f"budget {options.budget_minutes:g} min on {torch.get_num_threads()} CPU "
                  f"thread(s); run directory {options.out}")
    outcome = compare(quickstart_spec(options), options.out, progress=options.progress,
                      console=console)
    rows = [_model_row(r) for r in outcome.records]
    derived = outcome.records[0]
    arch_file = Path(derived["run_dir"]) / "arch_derived.json"
    atomic_write_bytes(arch_file.read_bytes(), options.out / "arch_derived.json")
    total = time.perf_counter() - started
    result = {"run_dir": str(options.out.resolve()),
              "options": {k: str(v) if isinstance(v, Path) else v
                          for k, v in asdict(options).items()},
              "search_steps": derived["search_updates"], "total_seconds": round(total, 1),
              "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "params_target": derived["params_target"],
              "models": [asdict(r) for r in rows]}
    (options.out / "results.json").write_text(json.dumps(result, indent=2) + "\n",
                                              encoding="utf-8")
    console.print(results_table(rows))
    console.print(f"search: {derived['search_updates']:,} updates; whole job "
                  f"{total / 60:.1f} min")
    console.print(f"run directory: [bold]{options.out.resolve()}[/]  (results.json, "
                  f"compare.md, derived/, {options.baseline}/)")
    return result


def _model_row(r: dict[str, Any]) -> ModelRow:
    searched = r["strategy"] != "fixed"
    return ModelRow(r["name"], r["architecture"], r["params"], r["bleu"], r["chrf"],
                    r["search_seconds"] if searched else None, r["train_seconds"],
                    r["train_updates"], r["translate_seconds"], str(Path(r["run_dir"]) / "train"),
                    {"sentences": r["test_sentences"], "of": r["test_of"],
                     "valid_loss": r["valid_loss"], "d_model": r["d_model"],
                     "blocks": r["blocks"], "search_steps": r["search_updates"]})


def fresh_directory(path: Path) -> Path:
    """``path`` if it is new or empty, else ``path-2``, ``path-3``, ...: a second demo run
    never mixes with (or destroys) the first."""
    candidate, n = path, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate
