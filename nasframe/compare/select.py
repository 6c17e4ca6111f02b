"""The paper's protocol for choosing a search's result (Zhao et al. 2021 §5): the architecture
derived at every checkpoint is re-trained briefly and the one with the lowest validation loss
is kept.

``select(run)`` reads the search run's ``arch_step{N}.json`` files, re-trains each distinct
architecture for ``train_steps`` updates into ``RUN/select/step{N}/`` (the same seed, data and
size for all), and writes ``RUN/select.json``, ``RUN/select.md`` and ``RUN/arch_selected.json``.
Checkpoints that derived the same architecture share one re-training.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from nasframe.base.errors import CheckpointError, ConfigError
from nasframe.base.files import atomic_write_text, read_json
from nasframe.compare._deps import (
    DataSpec,
    RunDir,
    RunKind,
    RunLock,
    TrainConfig,
    cache_dir,
    get_or_train_vocab,
    load_data,
    match_size,
    parameter_breakdown,
    parse_params,
    train,
)
from nasframe.compare.report import describe_architecture
from nasframe.dsl.architecture import Architecture
from nasframe.engine.supernet import build_model

__all__ = ["select", "checkpoint_architectures"]

_ARCH_STEP = re.compile(r"^arch_step(\d+)\.json$")


def checkpoint_architectures(run: Path) -> list[tuple[int, Architecture]]:
    """(update, architecture) of every checkpoint of a search run, oldest first."""
    found = sorted((int(m.group(1)), p) for p in run.glob("arch_step*.json")
                   if (m := _ARCH_STEP.match(p.name)))
    if not found:
        raise CheckpointError(f"{run}: no arch_step<N>.json files (not a search run directory, "
                              "or no checkpoint yet)")
    return [(step, Architecture.load(path)) for step, path in found]


def _search_data(run: Path) -> str:
    recorded = RunDir(run, RunKind.SEARCH).read_json("config.json")
    data = recorded.get("data") if isinstance(recorded, dict) else None
    source = data.get("source", "lohelp") if isinstance(data, dict) else None
    if not isinstance(source, str):
        raise CheckpointError(f"{run / 'config.json'}: no data.source (not a search config)")
    if str(source).startswith("synthetic:"):
        raise ConfigError(f"{run} searched on {source}, which has no text to re-train on; "
                          "give --data (a corpus with train/valid splits)")
    return str(source)


def select(run: str | Path, train_steps: int, *, data: str | None = None,
           preset: str = "tiny", params: int | str | None = None, seed: int = 1,
           vocab_size: int | None = None, resume: bool = False, progress: bool = True,
           console: Console | None = None) -> dict[str, Any]:
    """Re-train every checkpoint's architecture briefly; return (and write) the table and the
    selected architecture. ``params`` sizes every model to that many parameters (blocks and
    d), else each is built at the preset's size."""
    run = RunDir.open(run, RunKind.SEARCH, "select from").path  # no links, its code imported
    with RunLock.acquire(run, "select from"):  # it writes into the run: one writer at a time
        return _select(run, train_steps, data, preset, params, seed, vocab_size, resume,
                       progress, console or Console(stderr=True))


def _select(run: Path, train_steps: int, data: str | None, preset: str,
            params: int | str | None, seed: int, vocab_size: int | None, resume: bool,
            progress: bool, console: Console) -> dict[str, Any]:
    archs = checkpoint_architectures(run)
    data = data or _search_data(run)
    config = TrainConfig.preset_config(preset, seed=seed, vocab_size=vocab_size)
    config = TrainConfig(**{**config.model_dump(), "steps": train_steps, "minutes": None,
                            "checkpoint_every": max(train_steps, 1)})
    corpora = load_data(DataSpec(data=data))
    vocab = get_or_train_vocab(corpora[0], cache_dir(), config.vocab_size)
    target = parse_params(params, "--params") if params is not None else None
    folder = run / "select"
    done_by_choices: dict[str, dict[str, Any]] = {}
    rows = []
    for step, arch in archs:
        key = json.dumps(arch.choices, sort_keys=True)
        if key in done_by_choices:
            rows.append({**done_by_choices[key], "step": step, "same_as": done_by_choices[key]
                         ["step"]})
            continue
        console.rule(f"select: checkpoint {step} ({len(rows) + 1}/{len(archs)})")
        record = _retrain(folder, step, arch, config, target, len(vocab), data, corpora,
                          resume, progress, console)
        done_by_choices[key] = record
        rows.append(record)
    best = min((r for r in rows if r["valid_loss"] is not None),
               key=lambda r: (r["valid_loss"], r["step"]))
    chosen = next(a for s, a in archs if s == best["step"])
    selected = chosen.model_copy(update={"note": f"selected by `nasframe select`: checkpoint "
                                         f"{best['step']}, validation loss "
                                         f"{best['valid_loss']:.4f} after {train_steps} updates"})
    selected.save(run / "arch_selected.json")
    result = {"run": str(run), "train_steps": train_steps, "preset": preset, "seed": seed,
              "data": data, "params_target": target, "selected_step": best["step"],
              "rows": rows}
    atomic_write_text(json.dumps(result, indent=2) + "\n", run / "select.json")
    atomic_write_text(_markdown(result), run / "select.md")
    console.print(table(result))
    return result


def _retrain(folder: Path, step: int, arch: Architecture, config: TrainConfig,
             target: int | None, vocab_size: int, data: str, corpora: Any, resume: bool,
             progress: bool, console: Console) -> dict[str, Any]:
    done, out = folder / f"step{step}.json", folder / f"step{step}"
    if resume and done.is_file():
        return read_json(done, what="select record")
    model = match_size(arch, target, config.model, vocab_size) if target else config.model
    params = parameter_breakdown(build_model(arch, model, vocab_size))
    if out.exists():
        shutil.rmtree(out)
    result = train(arch, out, config.model_copy(update={"model": model}), DataSpec(data=data),
                   progress=progress, console=console, corpora=corpora)
    record = {"step": step, "valid_loss": result.best_valid_loss, "params": params["total"],
              "d_model": model.d_model, "blocks": model.blocks,
              "train_seconds": round(result.train_seconds, 2),
              "architecture": describe_architecture(arch), "run_dir": str(out)}
    atomic_write_text(json.dumps(record, indent=2) + "\n", done)
    return record


def table(result: dict[str, Any]) -> Table:
    t = Table(title=f"select: every checkpoint re-trained for {result['train_steps']:,} updates",
              caption=f"selected: checkpoint {result['selected_step']} -> arch_selected.json")
    for col in ("checkpoint", "valid loss", "params", "architecture"):
        t.add_column(col, overflow="fold")
    for r in result["rows"]:
        mark = " *" if r["step"] == result["selected_step"] else ""
        same = f" (= {r['same_as']})" if "same_as" in r else ""
        loss = "-" if r["valid_loss"] is None else f"{r['valid_loss']:.4f}"
        t.add_row(f"{r['step']}{mark}", loss + same, f"{r['params'] / 1e6:.3f}M",
                  r["architecture"])
    return t


def _markdown(result: dict[str, Any]) -> str:
    lines = [f"Every checkpoint's architecture re-trained for {result['train_steps']:,} updates "
             f"(preset {result['preset']}, seed {result['seed']}, {result['data']}); the lowest "
             "validation loss is selected (*).", "",
             "| checkpoint | valid loss | params | architecture |", "|---|---|---|---|"]
    for r in result["rows"]:
        mark = " *" if r["step"] == result["selected_step"] else ""
        loss = "-" if r["valid_loss"] is None else f"{r['valid_loss']:.4f}"
        lines.append(f"| {r['step']}{mark} | {loss} | {r['params'] / 1e6:.3f}M | "
                     f"{r['architecture']} |")
    return "\n".join(lines) + "\n"
