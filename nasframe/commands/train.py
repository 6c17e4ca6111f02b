"""``nasframe train``: re-train an architecture with ordinary backprop into a run directory.

The run directory then holds everything ``nasframe translate`` and ``nasframe evaluate`` need
(config, architecture, vocabulary, checkpoints, metrics).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

import nasframe as nf
from nasframe.base.errors import ConfigError, SpaceError
from nasframe.commands.search import parse_fractions
from nasframe.run.config import (
    PRESET_HELP,
    TRAIN_PRESETS,
    TrainConfig,
    apply_overrides,
    default_preset,
    load_config,
    parse_assignment,
)
from nasframe.run.rundir import check_recorded_code
from nasframe.text.data import DataSpec
from nasframe.text.training import train


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="re-train an architecture (ordinary backprop)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", help="architecture JSON (from a search, or written by hand), or "
                   "the name of a space without choices such as 'transformer'")
    p.add_argument("--out", required=True, help="run directory")
    add_data_arguments(p, valid=True)
    p.add_argument("--preset", default=None, choices=list(TRAIN_PRESETS),
                   help="model size and schedule: " + "; ".join(
                       f"{k} ({PRESET_HELP[k]})" for k in TRAIN_PRESETS)
                   + " (default: tiny on a CPU, small on a GPU)")
    p.add_argument("--config", type=Path, metavar="FILE.toml",
                   help="TOML settings over the preset (top-level fields and [model])")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any setting by its dotted name, e.g. model.d_model=96 (repeatable)")
    p.add_argument("--steps", type=int, help="stop after this many updates")
    p.add_argument("--minutes", type=float, help="stop after this much wall-clock time")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out exactly, with its recorded architecture, "
                        "data and config; only --steps, --minutes, --checkpoint-every, "
                        "--average-last, --device and --skip-nonfinite may change")
    p.add_argument("--average-last", type=int, metavar="K",
                   help="also write the average of the last K checkpoints (and use it)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--params", metavar="COUNT",
                      help="size the model (blocks, and d where needed) to this many "
                           "parameters within 5%%, e.g. 1.1M")
    size.add_argument("--match-params", metavar="ARCH",
                      help="size the model to the parameter count of another architecture "
                           "(JSON or a space without choices, e.g. transformer) at this config")
    p.add_argument("--d-model", type=int, help="hidden size d")
    p.add_argument("--embed-dim", type=int, help="factorised embedding size E")
    p.add_argument("--blocks", type=int, help="repeats of the architecture's block of layers")
    p.add_argument("--dropout", type=float, help="dropout in every op")
    p.add_argument("--max-tokens", type=int, help="token budget of a batch")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--warmup", type=int, help="warmup updates")
    p.add_argument("--checkpoint-every", type=int, help="updates between checkpoints")
    p.add_argument("--max-len", type=int, help="drop pairs longer than this (default 250)")
    p.add_argument("--vocab-size", type=int, help="joint sentencepiece vocabulary size")
    p.add_argument("--skip-nonfinite", type=int, metavar="N",
                   help="skip up to N batches with a non-finite loss or gradient instead of "
                        "stopping at the first (default 0)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"],
                   help="autocast in bf16 or fp16 (with a gradient scaler); default fp32")
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
        p.add_argument("--holdout", type=parse_fractions, metavar="VALID,TEST",
                       help="fractions held out of a corpus without splits (one TSV, or "
                            "--src/--tgt) for validation and test, never trained on "
                            "(default 0.05,0.05)")
        p.add_argument("--valid", nargs="+", metavar="FILE",
                       help="validation data: one TSV or two aligned files (default: the "
                       "corpus's valid split, or 2%% of the training pairs held out)")


def load_architecture(name: str) -> nf.Architecture:
    """An architecture JSON file, or a built-in space that has no choices."""
    path = Path(name)
    if path.exists() or name.endswith(".json"):
        check_recorded_code(path.parent)  # an arch.json of a run that used the user's ops
        return nf.Architecture.load(path)
    if name in nf.spaces.names():
        space = nf.spaces.get(name)
        if space.choice_nodes():
            raise SpaceError(f"--arch {name}: space {name!r} has choices; give a derived "
                             "architecture JSON (from `nasframe search`) instead")
        return nf.Architecture(space=space, choices={})
    raise SpaceError(f"--arch {name}: no such file (nor a built-in space without choices)")


#: flag dest -> dotted TrainConfig field
_FLAG_KEYS = {
    "steps": "steps", "minutes": "minutes", "average_last": "average_last",
    "device": "device", "max_tokens": "max_tokens", "lr": "lr", "warmup": "warmup",
    "checkpoint_every": "checkpoint_every", "max_len": "max_len", "vocab_size": "vocab_size",
    "seed": "seed", "skip_nonfinite": "skip_nonfinite", "precision": "precision",
    "d_model": "model.d_model",
    "embed_dim": "model.embed_dim", "blocks": "model.blocks", "dropout": "model.dropout",
}


def train_overrides(args: argparse.Namespace) -> dict[str, object]:
    overrides = {key: getattr(args, dest) for dest, key in _FLAG_KEYS.items()
                 if getattr(args, dest) is not None}
    if args.minutes is not None and args.steps is None:
        overrides["steps"] = None  # the time budget alone decides
    overrides.update(parse_assignment(text) for text in args.set)
    return overrides


def train_config(args: argparse.Namespace, console: Console) -> TrainConfig:
    """Preset (chosen by device when not given) < TOML < flags (< --set)."""
    preset = args.preset
    if preset is None and args.config is None:
        preset = default_preset(args.device or "auto")
        console.print(f"preset: {preset} ({PRESET_HELP[preset]}; chosen for this machine, "
                      "--preset to change)")
    if args.config is not None:
        base = TrainConfig.preset_config(preset) if preset else None
        return load_config(args.config, base, kind=TrainConfig)
    return TrainConfig.preset_config(preset)


def sized(arch: nf.Architecture | None, config: TrainConfig, args: argparse.Namespace,
          console: Console) -> dict[str, object]:
    """The overrides with ``model`` sized to ``--params`` or ``--match-params``."""
    from nasframe.engine.sizing import count_for, format_count, match_size, parameter_breakdown

    if arch is None:
        raise ConfigError("--params/--match-params: give the architecture to size (--arch)")
    if args.match_params:
        target = count_for(load_architecture(args.match_params), config.model,
                           config.vocab_size)
    else:
        target = args.params
    model = match_size(arch, target, config.model, config.vocab_size)
    parts = parameter_breakdown(nf.build_model(arch, model, config.vocab_size))
    console.print(f"sized to {format_count(parts['total'])} parameters (target "
                  f"{format_count(int(target)) if not isinstance(target, str) else target}): "
                  f"d={model.d_model}, blocks={model.blocks}; embedding "
                  f"{format_count(parts['embedding'])}, other "
                  f"{format_count(parts['non_embedding'])}")
    return {**config.model_dump(), "model": model.model_dump()}


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    data = DataSpec(data=args.data, src=args.src, tgt=args.tgt,
                    valid=tuple(args.valid) if args.valid else None,
                    **({"holdout": args.holdout} if args.holdout else {}))
    arch = load_architecture(args.arch) if args.arch else None
    config = None if args.resume else train_config(args, console)
    overrides = train_overrides(args)
    if (args.params or args.match_params) and not args.resume:
        overrides = sized(arch, apply_overrides(config, overrides), args, console)
    result = train(arch, args.out, config, data, resume=args.resume, overrides=overrides,
                   progress=not args.no_progress, console=console)
    best = "-" if result.best_valid_loss is None else f"{result.best_valid_loss:.4f}"
    console.print(f"trained {result.steps:,} updates in {result.train_seconds / 60:.1f} min; "
                  f"best validation loss {best}; model: {result.checkpoint}", soft_wrap=True)
    print(result.run_dir)
    return 0
