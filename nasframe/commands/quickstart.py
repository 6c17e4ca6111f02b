"""``nasframe quickstart``: search, re-train, translate and score, small enough for a CPU.

A two-row `nasframe compare` at equal size on the embedded English-German corpus: the joint
sentencepiece vocabulary (cached), a DARTSformer search (darts-reversible, tiny preset), the
derived architecture sized to the Transformer's parameter count, re-trained and scored (BLEU,
chrF on the test split, beam search), then the Transformer baseline with the same training
budget; a table of both, RUN/results.json and RUN/compare.md. About ten minutes on two cores.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from nasframe.compare.pipeline import QuickstartOptions, run_quickstart


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="the whole method, small, on a CPU (make demo)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = QuickstartOptions()
    p.add_argument("--out", type=Path, default=d.out, help=f"run directory ({d.out})")
    p.add_argument("--budget-minutes", type=float, default=d.budget_minutes,
                   help=f"wall-clock budget of the whole job ({d.budget_minutes:g})")
    p.add_argument("--data", default=d.data, help="corpus with train/valid/test splits "
                   f"({d.data})")
    p.add_argument("--search-steps", type=int, help="search updates (default: what the "
                   "budget allows, at most the preset's)")
    p.add_argument("--train-minutes", type=float, help="re-training time per model (default: "
                   "a share of the budget)")
    p.add_argument("--train-steps", type=int, help="cap on re-training updates per model")
    p.add_argument("--test-sentences", type=int, help="translate only the first N test "
                   "sentences (default: all)")
    p.add_argument("--beam", type=int, default=d.beam, help=f"beam size ({d.beam})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = QuickstartOptions(
        out=args.out, budget_minutes=args.budget_minutes, data=args.data,
        search_steps=args.search_steps, train_minutes=args.train_minutes,
        train_steps=args.train_steps, test_sentences=args.test_sentences, beam=args.beam,
        seed=args.seed, progress=not args.no_progress)
    result = run_quickstart(options)
    print(result["run_dir"])
    return 0
