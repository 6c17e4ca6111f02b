"""What every benchmark shares: common options, paired timing, and writing the results
(JSON with the device and thread count, a rich table, a PNG if matplotlib is installed)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for <name>.json/.png")
    p.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (recorded; default 1 for a shared machine)")


def setup(args: argparse.Namespace) -> dict[str, Any]:
    """Apply ``--threads``; return what the results must record about the run."""
    torch.set_num_threads(args.threads)
    return {"threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "torch": torch.__version__}


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def timed(fn: Callable[[], Any], device: torch.device | None = None) -> float:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def paired(modes: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
           device: torch.device | None = None) -> dict[str, list[float]]:
    """Seconds per repetition of each mode, the modes alternating within every repetition
    (and their order reversed every other one), so load on a shared machine lands on all of
    them alike; ratios are then taken per repetition (``ratio_summary``)."""
    names = list(modes)
    for _ in range(warmup):
        for name in names:
            modes[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(timed(modes[name], device))
    return times


def ratio_summary(num: Sequence[float], den: Sequence[float]) -> dict[str, float]:
    """Median of the paired ratios num[r] / den[r] with their spread (min, quartiles, max)."""
    ratios = sorted(a / b for a, b in zip(num, den))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"median": statistics.median(ratios), "min": ratios[0], "q1": q[0], "q3": q[2],
            "max": ratios[-1], "pairs": len(ratios)}


def write(name: str, rows: Sequence[dict[str, Any]], meta: dict[str, Any],
          columns: Sequence[str], out: Path = RESULTS) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"meta": meta, "rows": list(rows)}, indent=2, default=str) + "\n")
    table = Table(title=f"{name} on {meta.get('device', '?')}")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(_fmt(row.get(c)) for c in columns))
    Console(width=200).print(table)
    return path


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def plot(name: str, series: dict[str, tuple[list[float], list[float]]], xlabel: str,
         ylabel: str, out: Path = RESULTS, logy: bool = False) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the plot extra is optional; the JSON and table are the results
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(out) / f"{name}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
