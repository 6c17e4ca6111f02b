"""What a comparison reports: per-row means and standard deviations over seeds, as a table
(``compare.md``) and as data (the ``summary`` of ``compare.json``)."""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from nasframe.dsl.architecture import Architecture
from nasframe.dsl.space import Stack

__all__ = ["contrasts", "contrasts_markdown", "describe_architecture", "summarise", "markdown",
           "mean_std"]

#: Columns averaged over seeds, in table order: (record key, header, format).
COLUMNS: list[tuple[str, str, str]] = [
    ("params", "params", "{:.3f}M"),
    ("search_updates", "search updates", "{:,.0f}"),
    ("search_seconds", "search s", "{:,.0f}"),
    ("search_peak_bytes", "search peak MiB", "{:,.0f}"),
    ("train_updates", "train updates", "{:,.0f}"),
    ("train_seconds", "train s", "{:,.0f}"),
    ("valid_loss", "valid loss", "{:.3f}"),
    ("bleu", "BLEU", "{:.2f}"),
    ("chrf", "chrF", "{:.2f}"),
    ("alpha_entropy_ratio", "alpha entropy / uniform", "{:.3f}"),
    ("cell_seconds", "cell s", "{:,.0f}"),
]
_SCALE = {"params": 1e-6, "search_peak_bytes": 2**-20}


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


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def _value(record: dict[str, Any], key: str) -> float | None:
    if key == "alpha_entropy_ratio":
        h, u = record.get("alpha_entropy"), record.get("alpha_entropy_uniform")
        return h / u if h is not None and u else None
    v = record.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def summarise(records: Sequence[dict[str, Any]], order: Sequence[str]) -> list[dict[str, Any]]:
    """One entry per row name (in ``order``): n and, per column, mean and std over seeds."""
    out = []
    for name in order:
        rows = [r for r in records if r["name"] == name]
        if not rows:
            continue
        entry: dict[str, Any] = {"name": name, "strategy": rows[0]["strategy"], "n": len(rows),
                                 "seeds": [r["seed"] for r in rows]}
        for key, _, _ in COLUMNS:
            values = [v for r in rows if (v := _value(r, key)) is not None]
            if values:
                mean, std = mean_std(values)
                entry[key] = {"mean": mean, "std": std, "n": len(values)}
        out.append(entry)
    return out


_SEARCH_ONLY = {"search_updates", "search_seconds", "search_peak_bytes"}


def _cell(stat: dict[str, float | None] | None, key: str, fmt: str, fixed: bool) -> str:
    if stat is None or (fixed and key in _SEARCH_ONLY):
        return "-"
    scale = _SCALE.get(key, 1.0)
    text = fmt.format(stat["mean"] * scale)  # type: ignore[operator]
    if stat["std"] is not None:
        text += " ± " + fmt.format(stat["std"] * scale).removesuffix("M")
    return text


def markdown(summary: Sequence[dict[str, Any]], header: str = "") -> str:
    """The table of ``summary``: mean ± sample std over seeds; n is the number of seeds.
    "alpha entropy / uniform" is the mean entropy of softmax(alpha) over nodes divided by
    its value for uniform alphas (mean log |O|): 1 = the search did not move, 0 = decided."""
    cols = [c for c in COLUMNS if any(c[0] in e for e in summary)]
    lines = [header, ""] if header else []
    lines.append("| row | strategy | n | " + " | ".join(h for _, h, _ in cols) + " |")
    lines.append("|---|---|---|" + "---|" * len(cols))
    for e in summary:
        fixed = e["strategy"] == "fixed"
        cells = [_cell(e.get(key), key, fmt, fixed) for key, _, fmt in cols]
        lines.append(f"| {e['name']} | {e['strategy']} | {e['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- contrasts

def contrasts(records: Sequence[dict[str, Any]], order: Sequence[str],
              metric: str = "bleu") -> list[dict[str, Any]]:
    """Every row against the references a reader asks about: the first fixed row (the
    baseline the sizes are matched to) and the mean of the ``random`` rows.

    Differences are paired by seed (the same seed means the same data order and budgets), so
    ``diff`` is the mean and sample std of row - reference over the seeds both have; for the
    random reference, the per-seed mean of every random row.
    """
    by = {name: {r["seed"]: r for r in records if r["name"] == name} for name in order}
    strategy = {r["name"]: r["strategy"] for r in records}
    fixed = next((n for n in order if strategy.get(n) == "fixed" and by[n]), None)
    randoms = [n for n in order if strategy.get(n) == "random" and by[n]]
    references: list[tuple[str, dict[int, float]]] = []
    if fixed is not None:
        references.append((fixed, {s: r[metric] for s, r in by[fixed].items()}))
    if randoms:
        seeds = set.intersection(*(set(by[n]) for n in randoms))
        label = "random" if len(randoms) == 1 else "mean of random rows"
        references.append((label, {s: statistics.fmean(by[n][s][metric] for n in randoms)
                                   for s in sorted(seeds)}))
    out = []
    for name in order:
        if strategy.get(name) in (None, "random") or name == fixed:
            continue
        for ref, values in references:
            seeds = sorted(set(by[name]) & set(values))
            if not seeds:
                continue
            diffs = [by[name][s][metric] - values[s] for s in seeds]
            mean, std = mean_std(diffs)
            out.append({"row": name, "reference": ref, "metric": metric, "seeds": seeds,
                        "diff": {"mean": mean, "std": std, "n": len(seeds)},
                        "above_in_every_seed": all(d > 0 for d in diffs)})
    return out


def contrasts_markdown(items: Sequence[dict[str, Any]]) -> str:
    """The contrasts as a short table (empty when there is nothing to contrast)."""
    if not items:
        return ""
    lines = ["", f"{items[0]['metric'].upper()} difference, row - reference, paired by seed "
             "(mean ± sample std over n seeds):", "",
             "| row | reference | n | difference | above in every seed |", "|---|---|---|---|---|"]
    for c in items:
        d = c["diff"]
        text = f"{d['mean']:+.2f}" + (f" ± {d['std']:.2f}" if d["std"] is not None else "")
        lines.append(f"| {c['row']} | {c['reference']} | {d['n']} | {text} | "
                     f"{'yes' if c['above_in_every_seed'] else 'no'} |")
    return "\n".join(lines) + "\n"
