"""The quickstart job (``nasframe quickstart``, ``make demo``): the whole method, small, on a CPU.

1. the joint sentencepiece vocabulary of the embedded corpus (trained once, then cached);
2. a DARTSformer search (``darts-reversible``, ``tiny`` preset) on the training split;
3. the derived architecture re-trained with ordinary backprop, then the test split translated
   with beam search and scored (BLEU, chrF);
4. the fixed Transformer baseline re-trained with the same budget and scored the same way;
5. a table of both, and ``results.json`` in the run directory.

Phases get shares of one wall-clock budget, so the job fits the machine: the search runs as
many updates as its share allows (at most the preset's), re-training runs for minutes. Steps
actually done are recorded. At this size the scores are low (a Transformer at d = 144 trained
for minutes on two cores reaches a BLEU of a few points); the job shows the method end to end,
not the paper's numbers.
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

from nasframe.architecture import Architecture
from nasframe.config import TrainConfig
from nasframe.data import (
    DataSpec,
    ParallelCorpus,
    Vocab,
    cache_dir,
    encode_corpus,
    get_or_train_vocab,
    load_split,
)
from nasframe.data.corpus import split_search
from nasframe.decode import DecodeOptions
from nasframe.errors import SpaceError
from nasframe.evaluation import evaluate_run
from nasframe.space import SearchSpace, Stack
from nasframe.spaces import get as get_space
from nasframe.training import train

__all__ = ["QuickstartOptions", "describe_architecture", "run_quickstart"]

#: Shares of the budget: search, each of the two re-trainings. The rest covers the vocabulary,
#: data preparation and translating the test split twice.
SEARCH_SHARE, TRAIN_SHARE = 0.25, 0.27
#: Updates timed before the search's length is fixed from its share of the budget.
CALIBRATION_STEPS = 10


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


def describe_architecture(arch: Architecture) -> str:
    """A one-line summary: the ops of every layer, splits or sublayers joined by ``|``."""
    parts = []
    for part, spec in arch.space.parts():
        layers = []
        for layer in range(1, spec.layers + 1):
            ops = []
            for unit, what in spec.units():
                node = f"{part}.layer{layer}.{unit}"
                ops.append(_short(arch.choices.get(node) or getattr(what, "label", "?")))
            layers.append("|".join(ops))
        kind = "rev" if isinstance(spec, Stack) else "seq"
        parts.append(f"{part[:3]}({kind}) " + " ; ".join(layers))
    return "  ".join(parts)


def _short(label: str) -> str:
    names = {"self_attention": "attn", "cross_attention": "xattn", "dynamic_conv": "dconv",
             "identity": "id"}
    name, _, params = label.partition(":")
    kernel = params.removeprefix("kernel=") if params.startswith("kernel=") else params
    return names.get(name, name) + kernel


def _data(options: QuickstartOptions, console: Console
          ) -> tuple[ParallelCorpus, ParallelCorpus, Vocab]:
    train_corpus = load_split(options.data, "train")
    valid_corpus = load_split(options.data, "valid")
    started = time.perf_counter()
    with console.status("joint sentencepiece vocabulary (trained once, then cached)"):
        vocab = get_or_train_vocab(train_corpus, cache_dir(), options.vocab_size)
    console.print(f"vocabulary: {len(vocab):,} subwords ({time.perf_counter() - started:.0f} s)"
                  f"  {vocab.path}")
    return train_corpus, valid_corpus, vocab


def _search(options: QuickstartOptions, corpus: ParallelCorpus, vocab: Vocab,
            seconds: float, console: Console) -> tuple[Architecture, float, int]:
    """Search on the training split; returns the derived architecture, time and updates."""
    from nasframe.config import SearchConfig, apply_overrides
    from nasframe.search import SearchData, search

    cfg = SearchConfig.preset_config(options.search_preset)
    cfg = apply_overrides(cfg, {"data.vocab_size": len(vocab), "seed": options.seed,
                                "strategy": options.strategy, "space": options.space})
    prepared = time.perf_counter()
    search_train, search_valid = split_search(corpus, cfg.data.split, seed=cfg.seed)
    train_pairs, _ = encode_corpus(search_train, vocab, cfg.data.max_len)
    valid_pairs, _ = encode_corpus(search_valid, vocab, cfg.data.max_len)
    data = SearchData.from_pairs(train_pairs, valid_pairs, len(vocab), cfg,
                                 description=f"{corpus.name}: {len(train_pairs)} + "
                                 f"{len(valid_pairs)} pairs, vocab {len(vocab)}")
    out = options.out / "search"
    started = time.perf_counter()
    limit = options.search_steps or cfg.steps
    first = min(CALIBRATION_STEPS, limit)
    # The search has a step budget, not a time budget: time a few updates, then resume
    # (exactly, from the checkpoint) for as many as the search's share of the time allows.
    result = search(options.space, options.strategy, data, cfg, out=out, steps=first,
                    progress=options.progress)
    per_step = (time.perf_counter() - started) / max(first, 1)
    if options.search_steps is None:
        limit = max(first, min(limit, int(seconds / per_step)))
    if limit > first:
        result = search(options.space, options.strategy, data, cfg, out=out, steps=limit,
                        resume=True, progress=options.progress)
    arch = result.architecture
    arch.save(options.out / "arch_derived.json")
    console.print(arch.table())
    return arch, time.perf_counter() - prepared, result.steps


def _retrain(name: str, arch: Architecture, options: QuickstartOptions, minutes: float,
             corpora: tuple[ParallelCorpus, ParallelCorpus], console: Console,
             search_seconds: float | None) -> ModelRow:
    run_dir = options.out / name
    config = TrainConfig.preset_config(options.train_preset, seed=options.seed,
                                       vocab_size=options.vocab_size)
    config = TrainConfig(**{**config.model_dump(), "steps": options.train_steps,
                            "minutes": minutes})
    console.rule(f"re-train {name}")
    result = train(arch, run_dir, config, DataSpec(data=options.data), corpora=corpora,
                   progress=options.progress, console=console)
    console.print(f"{name}: {result.steps:,} updates in {result.train_seconds / 60:.1f} min, "
                  f"best validation loss {result.best_valid_loss:.3f}")
    scores = evaluate_run(run_dir, "test", DataSpec(data=options.data),
                          DecodeOptions(beam=options.beam), options.test_sentences,
                          progress=options.progress, console=console)
    console.print(f"{name}: BLEU {scores['bleu']:.2f}, chrF {scores['chrf']:.2f} on "
                  f"{scores['sentences']:,} test sentences ({scores['translate_seconds']:.0f} s)")
    return ModelRow(name, describe_architecture(arch), result.parameters, scores["bleu"],
                    scores["chrf"], search_seconds, result.train_seconds, result.steps,
                    scores["translate_seconds"], str(run_dir),
                    {"sentences": scores["sentences"], "of": scores["of"]})


def results_table(rows: list[ModelRow]) -> Table:
    first = rows[0].extra
    which = f"all {first['of']:,}" if first["sentences"] == first["of"] else \
        f"the first {first['sentences']:,} of {first['of']:,}"
    table = Table(title="quickstart: searched architecture vs Transformer, same training budget",
                  caption=f"BLEU and chrF (sacrebleu) on {which} test sentences, beam search")
    table.add_column("model", overflow="fold")
    table.add_column("architecture", overflow="fold")
    for col in ("params", "BLEU", "chrF", "search", "train"):
        table.add_column(col, overflow="fold")
    for r in rows:
        search = "-" if r.search_seconds is None else f"{r.search_seconds / 60:.1f} min"
        layers = r.architecture.replace("  ", "\n").replace(" ; ", "\n")  # a layer a line
        table.add_row(r.name, layers, f"{r.parameters / 1e6:.2f}M",
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
    budget = options.budget_minutes * 60
    console.rule("nasframe quickstart")
    console.print(f"budget {options.budget_minutes:g} min on {torch.get_num_threads()} CPU "
                  f"thread(s); run directory {options.out}")
    train_corpus, valid_corpus, vocab = _data(options, console)
    console.rule(f"search: {options.strategy} on {options.space} ({options.search_preset})")
    arch, search_seconds, search_steps = _search(options, train_corpus, vocab,
                                                 SEARCH_SHARE * budget, console)
    minutes = options.train_minutes or TRAIN_SHARE * options.budget_minutes
    corpora = (train_corpus, valid_corpus)
    rows = [_retrain("derived", arch, options, minutes, corpora, console, search_seconds)]
    baseline = Architecture(space=_baseline_space(options.baseline), choices={})
    rows.append(_retrain(options.baseline, baseline, options, minutes, corpora, console, None))
    total = time.perf_counter() - started
    result = {"run_dir": str(options.out.resolve()),
              "options": {k: str(v) if isinstance(v, Path) else v
                          for k, v in asdict(options).items()},
              "search_steps": search_steps, "total_seconds": round(total, 1),
              "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "models": [asdict(r) for r in rows]}
    (options.out / "results.json").write_text(json.dumps(result, indent=2) + "\n",
                                              encoding="utf-8")
    console.print(results_table(rows))
    console.print(f"search: {search_steps:,} updates; whole job {total / 60:.1f} min")
    console.print(f"run directory: [bold]{options.out.resolve()}[/]  (results.json, "
                  "derived/, search/, " + options.baseline + "/)")
    return result


def fresh_directory(path: Path) -> Path:
    """``path`` if it is new or empty, else ``path-2``, ``path-3``, ...: a second demo run
    never mixes with (or destroys) the first."""
    candidate, n = path, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


def _baseline_space(name: str) -> SearchSpace:
    space = get_space(name)
    if space.choice_nodes():
        raise SpaceError(f"baseline space {name!r} has choices; it must be a fixed model")
    return space
