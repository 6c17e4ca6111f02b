"""``nasframe plot RUN [RUN ...]``: the training curves of search or re-training runs."""
from __future__ import annotations

import argparse
from pathlib import Path

from nasframe.compare.plots import plot_curves


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="draw the training curves of runs as a PNG",
                       description="Training loss, validation loss, tokens/s and learning "
                       "rate over updates, from each run's metrics.jsonl; several runs are "
                       "overlaid.")
    p.add_argument("runs", nargs="+", type=Path, help="search or training run directories")
    p.add_argument("--out", type=Path, default=Path("curves.png"),
                   help="PNG to write (default curves.png)")
    p.add_argument("--label", action="append", default=None,
                   help="legend name of each run, in order (default: its folder)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(f"wrote {plot_curves(args.runs, args.out, args.label)}")
    return 0
