"""Strategies head to head (the speed side of Table 1): search updates per second of each
built-in strategy on the same data and preset, measured one after the other in one process.

Quality (re-trained BLEU of each strategy's architecture) needs `nasframe quickstart`-style
re-training per strategy and a GPU-sized budget; this benchmark measures the search cost.

    python -m benchmarks.strategies [--preset tiny] [--steps 40] [--data lohelp]
"""
from __future__ import annotations

import argparse
import time

import torch

import nasframe as nf
from benchmarks import _report
from nasframe.config import SearchConfig, apply_overrides

CASES = [  # (label, strategy, overrides)
    ("darts-reversible", "darts-reversible", {}),
    ("darts-reversible, reconstruction off", "darts-reversible", {"model.memory_saving": False}),
    ("darts-reversible, second order", "darts-reversible", {"optim.second_order": True}),
    ("darts", "darts", {}),
    ("spos (training only)", "spos", {"evolution.iterations": 0, "evolution.population": 2}),
]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--data", default="lohelp")
    args = p.parse_args(argv)
    rows = []
    for label, strategy, overrides in CASES:
        cfg = apply_overrides(SearchConfig.preset_config(args.preset),
                              {"log_every": args.steps, "checkpoint_every": 10**9, **overrides})
        nf.search(strategy=strategy, data=args.data, config=cfg, steps=3)  # warm-up, caches
        start = time.perf_counter()
        result = nf.search(strategy=strategy, data=args.data, config=cfg, steps=args.steps)
        seconds = time.perf_counter() - start
        rows.append({"strategy": label, "space": result.supernet.space.name,
                     "updates/s": args.steps / seconds,
                     "tokens/s": result.metrics.get("tokens_per_s")})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    meta = {"device": _report.device_label(device), **vars(args),
            "note": "seconds include building the supernet and SPOS' final evolution"}
    _report.write("strategies", rows, meta, list(rows[0]))


if __name__ == "__main__":
    main()
