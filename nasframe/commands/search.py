"""``nasframe search | strategies | derive | show``: run a search and inspect what it found."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from nasframe.base.errors import CheckpointError, ConfigError
from nasframe.dsl.architecture import Architecture
from nasframe.run.config import (
    PRESET_HELP,
    SearchConfig,
    apply_overrides,
    default_preset,
    load_config,
    parse_assignment,
    preset_names,
)
from nasframe.run.rundir import check_recorded_code

__all__ = ["register"]

# flag dest -> dotted config key; a flag left out (None) keeps the preset/TOML value.
_FLAG_KEYS = {
    "steps": "steps", "seed": "seed", "checkpoint_every": "checkpoint_every",
    "log_every": "log_every", "keep_checkpoints": "keep_checkpoints", "device": "device",
    "skip_nonfinite": "skip_nonfinite", "src": "data.src", "tgt": "data.tgt",
    "holdout": "data.holdout",
    "dtype": "dtype", "precision": "precision", "data": "data.source",
    "vocab_size": "data.vocab_size",
    "max_tokens": "data.max_tokens", "d_model": "model.d_model", "embed_dim": "model.embed_dim",
    "blocks": "model.blocks", "dropout": "model.dropout", "memory_saving": "model.memory_saving",
    "keep_layers": "model.keep_layers", "memory_limit": "memory_limit",
    "lr": "optim.lr", "warmup": "optim.warmup", "alpha_lr": "optim.alpha_lr",
    "alpha_warmup": "optim.alpha_warmup", "clip_norm": "optim.clip_norm",
    "second_order": "optim.second_order", "population": "evolution.population",
    "iterations": "evolution.iterations", "top_k": "evolution.top_k",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``search``, ``strategies``, ``derive`` and ``show`` to the command line."""
    _register_search(subparsers)
    p = subparsers.add_parser("strategies", help="list the installed search strategies",
                              description="List installed strategies (built-in and plugins "
                              "of the 'nasframe.strategies' entry-point group).")
    p.set_defaults(func=_strategies)
    p = subparsers.add_parser("derive", help="derive the architecture of a search checkpoint",
                              description="Rebuild a search checkpoint, derive its "
                              "architecture, print it and write it as JSON.")
    p.add_argument("checkpoint", type=Path, help="runs/x/checkpoints/checkpoint_N.pt, or a "
                   "search run directory (its newest checkpoint)")
    p.add_argument("--out", type=Path, default=None,
                   help="architecture JSON to write (default: next to the checkpoint, "
                        "checkpoint_N.arch.json)")
    p.set_defaults(func=_derive)
    p = subparsers.add_parser("show", help="print an architecture JSON as a table",
                              description="Print the chosen op of every choice node, with "
                              "softmax(alpha) when the file records it.")
    p.add_argument("arch", type=Path, help="architecture JSON (e.g. runs/x/arch.json), or a "
                   "search run directory (its arch.json)")
    p.add_argument("--top", type=int, default=3, help="probabilities shown per node (3)")
    p.add_argument("--plot", type=Path, default=None, metavar="PNG",
                   help="with a search run directory: draw softmax(alpha) of every node over "
                        "updates (from its arch_stepN.json files) and the mean entropy")
    p.set_defaults(func=_show)


def _register_search(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "search", help="search an architecture",
        description="Search a space with a strategy. Settings come from a preset, then a TOML "
        "file (--config), then these flags; the run directory records the result "
        "(config.json, space.json, metrics.jsonl, checkpoint_N.pt, arch_stepN.json, arch.json). "
        "Flags left out keep the preset/TOML value, shown as [paper / small / tiny].")
    run = p.add_argument_group("run")
    run.add_argument("--space", default=None,
                     help="built-in space name or space JSON file (default: the strategy's "
                          "default space: dartsformer for darts-reversible and spos, "
                          "darts-transformer for darts)")
    run.add_argument("--space-option", action="append", default=[], metavar="KEY=VALUE",
                     help="option of a built-in space, e.g. layers=1 or pool=avg (repeatable)")
    run.add_argument("--strategy", default=None,
                     help="registered strategy (see 'nasframe strategies'; default "
                          "darts-reversible)")
    run.add_argument("--preset", choices=preset_names(), default=None,
                     help="settings to start from: " + "; ".join(
                         f"{k} ({PRESET_HELP[k]})" for k in preset_names())
                     + " (default: the TOML's preset, else tiny on a CPU and small on a GPU)")
    run.add_argument("--config", type=Path, default=None, metavar="FILE.toml",
                     help="TOML settings over the preset ([model], [data], [optim], "
                          "[evolution] sections)")
    run.add_argument("--out", type=Path, required=True, help="run directory")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its latest checkpoint with its "
                          "recorded config, space and strategy; only --steps, "
                          "--checkpoint-every, --log-every, --keep-checkpoints, --device and "
                          "--skip-nonfinite may change")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bar")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="any setting by its dotted name, e.g. optim.fd_eps=0.02 (repeatable)")
    data = p.add_argument_group("data")
    data.add_argument("--data", default=None, metavar="SOURCE",
                      help="'lohelp' (embedded En-De corpus), 'synthetic:copy|reverse|sort', "
                           "or a TSV file/folder")
    data.add_argument("--src", default=None, help="source side of your corpus, one sentence "
                      "per line (with --tgt, instead of --data)")
    data.add_argument("--tgt", default=None, help="target side, aligned with --src")
    data.add_argument("--holdout", type=parse_fractions, default=None, metavar="VALID,TEST",
                      help="fractions held out of a corpus without splits, never searched "
                           "nor trained on (default 0.05,0.05)")
    data.add_argument("--vocab-size", type=int, default=None,
                      help="sentencepiece vocabulary size (synthetic: number of token ids)")
    data.add_argument("--max-tokens", type=int, default=None, help="tokens per batch")
    loop = p.add_argument_group("loop")
    loop.add_argument("--steps", type=int, default=None, help="updates")
    loop.add_argument("--checkpoint-every", type=int, default=None, help="updates between "
                      "checkpoints")
    loop.add_argument("--log-every", type=int, default=None, help="updates between metrics")
    loop.add_argument("--keep-checkpoints", type=int, default=None,
                      help="keep only the newest K checkpoint files")
    loop.add_argument("--skip-nonfinite", type=int, default=None, metavar="N",
                      help="skip up to N batches with a non-finite loss or gradient (w and "
                           "alpha unchanged) instead of stopping at the first")
    loop.add_argument("--seed", type=int, default=None, help="seed of weights, data order, "
                      "sampling and evolution")
    loop.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")
    loop.add_argument("--dtype", choices=["float32", "float64"], default=None,
                      help="parameter dtype")
    loop.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                      help="bf16: autocast the ops (the reversible stream stays fp32)")
    model = p.add_argument_group("model")
    model.add_argument("--d-model", type=int, default=None, help="hidden size d")
    model.add_argument("--embed-dim", type=int, default=None, help="factorised embedding E")
    model.add_argument("--blocks", type=int, default=None, help="repeats of the searched block")
    model.add_argument("--dropout", type=float, default=None, help="dropout in every op")
    model.add_argument("--memory-saving", action=argparse.BooleanOptionalAction, default=None,
                       help="backprop with reconstruction on reversible spaces")
    model.add_argument("--keep-layers", type=int, default=None, metavar="K",
                       help="the top K reversible layers of each stack keep their activations "
                            "(faster, more memory); the rest reconstruct")
    model.add_argument("--memory-limit", default=None, metavar="SIZE",
                       help="instead of --keep-layers: the largest K whose kept activations "
                            "fit SIZE (e.g. 500MB), measured on a batch at the start")
    optim = p.add_argument_group("optimisation")
    optim.add_argument("--lr", type=float, default=None, help="peak lr of the weights")
    optim.add_argument("--warmup", type=int, default=None, help="inverse-sqrt warmup updates")
    optim.add_argument("--alpha-lr", type=float, default=None, help="lr of the alphas")
    optim.add_argument("--alpha-warmup", type=int, default=None,
                       help="updates before the alphas start training")
    optim.add_argument("--clip-norm", type=float, default=None, help="max gradient norm of w")
    optim.add_argument("--second-order", action=argparse.BooleanOptionalAction, default=None,
                       help="second-order DARTS alpha gradient")
    evo = p.add_argument_group("evolution (spos)")
    evo.add_argument("--population", type=int, default=None, help="architectures per "
                     "generation")
    evo.add_argument("--iterations", type=int, default=None, help="generations after the "
                     "random one")
    evo.add_argument("--top-k", type=int, default=None, help="architectures reported")
    _add_preset_values(p)
    p.set_defaults(func=_search)


def _add_preset_values(parser: argparse.ArgumentParser) -> None:
    """Append each setting's value in every preset to its flag's help, so --help is exact."""
    presets = {name: SearchConfig.preset_config(name).model_dump() for name in preset_names()}
    for action in parser._actions:
        key = _FLAG_KEYS.get(action.dest)
        if key is None or action.help is None:
            continue
        values = []
        for dump in presets.values():
            node: Any = dump
            for part in key.split("."):
                node = node[part]
            values.append(str(node))
        action.help += f" [{' / '.join(values)}]"


# ----------------------------------------------------------------------------- search

def parse_fractions(text: str) -> tuple[float, float]:
    """``"0.05,0.05"`` -> ``(0.05, 0.05)``."""
    try:
        valid, test = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected VALID,TEST such as 0.05,0.05"
                                         ) from None
    return valid, test


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags and ``--set``, by dotted name (file paths absolute, so
    the recorded config works from any directory)."""
    for side in ("src", "tgt"):
        if getattr(args, side, None) is not None:
            setattr(args, side, str(Path(getattr(args, side)).expanduser().resolve()))
    overrides: dict[str, Any] = {key: getattr(args, dest) for dest, key in _FLAG_KEYS.items()
                                 if getattr(args, dest) is not None}
    if args.strategy is not None:
        overrides["strategy"] = args.strategy
    overrides.update(parse_assignment(text) for text in args.set)
    return overrides


def search_config(args: argparse.Namespace) -> SearchConfig:
    """Preset < TOML < flags (< --set)."""
    if args.config is not None:
        base = SearchConfig.preset_config(args.preset) if args.preset else None
        cfg = load_config(args.config, base)
    else:
        preset = args.preset
        if preset is None:
            preset = default_preset(args.device or "auto")
            Console(stderr=True).print(f"preset: {preset} ({PRESET_HELP[preset]}; chosen for "
                                       "this machine, --preset to change)")
        cfg = SearchConfig.preset_config(preset)
    overrides = flag_overrides(args)
    return apply_overrides(cfg, overrides) if overrides else cfg


def _space(args: argparse.Namespace, cfg: SearchConfig) -> Any:
    from nasframe.searching.api import import_space_code, resolve_space
    from nasframe.searching.strategy import get_strategy

    options = dict(parse_assignment(o) for o in args.space_option)
    name = args.space or cfg.space or get_strategy(cfg.strategy).default_space
    if options and (str(name).endswith(".json") or Path(str(name)).is_file()):
        raise ConfigError("--space-option applies to built-in spaces, not a space JSON file")
    if args.space:
        import_space_code(args.space)  # typed on the command line; a TOML's space imports nothing
    return resolve_space(name, **options)


def _search(args: argparse.Namespace) -> int:
    from nasframe.searching.api import search

    if args.resume:  # the run's recorded config, space and strategy; flags may change a few
        requested = search_config(args) if (args.preset or args.config) else None
        space = _space(args, requested or SearchConfig()) if args.space else None
        overrides = flag_overrides(args)
        overrides.pop("strategy", None)
        result = search(space, args.strategy, config=requested, out=args.out, resume=True,
                        overrides=overrides, progress=args.progress)
    else:
        cfg = search_config(args)
        space = _space(args, cfg)
        if args.space is not None:
            cfg = apply_overrides(cfg, {"space": str(args.space)})
        result = search(space, cfg.strategy, config=cfg, out=args.out, progress=args.progress)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return 0
    console = Console()
    console.print(result.architecture.table())
    for arch, score in result.candidates[1:]:
        console.print(f"candidate (search-valid loss {score:.4f}): "
                      + ", ".join(f"{n}={op}" for n, op in arch.choices.items()))
    console.print(f"run directory: {args.out}  (arch.json, metrics.jsonl, checkpoints/)")
    return 0


# ----------------------------------------------------------------------------- the others

def _strategies(args: argparse.Namespace) -> int:
    from nasframe.searching.strategy import available_strategies, get_strategy

    table = Table(title="installed search strategies")
    for col in ("name", "backbone", "default space", "description"):
        table.add_column(col)
    for name, description in available_strategies().items():
        try:
            cls = get_strategy(name)
            backbone, space = getattr(cls, "backbone", "any"), cls.default_space
        except ConfigError:
            backbone = space = "?"
        table.add_row(name, backbone, space, description)
    Console(width=160).print(table)
    return 0


def _derive(args: argparse.Namespace) -> int:
    from nasframe.searching.api import derive_checkpoint

    arch = derive_checkpoint(args.checkpoint)
    source = args.checkpoint
    if source.is_dir():
        out = args.out or source / "arch_derived.json"
    else:
        out = args.out or source.with_name(source.stem + ".arch.json")
    arch.save(out)
    Console().print(arch.table())
    print(f"wrote {out}")
    return 0


def _show(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise ConfigError(f"--top {args.top}: must be at least 1")
    run_dir = args.arch if args.arch.is_dir() else None
    path = args.arch / "arch.json" if run_dir is not None else args.arch
    if args.plot is not None and run_dir is None:
        raise ConfigError(f"--plot: give the search run directory ({args.arch.parent}), not "
                          f"{args.arch.name}: the plot reads every arch_stepN.json there")
    check_recorded_code(path.parent)  # the user's ops, if a run recorded them: imported?
    try:
        arch = Architecture.load(path)
    except json.JSONDecodeError as err:  # pragma: no cover - from_json reports it already
        raise CheckpointError(f"{path}: {err}") from None
    Console().print(arch.table(top=args.top))
    if arch.note:
        print(arch.note)
    if args.plot is not None:
        from nasframe.compare.plots import plot_alphas

        print(f"wrote {plot_alphas(run_dir, args.plot)}")
    return 0
