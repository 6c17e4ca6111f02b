"""``nasframe train``: re-train an architecture with ordinary backprop into a run directory.

The run directory then holds everything ``nasframe translate`` and ``nasframe evaluate`` need
(config, architecture, vocabulary, checkpoints, metrics).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

import nasframe as nf
from nasframe.config import TRAIN_PRESETS, TrainConfig
from nasframe.data import DataSpec
from nasframe.errors import SpaceError
from nasframe.train import train


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="re-train an architecture (ordinary backprop)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", help="architecture JSON (from a search, or written by hand), or "
                   "the name of a space without choices such as 'transformer'")
    p.add_argument("--out", required=True, help="run directory")
    add_data_arguments(p, valid=True)
    p.add_argument("--preset", default="tiny", choices=list(TRAIN_PRESETS),
                   help="model size and schedule (default: tiny, CPU minutes)")
    p.add_argument("--steps", type=int, help="stop after this many updates")
    p.add_argument("--minutes", type=float, help="stop after this much wall-clock time")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out exactly, with its recorded architecture, "
                        "data and config; only --steps, --minutes, --checkpoint-every, "
                        "--average-last, --device and --skip-nonfinite may change")
    p.add_argument("--average-last", type=int, metavar="K",
                   help="also write the average of the last K checkpoints (and use it)")
    p.add_argument("--max-tokens", type=int, help="token budget of a batch")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--warmup", type=int, help="warmup updates")
    p.add_argument("--checkpoint-every", type=int, help="updates between checkpoints")
    p.add_argument("--max-len", type=int, help="drop pairs longer than this (default 250)")
    p.add_argument("--vocab-size", type=int, help="joint sentencepiece vocabulary size")
    p.add_argument("--skip-nonfinite", type=int, metavar="N",
                   help="skip up to N batches with a non-finite loss or gradient instead of "
                        "stopping at the first (default 0)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def add_data_arguments(p: argparse.ArgumentParser, valid: bool) -> None:
    """--data / --src --tgt (and --valid), shared with ``evaluate``."""
    p.add_argument("--data", help="'lohelp' (the embedded corpus, default), a TSV file, a folder "
                   "of <split>.tsv files or a pattern with {split}")
    p.add_argument("--src", help="source side as a text file, one sentence per line")
    p.add_argument("--tgt", help="target side, aligned with --src")
    if valid:
        p.add_argument("--valid", nargs="+", metavar="FILE",
                       help="validation data: one TSV or two aligned files (default: the "
                       "corpus's valid split, or 2%% of the training pairs held out)")


def load_architecture(name: str) -> nf.Architecture:
    """An architecture JSON file, or a built-in space that has no choices."""
    path = Path(name)
    if path.exists() or name.endswith(".json"):
        return nf.Architecture.load(path)
    if name in nf.spaces.names():
        space = nf.spaces.get(name)
        if space.choice_nodes():
            raise SpaceError(f"--arch {name}: space {name!r} has choices; give a derived "
                             "architecture JSON (from `nasframe search`) instead")
        return nf.Architecture(space=space, choices={})
    raise SpaceError(f"--arch {name}: no such file (nor a built-in space without choices)")


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    data = DataSpec(data=args.data, src=args.src, tgt=args.tgt,
                    valid=tuple(args.valid) if args.valid else None)
    given = {"steps": args.steps, "minutes": args.minutes, "average_last": args.average_last,
             "device": args.device, "max_tokens": args.max_tokens, "lr": args.lr,
             "warmup": args.warmup, "checkpoint_every": args.checkpoint_every,
             "max_len": args.max_len, "vocab_size": args.vocab_size, "seed": args.seed,
             "skip_nonfinite": args.skip_nonfinite}
    overrides = {k: v for k, v in given.items() if v is not None}
    if args.minutes is not None and args.steps is None:
        overrides["steps"] = None  # the time budget alone decides
    arch = load_architecture(args.arch) if args.arch else None
    config = None if args.resume else TrainConfig.preset_config(args.preset)
    result = train(arch, args.out, config, data, resume=args.resume, overrides=overrides,
                   progress=not args.no_progress, console=console)
    best = "-" if result.best_valid_loss is None else f"{result.best_valid_loss:.4f}"
    console.print(f"trained {result.steps:,} updates in {result.train_seconds / 60:.1f} min; "
                  f"best validation loss {best}; model: {result.checkpoint}", soft_wrap=True)
    print(result.run_dir)
    return 0
