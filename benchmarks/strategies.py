"""Strategies head to head (the speed side of Table 1): search updates per second of each
built-in strategy on the same data and preset, in paired, alternating repetitions (every
repetition runs each case once, in reversed order every other time), so that load on a shared
machine lands on all cases alike. Ratios are per repetition against darts-reversible with
reconstruction off, reported as the median with min/max.

Quality (re-trained BLEU of each strategy's architecture) needs `nasframe quickstart`-style
re-training per strategy and a GPU-sized budget; this benchmark measures the search cost.

    nasframe bench strategies [--preset tiny] [--steps 40] [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics

import torch

import nasframe as nf
from nasframe.run.config import SearchConfig, apply_overrides
from nasframe.searching.strategy import get_strategy

from . import _report
from ._report import positive

BASELINE = "darts-reversible, reconstruction off"
CASES = [  # (label, strategy, overrides)
    ("darts-reversible", "darts-reversible", {}),
    (BASELINE, "darts-reversible", {"model.memory_saving": False}),
    ("darts-reversible, every layer kept", "darts-reversible", {"model.keep_layers": 1000}),
    ("darts-reversible, float32 stream", "darts-reversible", {"model.stream_dtype": "model"}),
    ("darts-reversible, second order", "darts-reversible", {"optim.second_order": True}),
    ("darts", "darts", {}),
    ("spos (training only)", "spos", {"evolution.iterations": 0, "evolution.population": 2}),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=positive, default=40)
    p.add_argument("--repeats", type=positive, default=3)
    p.add_argument("--data", default="lohelp")
    p.add_argument("--cases", nargs="+", help="labels to run (default: all)")
    p.add_argument("--d", type=positive, nargs="+", default=None,
                   help="hidden sizes (default: the preset's)")
    _report.add_space_args(p, None)


def run(args: argparse.Namespace) -> None:
    if args.quick:
        args.steps, args.repeats = min(args.steps, 8), min(args.repeats, 3)
    space = _report.space_from_args(args) if args.space else None
    cases = [c for c in CASES if not args.cases or c[0] in args.cases or c[0] == BASELINE]
    for _, strategy, _ in cases if args.d else []:
        _report.check_d(space or nf.spaces.get(get_strategy(strategy).default_space), args.d)
    meta = _report.setup(args)
    rows = []
    for d in args.d or [None]:
        rows += _run_size(args, cases, space, d)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    meta.update({"device": _report.device_label(device),
                 **_report.args_meta(args),
                 "note": "seconds include building the supernet and SPOS' final evolution"})
    _report.write("strategies", rows, meta, list(rows[0]), args.out)


def _run_size(args: argparse.Namespace, cases: list, space: nf.SearchSpace | None,
              d: int | None) -> list[dict]:
    size = {} if d is None else {"model.d_model": d}
    configs = {label: (strategy, apply_overrides(
        SearchConfig.preset_config(args.preset),
        {"log_every": args.steps, "checkpoint_every": 10**9, **size, **overrides}))
        for label, strategy, overrides in cases}
    spaces: dict[str, str] = {}

    def runner(label: str):
        strategy, cfg = configs[label]

        def run() -> None:
            result = nf.search(space, strategy=strategy, data=args.data, config=cfg,
                               steps=args.steps)
            spaces[label] = result.supernet.space.name
        return run

    for label in configs:  # warm-up, caches (data, vocabulary)
        strategy, cfg = configs[label]
        nf.search(space, strategy=strategy, data=args.data, config=cfg, steps=2)
    times = _report.paired({label: runner(label) for label in configs}, args.repeats, warmup=0)
    rows = []
    for label in configs:
        ratio = _report.ratio_summary(times[label], times[BASELINE])
        rows.append({"strategy": label, "space": spaces.get(label),
                     "d": configs[label][1].model.d_model,
                     "updates/s": args.steps / statistics.median(times[label]),
                     f"time / {BASELINE}": ratio["median"], "ratio min": ratio["min"],
                     "ratio max": ratio["max"], "pairs": ratio["pairs"]})
    return rows


def main(argv: list[str] | None = None) -> None:
    _report.run_main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
