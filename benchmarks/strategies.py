"""Strategies head to head (the speed side of Table 1): search updates per second of each
built-in strategy on the same data and preset, in paired, alternating repetitions (every
repetition runs each case once, in reversed order every other time), so that load on a shared
machine lands on all cases alike. Ratios are per repetition against darts-reversible with
reconstruction off, reported as the median with min/max.

Quality (re-trained BLEU of each strategy's architecture) needs `nasframe quickstart`-style
re-training per strategy and a GPU-sized budget; this benchmark measures the search cost.

    python -m benchmarks.strategies [--preset tiny] [--steps 40] [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics

import torch

import nasframe as nf
from benchmarks import _report
from nasframe.config import SearchConfig, apply_overrides

BASELINE = "darts-reversible, reconstruction off"
CASES = [  # (label, strategy, overrides)
    ("darts-reversible", "darts-reversible", {}),
    (BASELINE, "darts-reversible", {"model.memory_saving": False}),
    ("darts-reversible, every layer kept", "darts-reversible", {"model.keep_layers": 1000}),
    ("darts-reversible, second order", "darts-reversible", {"optim.second_order": True}),
    ("darts", "darts", {}),
    ("spos (training only)", "spos", {"evolution.iterations": 0, "evolution.population": 2}),
]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data", default="lohelp")
    p.add_argument("--cases", nargs="+", help="labels to run (default: all)")
    _report.add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 8, 3
    meta = _report.setup(args)
    cases = [c for c in CASES if not args.cases or c[0] in args.cases or c[0] == BASELINE]
    configs = {label: (strategy, apply_overrides(
        SearchConfig.preset_config(args.preset),
        {"log_every": args.steps, "checkpoint_every": 10**9, **overrides}))
        for label, strategy, overrides in cases}
    spaces: dict[str, str] = {}

    def runner(label: str):
        strategy, cfg = configs[label]

        def run() -> None:
            result = nf.search(strategy=strategy, data=args.data, config=cfg, steps=args.steps)
            spaces[label] = result.supernet.space.name
        return run

    for label in configs:  # warm-up, caches (data, vocabulary)
        strategy, cfg = configs[label]
        nf.search(strategy=strategy, data=args.data, config=cfg, steps=2)
    times = _report.paired({label: runner(label) for label in configs}, args.repeats, warmup=0)
    rows = []
    for label in configs:
        ratio = _report.ratio_summary(times[label], times[BASELINE])
        rows.append({"strategy": label, "space": spaces.get(label),
                     "updates/s": args.steps / statistics.median(times[label]),
                     f"time / {BASELINE}": ratio["median"], "ratio min": ratio["min"],
                     "ratio max": ratio["max"], "pairs": ratio["pairs"]})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    meta.update({"device": _report.device_label(device),
                 **{k: (str(v) if k == "out" else v) for k, v in vars(args).items()},
                 "note": "seconds include building the supernet and SPOS' final evolution"})
    _report.write("strategies", rows, meta, list(rows[0]), args.out)


if __name__ == "__main__":
    main()
