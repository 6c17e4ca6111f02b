"""``nasframe tabulate``: train every architecture of a space stand-alone and record its
held-out loss in OUT/table.jsonl, the ground truth ``nf.GroundTruth`` looks up.

Each architecture and seed gets the same config (the ``tiny`` re-training preset at the
search's width, d=48, E=32), the same updates and, at a seed, the same data order; its
line is appended as soon as it finishes, so a killed tabulation continues with --resume.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from nasframe.base.errors import ConfigError
from nasframe.run.config import TRAIN_PRESETS, parse_assignment


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tabulate", help="train every architecture of a space stand-alone "
                       "(ground truth)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("space", metavar="SPACE",
                   help="built-in space name, space JSON file or MODULE:ATTRIBUTE (--import)")
    p.add_argument("--space-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option of a built-in space, e.g. layers=1 (repeatable)")
    p.add_argument("--steps", type=int, required=True, help="updates of every architecture")
    p.add_argument("--seeds", type=_seeds, default=[1], metavar="1,2",
                   help="seeds, each over the whole space in this order (default 1)")
    p.add_argument("--out", required=True, help="folder of the table (OUT/table.jsonl)")
    p.add_argument("--resume", action="store_true",
                   help="continue a tabulation in --out: recorded architectures are skipped")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="train N architectures at once, one process each (--threads torch "
                        "threads each, default the cores shared out)")
    p.add_argument("--max-archs", type=int, default=1000, metavar="N",
                   help="refuse a space of more than N architectures (default 1000)")
    p.add_argument("--d-model", type=int, default=48, help="hidden size d (default 48, the "
                   "tiny search's)")
    p.add_argument("--embed-dim", type=int, default=32, help="factorised embedding E "
                   "(default 32, the tiny search's)")
    p.add_argument("--preset", default="tiny", choices=list(TRAIN_PRESETS),
                   help="re-training preset the config starts from (default tiny)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any training setting by its dotted name, e.g. lr=2e-3 (repeatable)")
    p.add_argument("--data", help="'lohelp' (the embedded corpus, default), a TSV file or a "
                   "folder of <split>.tsv files; the valid split is the held-out set")
    p.add_argument("--vocab-size", type=int, help="joint sentencepiece vocabulary size")
    p.add_argument("--max-tokens", type=int, help="token budget of a batch")
    p.add_argument("--bleu-sentences", type=int, default=0, metavar="N",
                   help="also score BLEU on the first N valid sentences (default 0: none)")
    p.add_argument("--beam", type=int, default=5, help="beam size of the BLEU translations")
    p.add_argument("--device", help="auto (default), cpu, cuda, ...")
    p.add_argument("--no-progress", action="store_true", help="no line per architecture")
    p.set_defaults(func=run)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: seeds are whole numbers, e.g. 1,2"
                                         ) from None
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed")
    return seeds


def run(args: argparse.Namespace) -> int:
    from nasframe.compare._deps import DataSpec, resolve_space
    from nasframe.compare.tabulate import tabulate, tabulate_config
    from nasframe.searching.api import import_space_code

    console = Console(stderr=True)
    options = dict(parse_assignment(o) for o in args.space_option)
    if options and (args.space.endswith(".json") or Path(args.space).is_file()):
        raise ConfigError("--space-option applies to built-in spaces, not a space JSON file")
    import_space_code(args.space)
    space = resolve_space(args.space, **options)
    overrides = dict(parse_assignment(text) for text in args.set)
    for flag, key in (("vocab_size", "vocab_size"), ("max_tokens", "max_tokens"),
                      ("device", "device")):
        if getattr(args, flag) is not None:
            overrides.setdefault(key, getattr(args, flag))
    config = tabulate_config(args.steps, args.d_model, args.embed_dim, args.preset, overrides)

    def said(done: int, total: int, record: dict) -> None:
        if not args.no_progress:
            bleu = "" if record.get("bleu") is None else f", BLEU {record['bleu']:.2f}"
            console.print(f"[{done}/{total}] seed {record['seed']} "
                          f"{record['architecture']}: loss {record['valid_loss']:.4f}{bleu} "
                          f"({record['seconds']:.1f} s)", soft_wrap=True, highlight=False)

    result = tabulate(space, args.out, args.steps, args.seeds, config=config,
                      data=DataSpec(data=args.data), resume=args.resume,
                      max_archs=args.max_archs, jobs=args.jobs, threads=args.threads,
                      bleu_sentences=args.bleu_sentences, beam=args.beam,
                      space_source={"name": args.space, "options": options},
                      console=console, on_record=said)
    console.print(f"space {space.name!r} ({space.size():,} architectures x "
                  f"{len(args.seeds)} seed(s), {args.steps:,} updates each at "
                  f"d={config.model.d_model}): {result.trained} trained, {result.skipped} "
                  f"already recorded, in {result.seconds:.1f} s", soft_wrap=True,
                  highlight=False)
    print(result.table)
    return 0
