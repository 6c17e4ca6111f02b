"""``nasframe select``: the paper's protocol for choosing a search's result.

The architecture derived at every checkpoint of a search run (RUN/arch_step<N>.json) is
re-trained briefly, all with the same seed, data and size; the lowest validation loss wins.
Writes RUN/select.json, RUN/select.md and RUN/arch_selected.json (train it with
`nasframe train --arch RUN/arch_selected.json`).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("select", help="re-train every checkpoint's architecture briefly and "
                       "keep the best (Zhao et al. 2021 §5)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="search run directory (holds arch_step<N>.json)")
    p.add_argument("--train-steps", type=int, required=True, metavar="N",
                   help="re-training updates per architecture")
    p.add_argument("--data", help="corpus to re-train on (default: the one searched on)")
    p.add_argument("--preset", default="tiny", help="re-training preset (tiny)")
    p.add_argument("--params", help="size every model to this many parameters, e.g. 1.1M "
                   "(default: the preset's size)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--vocab-size", type=int, help="joint vocabulary size (preset's)")
    p.add_argument("--resume", action="store_true", help="skip checkpoints already re-trained")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nasframe.compare.select import select

    result = select(args.run, args.train_steps, data=args.data, preset=args.preset,
                    params=args.params, seed=args.seed, vocab_size=args.vocab_size,
                    resume=args.resume, progress=not args.no_progress)
    print(Path(result["run"]) / "arch_selected.json")
    return 0
