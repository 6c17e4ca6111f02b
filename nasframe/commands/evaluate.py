"""``nasframe evaluate --model RUN --split test``: BLEU and chrF of a trained run.

Translates the split with beam search and scores the detokenised output with sacrebleu
(corpus BLEU and chrF). Prints the scores and writes them to RUN/eval_<split>.json (the
translations to RUN/eval_<split>.hyp.txt). The data default to the corpus the run was
trained on.
"""
from __future__ import annotations

import argparse
import json

from rich.console import Console

from nasframe.commands.train import add_data_arguments
from nasframe.commands.translate import add_decode_arguments, decode_options
from nasframe.text.data import DataSpec
from nasframe.text.evaluation import evaluate_run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="BLEU and chrF of a trained run on a corpus split",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="run directory of `nasframe train`")
    p.add_argument("--split", default="test", help="split to translate (default: test)")
    add_data_arguments(p, valid=False)
    p.add_argument("--limit", type=int, help="score only the first N pairs")
    add_decode_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    data = None
    if args.data or args.src or args.tgt:
        data = DataSpec(data=args.data, src=args.src, tgt=args.tgt).absolute()
    console = Console(stderr=True)
    result = evaluate_run(args.model, args.split, data, decode_options(args), args.limit,
                          args.checkpoint, args.device, not args.no_progress, console)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        subset = "" if result["sentences"] == result["of"] else \
            f" (first {result['sentences']:,} of {result['of']:,})"
        print(f"{result['corpus']} {args.split}{subset}: BLEU {result['bleu']:.2f}  "
              f"chrF {result['chrf']:.2f}  (beam {result['beam']}, lenpen "
              f"{result['length_penalty']})")
        console.print(f"written {args.model}/eval_{args.split}.json")
    return 0
