"""``nasframe bench memory|speed|reconstruction|decoding|strategies|ops``: the benchmarks of the
installed package (``nasframe.benchmarks``), each writing ``<name>.json`` (labelled with the
device and thread count), a table and, with matplotlib, ``<name>.png`` into ``--out``."""
from __future__ import annotations

import argparse
import importlib

#: command -> module of nasframe.benchmarks
BENCHMARKS = {
    "memory": ("memory_vs_hidden", "peak memory of one search step by d: DARTS vs DARTSformer "
               "(the paper's Fig. 1)"),
    "speed": ("speed", "time against peak memory over keep_layers K, and precision"),
    "reconstruction": ("reconstruction", "exactness and cost of backprop with reconstruction"),
    "decoding": ("decoding", "incremental decoding: reversible vs Transformer, same parameters"),
    "strategies": ("strategies", "search updates per second of each built-in strategy"),
    "ops": ("ops", "memory kept and peak, and time, of each candidate op over its input"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: memory, speed, reconstruction, decoding, "
                                     "strategies, ops", description=__doc__)
    inner = p.add_subparsers(title="benchmarks", dest="benchmark", metavar="BENCHMARK",
                             required=True, parser_class=type(p))
    for name, (module_name, help_text) in BENCHMARKS.items():
        module = importlib.import_module(f"nasframe.benchmarks.{module_name}")
        b = inner.add_parser(name, help=help_text, description=module.__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(b)
        module._report.add_common_args(b, threads=False)
        _after_the_name(b)
        b.set_defaults(func=_runner(module))


def _after_the_name(b: argparse.ArgumentParser) -> None:
    """cli.py gives ``bench`` itself --import and --threads; these let them follow the
    benchmark's name too (``nasframe bench memory --threads 1``). SUPPRESS keeps a value
    given before the name when none is given after it."""
    group = b.add_argument_group("every command (also accepted before the benchmark's name)")
    group.add_argument("--import", dest="imports", action="append", default=argparse.SUPPRESS,
                       metavar="MODULE_OR_FILE.py", help="import a module or Python file first")
    group.add_argument("--threads", type=int, default=argparse.SUPPRESS, metavar="N",
                       help="torch CPU threads (recorded in the results)")


def _runner(module):  # noqa: ANN001, ANN202 - a module of nasframe.benchmarks
    def run(args: argparse.Namespace) -> int:
        module.run(args)
        return 0
    return run
