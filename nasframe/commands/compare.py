"""``nasframe compare``: strategies and baselines head to head at equal size.

Every row (a strategy searching its space, or a fixed architecture) is searched with the same
budget, sized to the same parameter count (--params, or the first baseline's size), re-trained
with the same budget and scored on the same test sentences, at each seed. Writes
OUT/compare.json (one record per row and seed), OUT/compare.md (mean ± std over seeds) and
OUT/compare.png (bars with error bars; needs matplotlib).

  nasframe compare --strategies darts-reversible,darts,spos,random --baselines transformer \\
      --seeds 3 --out runs/cmp
  nasframe compare --config table1 --out runs/t1      # the packaged benchmarks/table1.toml
  nasframe compare --config benchmarks/table1.toml --out runs/t1
  nasframe compare --config benchmarks/table1.toml --seeds 3 --jobs 2 --out runs/t1
  nasframe compare --config benchmarks/table1.toml --out runs/t1 --resume   # after a kill
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from nasframe.base.errors import ConfigError
from nasframe.run.config import parse_assignment


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def packaged_config(path: Path) -> Path:
    """The compare TOML that ``--config`` names: the file itself when it exists, else a
    packaged benchmark (``nasframe.benchmarks``, the checkout's ``benchmarks/``) named by its
    bare name (``table1``, ``table1.toml``) or by its path in a checkout
    (``benchmarks/table1.toml``), so the paper's tables run from an installed package."""
    if path.exists():
        return path
    parts = path.parts
    if len(parts) == 1 or (len(parts) == 2 and parts[0] == "benchmarks"):
        name = parts[-1] if parts[-1].endswith(".toml") else parts[-1] + ".toml"
        from importlib.resources import files

        packaged = files("nasframe.benchmarks").joinpath(name)
        if packaged.is_file():
            return Path(str(packaged))
    return path  # load_spec reports the missing file


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="strategies and baselines head to head at equal size",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, metavar="FILE.toml",
                   help="rows and shared settings: a TOML file, or the name of a packaged "
                   "one (table1, table2, table5: benchmarks/<name>.toml)")
    p.add_argument("--strategies", type=_names, default=[], metavar="A,B,...",
                   help="one searched row per strategy, on its default space")
    p.add_argument("--baselines", type=_names, default=[], metavar="A,B,...",
                   help="fixed rows: spaces without choices (e.g. transformer) or arch JSON")
    p.add_argument("--space", help="space every --strategies row searches (default: each "
                   "strategy's own)")
    p.add_argument("--space-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option of that space, e.g. layers=1 (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seeds", type=int, help="seeds per row (default 1)")
    p.add_argument("--first-seed", type=int, help="first seed (default 1)")
    p.add_argument("--params", help="parameter target, e.g. 1.1M (default: the first "
                   "baseline's size at the train preset)")
    p.add_argument("--data", help="corpus with train/valid/test splits (default lohelp)")
    p.add_argument("--search-preset", help="search settings preset (default tiny)")
    p.add_argument("--search-steps", type=int, help="search updates of every searched row")
    p.add_argument("--train-preset", help="re-training preset (default tiny)")
    p.add_argument("--train-steps", type=int, help="re-training updates of every row (1500)")
    p.add_argument("--train-minutes", type=float, help="re-training time limit per row")
    p.add_argument("--vocab-size", type=int, help="joint vocabulary size (4000)")
    p.add_argument("--test-sentences", type=int, help="score the first N test sentences (500)")
    p.add_argument("--beam", type=int, help="beam size (5)")
    p.add_argument("--device", help="auto (default), cpu, cuda, ...")
    p.add_argument("--quick", action="store_true", help="every row in miniature: a few "
                   "updates, tiny models, 8 test sentences (a smoke test)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted comparison "
                   "in --out: finished cells are skipped, the interrupted one continues")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run N cells at once, each in its own process with the torch threads "
                   "(--threads, default all cores) shared out; results do not depend on it")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nasframe.compare import compare

    if args.config is None and not (args.strategies or args.baselines):
        raise ConfigError("compare: give --config FILE.toml, or --strategies and/or --baselines")
    if args.config is not None and (args.strategies or args.baselines):
        raise ConfigError("compare: give either --config or --strategies/--baselines, not both")
    settings = {"seeds": args.seeds, "first_seed": args.first_seed, "params": args.params,
                "data": args.data, "search_preset": args.search_preset,
                "search_steps": args.search_steps, "train_preset": args.train_preset,
                "train_steps": args.train_steps, "train_minutes": args.train_minutes,
                "vocab_size": args.vocab_size, "test_sentences": args.test_sentences,
                "beam": args.beam, "device": args.device}
    console = Console(stderr=True)
    if args.config is not None:
        result = compare(packaged_config(args.config), args.out, resume=args.resume,
                         quick=args.quick, progress=not args.no_progress, console=console,
                         jobs=args.jobs, **settings)
    else:
        options = dict(parse_assignment(o) for o in args.space_option)
        from nasframe.compare.spec import spec_from_names
        from nasframe.searching.api import import_space_code

        if args.space:
            import_space_code(args.space)  # typed on the command line

        spec = spec_from_names(args.strategies, args.baselines, args.space, options,
                               **settings)
        result = compare(spec, args.out, resume=args.resume, quick=args.quick,
                         progress=not args.no_progress, console=console, jobs=args.jobs)
    print(result.files["md"].read_text(encoding="utf-8"))
    if result.png_skipped:
        console.print(f"compare.png not written: {result.png_skipped}")
    console.print(f"wrote {', '.join(str(p) for p in result.files.values())}")
    return 0
