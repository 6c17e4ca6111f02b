"""Figure 1 as peak memory: one full search step of vanilla DARTS against DARTSformer, by d.

A search step of a first-order bilevel strategy: an alpha update (forward with the weights
frozen, backward to the alphas, Adam) and a weight update (forward with the alphas frozen,
backward to the weights, Adam), as the strategies take them, on the search
supernets of the paper's Fig. 1 (2 choice nodes per block-split or sublayer, L=1):
``darts`` on the standard Transformer space (``darts-transformer``, ordinary backprop) and
``darts-reversible`` on ``dartsformer`` (backprop with reconstruction). The peak counts
everything alive at that moment: weights, gradients, optimiser states, activations and
temporaries (CPU: torch's MemTracker by category, or ``--tracker light``; CUDA:
``max_memory_allocated``). Beside it, the activation bytes autograd keeps for backward.

With ``--space``, the one space is measured with reconstruction off (what DARTS does) and, if
it has a reversible stack, on. With ``--memory-limit 2GiB`` the largest d each strategy
fits in: among the measured sizes, and estimated from a quadratic fit of their peaks.

    nasframe bench memory [--d 48 96 192 384] [--memory-limit 2GiB] [--threads 1] [--quick]
"""
from __future__ import annotations

import argparse
import math
from typing import Any

import numpy
import torch

import nasframe as nf
from nasframe.base.errors import ConfigError
from nasframe.dsl.space import SearchSpace, Stack
from nasframe.engine.memory import parse_bytes, saved_bytes, step_peak
from nasframe.run.config import OptimConfig
from nasframe.searching.updates import (
    alpha_optimizer,
    assign_grads,
    frozen,
    gradients,
    weight_optimizer,
)
from nasframe.text.data.batching import Batch
from nasframe.text.output_loss import seq2seq_loss

from . import _report
from ._report import positive

NAME = "memory_vs_hidden"
_FIRST_WORD = 4  # the batch's random ids start here, above padding and the markers


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--d", type=positive, nargs="+", default=None,
                   help="hidden sizes (default 48 96 192 384; --quick: 48)")
    p.add_argument("--tokens", type=positive, default=32, help="tokens per sentence (32)")
    p.add_argument("--batch", type=positive, default=8, help="sentences per batch (8)")
    p.add_argument("--blocks", type=positive, default=2, help="block repeats (2)")
    p.add_argument("--vocab", type=positive, default=1000,
                   help="vocabulary size (1000); the output layer's logits and their "
                        "gradient grow with it, reconstruction or not")
    p.add_argument("--memory-limit", default=None, metavar="SIZE",
                   help="report the largest measured d whose step peak fits, e.g. 2GiB")
    p.add_argument("--tracker", choices=["auto", "memtracker", "light"], default="auto",
                   help="CPU peak: torch's MemTracker by category, or the light tracker "
                        "(auto: MemTracker, light with --quick)")
    _report.add_space_args(p, None)


def _cases(args: argparse.Namespace) -> dict[str, tuple[SearchSpace, bool]]:
    """label -> (space, memory_saving)."""
    if args.space is None:
        return {"DARTS": (_report.space_from_args(args, "darts-transformer", layers=1), False),
                "DARTSformer": (_report.space_from_args(args, "dartsformer", layers=1), True)}
    space = _report.space_from_args(args)
    cases = {f"{space.name}, reconstruction off": (space, False)}
    if any(isinstance(spec, Stack) for _, spec in space.parts()):
        cases[f"{space.name}, reconstruction on"] = (space, True)
    return cases


def measure(space: SearchSpace, saving: bool, d: int, args: argparse.Namespace,
            device: torch.device, tracker: str) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    src = torch.randint(_FIRST_WORD, args.vocab, (args.batch, args.tokens), generator=g)
    tgt = torch.randint(_FIRST_WORD, args.vocab, (args.batch, args.tokens), generator=g)
    src, tgt = src.to(device), tgt.to(device)
    batch = Batch(src, tgt, tgt)
    torch.manual_seed(0)
    cfg = nf.ModelConfig(d_model=d, blocks=args.blocks, memory_saving=saving)
    model = nf.Supernet(space, cfg, vocab_size=args.vocab).to(device).train()
    alphas = list(model.alphas.parameters())
    weights = [p for p in model.parameters() if all(p is not a for a in alphas)]
    optim = OptimConfig()
    w_opt, _ = weight_optimizer(weights, optim)
    # (optimiser, what it updates, what stays constant while the graph is built), as the
    # bilevel strategies take them
    steps = [(alpha_optimizer(alphas, optim), alphas, weights)] if alphas else []
    steps.append((w_opt, weights, alphas))

    def step(between) -> None:
        for k, (opt, params, constants) in enumerate(steps):
            if k:
                between()
            opt.zero_grad(set_to_none=True)
            with frozen(constants):
                loss = seq2seq_loss(model, batch)  # the strategies' loss
            assign_grads(params, gradients(loss, params))
            opt.step()

    step(lambda: None)  # the optimiser states exist from the first update on
    kept = saved_bytes(lambda: seq2seq_loss(model, batch),
                       exclude=list(model.parameters())).bytes
    peak = step_peak(step, model, [opt for opt, _, _ in steps], device, tracker)
    return {"peak": peak, "kept": kept, "parameters": sum(p.numel() for p in weights)}


def _estimate(measured: list[tuple[int, int]], limit: int, multiple: int) -> int | None:
    """The largest d (a multiple of ``multiple``) whose peak, by a quadratic fit of the
    measured peaks against d (weights and optimiser states grow as d**2), is within ``limit``;
    None with fewer than three sizes measured."""
    if len(measured) < 3:
        return None
    coef = numpy.polyfit([d for d, _ in measured], [b for _, b in measured], 2)
    best, d = None, multiple
    while d <= 64 * max(x for x, _ in measured):
        if numpy.polyval(coef, d) <= limit:
            best = d
        d += multiple
    return best


def run(args: argparse.Namespace) -> None:
    if args.vocab <= _FIRST_WORD:
        raise ConfigError(f"--vocab must be above {_FIRST_WORD} (ids 0-{_FIRST_WORD - 1} are "
                          f"padding and markers), got {args.vocab}")
    setup = _report.setup(args)
    sizes = args.d or ([48] if args.quick else [48, 96, 192, 384])
    if args.quick:
        args.tokens, args.batch, args.blocks = min(args.tokens, 8), min(args.batch, 2), 1
    cases = _cases(args)
    for space, _ in cases.values():
        _report.check_d(space, sizes)
    limit = parse_bytes(args.memory_limit) if args.memory_limit else None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tracker = "light" if args.tracker == "auto" and args.quick else (
        "memtracker" if args.tracker == "auto" else args.tracker)
    if device.type == "cuda":
        tracker = "cuda"
    rows: list[dict[str, Any]] = []
    for d in sizes:
        for label, (space, saving) in cases.items():
            try:
                r = measure(space, saving, d, args, device, tracker)
            except torch.OutOfMemoryError:
                rows.append({"d": d, "method": label, "peak MiB": None})
                continue
            rows.append({"d": d, "method": label, "space": space.name,
                         "peak MiB": r["peak"].total / 2**20, "kept MiB": r["kept"] / 2**20,
                         "weights (parameters)": r["parameters"],
                         "categories (bytes)": r["peak"].categories,
                         "peak bytes": r["peak"].total, "measured with": r["peak"].how})
            del r
    first = next(iter(cases))
    for d in sizes:
        at_d = [r for r in rows if r["d"] == d]
        base = next(r["peak MiB"] for r in at_d if r["method"] == first)
        for r in at_d:
            if base and r["peak MiB"]:
                r[f"{first} / this"] = base / r["peak MiB"]
    fits: dict[str, dict[str, int | None]] = {}
    if limit is not None:
        multiple = math.lcm(*(need for space, _ in cases.values()
                              for need, _ in _report.width_rule(space)))
        for label in cases:
            measured = [(r["d"], r["peak bytes"]) for r in rows
                        if r["method"] == label and r.get("peak bytes") is not None]
            ok = [d for d, b in measured if b <= limit]
            fits[label] = {"measured": max(ok) if ok else None,
                           "estimated": _estimate(measured, limit, multiple)}
    meta = {"device": _report.device_label(device), **setup,
            **_report.args_meta(args),
            "d": sizes, "tracker": tracker, "measured with": rows[0].get("measured with"),
            "step": "alpha update + weight update (first order), Adam states present",
            "largest d within the limit": fits}
    cols = ["d", "method", "peak MiB", "kept MiB", f"{first} / this"]
    _report.write(NAME, rows, meta, cols, args.out)
    if limit is not None:
        for label, fit in fits.items():
            print(f"{label}: largest d within {args.memory_limit}: measured "
                  f"{fit['measured'] or 'none'}, estimated {fit['estimated'] or '-'} "
                  "(quadratic fit of the measured peaks, multiples of the width rule)")
    series = {f"{label} (peak)": ([r["d"] for r in rows if r["method"] == label and r["peak MiB"]],
                                  [r["peak MiB"] for r in rows
                                   if r["method"] == label and r["peak MiB"]])
              for label in cases}
    _report.plot(NAME, series, "hidden size d", f"peak MiB of one search step ({tracker})",
                 args.out)


def main(argv: list[str] | None = None) -> None:
    _report.run_main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
