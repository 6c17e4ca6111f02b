"""The ``nasframe`` command line.

Subcommands live in the package ``nasframe.commands``: every module there exposes
``register(subparsers)``, adds its parser(s) and sets ``func`` (``func(args) -> int | None``)
with ``set_defaults``. This file only discovers them, so adding a command never touches it.

Errors meant for users (``NasframeError``, and OS errors on the user's files) are printed as
one ``error: <message>`` line without a traceback and exit with code 2, the same code argparse
uses for a bad flag; a diverged run (``NonFiniteError``) exits with code 3.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence
from typing import NoReturn

from nasframe.base.errors import NasframeError

__all__ = ["build_parser", "main"]

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with the same ``error: ...`` line as NasframeError (and exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``nasframe`` argument parser, with every command of ``nasframe.commands``."""
    from nasframe import __version__, commands

    parser = _Parser(prog="nasframe",
                     description="Neural architecture search for seq2seq Transformers.")
    parser.add_argument("--version", action="version", version=f"nasframe {__version__}")
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND",
                                parser_class=_Parser)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    for command in sub.choices.values():
        _add_common_arguments(command)
    return parser


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("every command")
    group.add_argument("--import", dest="imports", action="append", default=[],
                       metavar="MODULE_OR_FILE.py",
                       help="import a module or a Python file first, e.g. one that registers "
                            "your ops or spaces (repeatable; recorded in run directories)")
    group.add_argument("--threads", type=int, default=None, metavar="N",
                       help="torch CPU threads (default: all cores; bitwise resume needs the "
                            "same number; use 1 when other work shares the machine)")
    group.add_argument("--max-params", default=None, metavar="N",
                       help="refuse to build a model of more than N parameters, e.g. 5e9 "
                            "(default: $NASFRAME_MAX_PARAMS or 2e9); a recorded config is "
                            "checked before anything is allocated")


#: Commands that compute enough for the thread count to matter.
_HEAVY = {"search", "train", "translate", "evaluate", "quickstart", "compare", "select", "bench",
          "tabulate"}


def _setup(args: argparse.Namespace) -> None:
    """The parameter limit, threads, then the user's modules: all before the command builds
    anything."""
    import torch

    from nasframe.base.errors import ConfigError
    from nasframe.base.limits import ENV_MAX_PARAMS, parse_max_params, set_max_params
    from nasframe.dsl.plugins import import_user_code

    if args.max_params is None:
        set_max_params(None)  # the environment's, or the default
    else:
        limit = parse_max_params(args.max_params)
        set_max_params(limit)
        os.environ[ENV_MAX_PARAMS] = str(limit)  # for the workers a command spawns
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads {args.threads}: must be at least 1")
        torch.set_num_threads(args.threads)
    elif (args.command in _HEAVY and "OMP_NUM_THREADS" not in os.environ
          and torch.get_num_threads() > 1):  # one thread already: nothing to advise
        cores = os.cpu_count() or 1
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        if cores > 1 and load > 0.5:
            print(f"hint: the machine is busy (load {load:.1f} on {cores} cores); with "
                  f"{torch.get_num_threads()} torch threads this can run many times slower "
                  "than with --threads 1", file=sys.stderr)
    for spec in args.imports:
        import_user_code(spec)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nasframe`` script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        _setup(args)
        code = func(args)
    except NasframeError as err:
        print(f"error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", EXIT_USAGE)
    except OSError as err:  # a file of the user's that the commands did not check first
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
