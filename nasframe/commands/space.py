"""``nasframe space NAME``: size and choice nodes of a space; ``--memory`` compares one search
step with backprop-with-reconstruction against plain autograd."""
from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

import nasframe as nf
from nasframe.engine.memory import measure_step
from nasframe.searching.api import import_space_code, resolve_space


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("space", help="show a search space: size, choice nodes, memory of a step",
                       description=__doc__)
    p.add_argument("name", nargs="?", default="dartsformer",
                   help=f"built-in space ({', '.join(nf.spaces.names())}) or a space JSON file")
    p.add_argument("--layers", type=int, default=None, help="L, searched layers per block")
    p.add_argument("--memory", action="store_true",
                   help="run one step of a small supernet with and without reconstruction")
    p.add_argument("--d-model", type=int, default=96, help="hidden size for --memory (96)")
    p.add_argument("--blocks", type=int, default=2, help="block repeats for --memory (2)")
    p.add_argument("--tokens", type=int, default=24, help="sentence length for --memory (24)")
    p.add_argument("--batch", type=int, default=8, help="sentences for --memory (8)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    console = Console()
    options = {} if args.layers is None else {"layers": args.layers}
    import_space_code(args.name)  # typed on the command line
    space = resolve_space(args.name, **options)
    console.print(f"space [bold]{space.name}[/]: {space.size():,} architectures "
                  f"({space.size():.2e}), {len(space.choice_nodes())} choice nodes")
    table = Table(title="choice nodes (nodes that share a candidate set share a row)")
    for col in ("nodes", "candidates", "ops"):
        table.add_column(col)
    groups: dict[tuple[str, ...], list[str]] = {}
    for node, labels in space.choice_nodes().items():
        groups.setdefault(tuple(labels), []).append(node)
    for labels, nodes in groups.items():
        table.add_row("\n".join(nodes), str(len(labels)), ", ".join(labels))
    console.print(table)
    if args.memory:
        _memory(space, args, console)
    return 0


def _memory(space: nf.SearchSpace, args: argparse.Namespace, console: Console) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, 1000, (args.batch, args.tokens), generator=g).to(device)
    tgt = torch.randint(4, 1000, (args.batch, args.tokens), generator=g).to(device)
    rows = []
    for saving in (False, True):
        torch.manual_seed(0)
        cfg = nf.ModelConfig(d_model=args.d_model, blocks=args.blocks, memory_saving=saving)
        model = nf.Supernet(space, cfg, vocab_size=1000).to(device)
        start = time.perf_counter()
        figures = measure_step(model, src, tgt)
        rows.append((saving, figures, time.perf_counter() - start))
    table = Table(title=f"one search step, d={args.d_model}, {args.blocks} blocks, "
                        f"batch {args.batch}x{args.tokens}, device {device}")
    for col in ("backprop", "kept for backward", "CUDA peak", "seconds"):
        table.add_column(col)
    for saving, fig, secs in rows:
        peak = fig["peak_bytes"]
        table.add_row("with reconstruction" if saving else "plain autograd",
                      f"{fig['saved_bytes'] / 2**20:.2f} MiB",
                      "-" if peak is None else f"{peak / 2**20:.1f} MiB", f"{secs:.2f}")
    console.print(table)
    plain, saving = rows[0][1]["saved_bytes"], rows[1][1]["saved_bytes"]
    console.print(f"activation memory kept for backward: {saving / 2**20:.2f} MiB instead of "
                  f"{plain / 2**20:.2f} MiB ({plain / max(saving, 1):.1f}x less)")
