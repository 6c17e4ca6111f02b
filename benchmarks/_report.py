"""What every benchmark shares: common options (``--out``, ``--quick``, ``--d``, ``--space``),
the rule a hidden size must follow, paired timing, and writing the results (JSON with the device
and thread count, a rich table, a PNG if matplotlib is installed)."""
from __future__ import annotations

import argparse
import inspect
import json
import math
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

from nasframe.base.errors import ConfigError
from nasframe.dsl.ops.base import op_factory
from nasframe.dsl.space import OpSet, OpSpec, SearchSpace, Stack
from nasframe.run.config import parse_assignment
from nasframe.searching.api import import_space_code, resolve_space

RESULTS = Path("bench-results")  # relative to the current directory, never the package


def positive(text: str) -> int:
    """An ``argparse`` type for a count or size: an integer of at least 1 (sizes, repetitions
    and steps of 0 or less would fail deep inside a benchmark with a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_common_args(p: argparse.ArgumentParser, threads: bool = True) -> None:
    """``threads=False`` under ``nasframe bench``, whose ``--threads`` comes from the CLI."""
    p.add_argument("--out", type=Path, default=RESULTS,
                   help="directory for <name>.json/.png (default: ./bench-results)")
    p.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    if threads:
        p.add_argument("--threads", type=positive, default=1,
                       help="torch intra-op threads (recorded; default 1 for a shared machine)")


def run_main(doc: str | None, add_arguments: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], Any], argv: list[str] | None = None) -> None:
    """``python -m benchmarks.NAME``: the benchmark's own arguments and the common ones."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    add_arguments(p)
    add_common_args(p)
    run(p.parse_args(argv))


def add_space_args(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--space", default=default, metavar="SPACE",
                   help="a built-in space name, a space JSON file or module:attribute"
                        + (f" (default: {default})" if default else ""))
    p.add_argument("--space-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option of a built-in space or factory, e.g. layers=1 (repeatable)")


def space_from_args(args: argparse.Namespace, name: str | None = None,
                    **defaults: Any) -> SearchSpace:
    """``--space`` (or ``name``) with ``--space-option``; ``defaults`` are options that apply
    to a built-in name only (a JSON file or ``module:attribute`` gets just the user's)."""
    text = str(name or args.space)
    user = dict(parse_assignment(o) for o in args.space_option)
    if text.endswith(".json") or Path(text).is_file():
        if user:
            raise ConfigError("--space-option applies to built-in spaces, not a space JSON file")
        return resolve_space(text)
    import_space_code(text)  # typed on the command line
    return resolve_space(text, **{**({} if ":" in text else defaults), **user})


def _heads(spec: OpSpec) -> int:
    """The op's head count (1 for an op without heads): its parameter or its default."""
    if "heads" in spec.params:
        return int(spec.params["heads"])
    param = inspect.signature(op_factory(spec.name)).parameters.get("heads")
    if param is None or not isinstance(param.default, int):
        return 1
    return param.default


def width_rule(space: SearchSpace) -> list[tuple[int, str]]:
    """Per part, the multiple a hidden size must be and why: each split of a reversible stack
    is d / splits wide, which the heads of every op in it must divide."""
    rules = []
    for part, spec in space.parts():
        splits = spec.splits if isinstance(spec, Stack) else 1
        heads = 1
        for _, what in spec.units():
            for op in (what.ops if isinstance(what, OpSet) else [what]):
                heads = math.lcm(heads, _heads(op))
        rules.append((splits * heads, f"{part}.splits={splits} with {heads} heads per split"
                      if splits > 1 else f"the {heads} heads of {part}"))
    return rules


def check_d(space: SearchSpace, sizes: Sequence[int]) -> None:
    """Refuse a hidden size that cannot split, with the rule (ConfigError: one error line)."""
    rules = width_rule(space)
    multiple = math.lcm(*(need for need, _ in rules))
    for d in sizes:
        broken = [why for need, why in rules if d < 1 or d % need]
        if broken:
            raise ConfigError(f"--d {d}: not divisible by {' or '.join(broken)} (d must be a "
                              f"multiple of {multiple} in space {space.name!r})")


def setup(args: argparse.Namespace) -> dict[str, Any]:
    """Apply ``--threads`` (when given); return what the results must record about the run."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return {"threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "torch": torch.__version__}


def args_meta(args: argparse.Namespace) -> dict[str, Any]:
    """The options of a run, for its results (the thread count comes from ``setup``)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
            if k not in ("func", "threads", "imports", "command", "benchmark")}


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
