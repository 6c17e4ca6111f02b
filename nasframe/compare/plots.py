"""Figures: how a search's alphas moved, training curves, and a comparison's bars.

matplotlib is optional (``pip install 'nasframe[plot]'``); without it these functions raise
``ConfigError`` saying so. Figures are written with the non-interactive Agg backend, so they
work without a display.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nasframe.base.errors import CheckpointError, ConfigError
from nasframe.base.files import read_json
from nasframe.run.rundir import read_metrics

__all__ = ["plot_alphas", "plot_curves", "plot_compare", "alpha_history", "read_curves"]

_ARCH_STEP = re.compile(r"^arch_step(\d+)\.json$")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plotting needs matplotlib: pip install 'nasframe[plot]' "
                          "(or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------- alphas

def alpha_history(run_dir: str | Path) -> tuple[list[int], dict[str, dict[str, list[float]]]]:
    """(updates, node -> op -> softmax(alpha) at each update) from a search run's
    ``arch_step{N}.json`` files (one per checkpoint)."""
    run_dir = Path(run_dir)
    files = sorted((int(m.group(1)), p) for p in run_dir.glob("arch_step*.json")
                   if (m := _ARCH_STEP.match(p.name)))
    if not files:
        raise CheckpointError(f"{run_dir}: no arch_step<N>.json files (not a search run "
                              "directory, or no checkpoint yet)")
    steps: list[int] = []
    history: dict[str, dict[str, list[float]]] = {}
    for step, path in files:
        record = read_json(path, what="architecture file")
        probs = record.get("probabilities") if isinstance(record, dict) else None
        if not probs:
            raise CheckpointError(f"{path}: records no probabilities (the strategy has no "
                                  "alphas, e.g. spos or random)")
        steps.append(step)
        for node, ops in probs.items():
            for op, p in ops.items():
                history.setdefault(node, {}).setdefault(op, []).append(float(p))
    return steps, history


def _entropy(history: dict[str, dict[str, list[float]]], i: int) -> tuple[float, float]:
    ent, uni = [], []
    for ops in history.values():
        ps = [v[i] for v in ops.values()]
        ent.append(-sum(p * math.log(p) for p in ps if p > 0))
        uni.append(math.log(len(ps)))
    return sum(ent) / len(ent), sum(uni) / len(uni)


def plot_alphas(run_dir: str | Path, png: str | Path, top: int | None = None) -> Path:
    """softmax(alpha) of every node over updates, one panel per node, and the mean entropy
    against its uniform value log|O|. ``top`` keeps the ``top`` ops of each node by their
    final probability (default: all)."""
    steps, history = alpha_history(run_dir)
    plt = _pyplot()
    n = len(history) + 1
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    flat = [ax for line in axes for ax in line]
    for ax, (node, ops) in zip(flat, history.items()):
        ranked = sorted(ops.items(), key=lambda kv: -kv[1][-1])[:top]
        for op, ps in ranked:
            ax.plot(steps, ps, marker="." if len(steps) < 20 else None, label=op)
        ax.axhline(1 / len(ops), color="grey", lw=0.6, ls=":")
        ax.set_title(node, fontsize=8)
        ax.set_ylim(0, max(0.05, max(max(ps) for _, ps in ranked) * 1.1))
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=5, ncol=2)
    ax = flat[len(history)]
    ent = [_entropy(history, i) for i in range(len(steps))]
    ax.plot(steps, [e for e, _ in ent], marker="o", label="mean H(softmax(alpha))")
    ax.plot(steps, [u for _, u in ent], color="grey", ls="--", label="log|O| (uniform)")
    ax.set_title("mean entropy over nodes", fontsize=8)
    ax.set_xlabel("update", fontsize=7)
    ax.legend(fontsize=6)
    for extra in flat[n:]:
        extra.axis("off")
    fig.suptitle(f"softmax(alpha) over updates: {Path(run_dir).name}", fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, png)


# ----------------------------------------------------------------------------- curves

#: Panels of plot_curves: title -> keys of a metrics line giving it (re-training, search).
_CURVES = {"training loss": ("loss", "loss_train"), "validation loss": ("valid_loss", "loss_val"),
           "tokens/s": ("tokens_per_s",), "learning rate": ("lr",)}


def read_curves(run_dir: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """Panel title -> (updates, values) from a run's ``metrics.jsonl`` (re-training or
    search runs)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no metrics.jsonl (not a run directory)")
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for rec in read_metrics(path):  # a partial last line (a run being written) is skipped
        if "step" not in rec or rec.get("event") in ("data", "end"):
            continue
        for title, keys in _CURVES.items():
            value = next((rec[k] for k in keys if isinstance(rec.get(k), int | float)), None)
            if value is not None and math.isfinite(value):
                xs, ys = curves.setdefault(title, ([], []))
                xs.append(int(rec["step"]))
                ys.append(float(value))
    return curves


def plot_curves(run_dirs: Sequence[str | Path], png: str | Path,
                labels: Sequence[str] | None = None) -> Path:
    """Training loss, validation loss, tokens/s and learning rate over updates, the runs
    overlaid (one colour per run)."""
    if not run_dirs:
        raise ConfigError("plot_curves: no run directories given")
    labels = list(labels) if labels else [_label(Path(d)) for d in run_dirs]
    data = [read_curves(d) for d in run_dirs]
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    for ax, title in zip([a for row in axes for a in row], _CURVES):
        for label, curves in zip(labels, data):
            if title in curves:
                xs, ys = curves[title]
                ax.plot(xs, ys, marker="o" if len(xs) < 15 else None, ms=3, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("update", fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, plt, png)


def _label(path: Path) -> str:
    """A run's name in a legend: its folder, with the parents up to one that is not generic
    (``transformer/seed1/train`` rather than ``train``)."""
    parts = [path.name]
    while re.fullmatch(r"train|search|seed\d+", parts[0]) and path.parent.name:
        path = path.parent
        parts.insert(0, path.name)
    return "/".join(p for p in parts if p)


# ----------------------------------------------------------------------------- compare

def plot_compare(summary: Sequence[dict[str, Any]], png: str | Path) -> Path:
    """Bars of BLEU, chrF and validation loss per row (mean over seeds, error bars: sample
    std), from a comparison's ``summary``."""
    plt = _pyplot()
    panels = [("bleu", "BLEU"), ("chrf", "chrF"), ("valid_loss", "validation loss")]
    names = [e["name"] for e in summary]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.5 * len(names) + 2.5))
    for ax, (key, title) in zip(axes, panels):
        means = [e[key]["mean"] if key in e else math.nan for e in summary]
        errs = [(e[key]["std"] or 0.0) if key in e else 0.0 for e in summary]
        ax.barh(range(len(names)), means, xerr=errs, capsize=3, color="tab:blue", alpha=0.8)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels([f"{n} (n={e['n']})" for n, e in zip(names, summary)], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    for ax in axes[1:]:
        ax.set_yticklabels([])
    fig.tight_layout()
    return _save(fig, plt, png)


def _save(fig: Any, plt: Any, png: str | Path) -> Path:
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.stem}.tmp{png.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(png)
    return png
