"""Speed against memory, and precision, of backprop with reconstruction.

Part 1, the memory budget (``ModelConfig.keep_layers``): on a DARTSformer supernet (weighted
choices, dropout 0.1, float32) with L layers per stack, time of one weight step's forward +
backward (the alphas frozen while the graph is built, as the bilevel strategies take it) and
the memory it needs for K = 0..L kept layers per stack, against plain autograd
(``memory_saving=False``). Time: median of paired ratios over alternating repetitions (with
min/max). Memory: bytes kept for backward (``saved_tensors_hooks``) and the peak during the
step above what existed before it (activations, temporaries and the gradients it returns;
``nasframe.engine.memory.allocated_peak_bytes`` on CPU, ``max_memory_allocated`` on CUDA).

Part 2, precision: for depths 2/6/12/24, the reconstruction drift max |inverse(forward(x)) - x|
of the encoder stack and the relative error of all gradients (global norm and worst tensor)
against float64, for float32 and for bf16 autocast (CPU; also fp16 on CUDA), with
reconstruction and, to separate what reconstruction adds, with plain autograd at the same
precision. Dropout is off here so that every precision computes the same function.

    nasframe bench speed [--d 96] [--layers 6] [--depths 2 6 12 24] [--threads 1] [--quick]
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
from collections.abc import Sequence

import torch

import nasframe as nf
from nasframe.base.errors import ConfigError
from nasframe.dsl.space import Stack
from nasframe.engine.memory import device_peak_bytes, saved_bytes
from nasframe.searching.updates import frozen

from . import _report
from ._report import positive


def _config(model: nf.Supernet, saving: bool, keep: int) -> None:
    for m in model.modules():
        if hasattr(m, "memory_saving"):
            m.memory_saving, m.keep_last = saving, keep


def _step(model: nf.Supernet, src: torch.Tensor, tgt: torch.Tensor,
          amp: contextlib.AbstractContextManager | None = None,
          constants: Sequence[torch.Tensor] = ()) -> list[torch.Tensor]:
    """Gradients of every parameter but ``constants``, which are frozen while the graph is
    built (the alphas, for the weight update a bilevel strategy takes)."""
    torch.manual_seed(1)
    with amp or contextlib.nullcontext(), frozen(constants):
        logits = model(src, tgt)
    loss = logits.float().log_softmax(-1).mean()
    skip = {id(p) for p in constants}
    params = [p for p in model.parameters() if id(p) not in skip]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _peak(model: nf.Supernet, src: torch.Tensor, tgt: torch.Tensor,
          device: torch.device) -> float:
    """Peak bytes allocated during one weight step (activations, temporaries, the
    gradients)."""
    alphas = list(model.arch_parameters())
    return device_peak_bytes(lambda: _step(model, src, tgt, constants=alphas), device)


def time_memory(args: argparse.Namespace, device: torch.device, space: nf.SearchSpace,
                d: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, 500, tuple(args.batch), generator=g).to(device)
    tgt = torch.randint(4, 500, tuple(args.batch), generator=g).to(device)
    torch.manual_seed(0)
    cfg = nf.ModelConfig(d_model=d, blocks=args.layers, dropout=0.1)
    model = nf.Supernet(space, cfg, vocab_size=500).to(device).train()
    params = list(model.parameters())
    alphas = list(model.arch_parameters())
    settings = {"plain": (False, 0), **{f"K={k}": (True, k) for k in range(args.layers + 1)}}

    def runner(saving: bool, keep: int):
        def run() -> None:
            _config(model, saving, keep)
            _step(model, src, tgt, constants=alphas)
        return run

    times = _report.paired({name: runner(*s) for name, s in settings.items()}, args.repeats,
                           device=device)
    rows = []
    for name, (saving, keep) in settings.items():
        _config(model, saving, keep)
        with frozen(alphas):
            kept = saved_bytes(lambda: model(src, tgt).sum(), exclude=params).bytes
        ratio = _report.ratio_summary(times[name], times["plain"])
        rows.append({"d": d, "setting": name,
                     "kept layers per stack": keep if saving else args.layers,
                     "time (s)": statistics.median(times[name]),
                     "time / plain": ratio["median"], "ratio min": ratio["min"],
                     "ratio max": ratio["max"], "kept MiB": kept / 2**20,
                     "peak MiB": _peak(model, src, tgt, device) / 2**20})
    return rows


def _precisions(device: torch.device) -> dict[str, tuple[torch.dtype, torch.dtype | None]]:
    out = {"float32": (torch.float32, None), "bf16 autocast": (torch.float32, torch.bfloat16)}
    if device.type == "cuda":
        out["fp16 autocast"] = (torch.float32, torch.float16)
    return out


def precision(args: argparse.Namespace, device: torch.device,
              space: nf.SearchSpace) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, 500, tuple(args.precision_batch), generator=g).to(device)
    tgt = torch.randint(4, 500, tuple(args.precision_batch), generator=g).to(device)
    mask = src.eq(0)
    rows = []
    for depth in args.depths:
        torch.manual_seed(0)
        cfg = nf.ModelConfig(d_model=args.precision_d, blocks=depth, dropout=0.0)
        model = nf.Supernet(space, cfg, vocab_size=500).to(device).double().train()
        reference = _step(model, src, tgt)  # float64 with reconstruction: exact to ~1e-13
        state = model.state_dict()
        for label, (dtype, amp_dtype) in _precisions(device).items():
            model.load_state_dict(state)
            model.to(dtype)
            amp = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                   else contextlib.nullcontext())
            grads = _step(model, src, tgt, amp)
            _config(model, False, 0)  # the same precision without reconstruction
            plain = _step(model, src, tgt, amp)
            _config(model, True, 0)
            with torch.no_grad(), amp:
                drift = model.encoder.drift(model.embed(src), padding_mask=mask)
            norm, worst = _errors(grads, reference)
            plain_norm, plain_worst = _errors(plain, reference)
            rows.append({"depth (layers per stack)": depth, "precision": label,
                         "drift": drift,
                         "rel grad error (norm)": norm,
                         "rel grad error (worst tensor)": worst,
                         "plain autograd: rel grad error (norm)": plain_norm,
                         "plain autograd: (worst tensor)": plain_worst,
                         "finite": all(bool(torch.isfinite(t).all()) for t in grads)})
            model.double()
    return rows


def _errors(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> tuple[float, float]:
    """Relative error of all gradients together (global norm) and of the worst tensor (its
    largest deviation over its largest reference entry)."""
    num = sum((a.double() - b).square().sum() for a, b in zip(grads, reference))
    den = sum(b.square().sum() for b in reference)
    worst = max(((a.double() - b).abs().max() / b.abs().max()).item()
                for a, b in zip(grads, reference) if b.abs().max() > 0)
    return (num / den).sqrt().item(), worst


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--d", type=positive, nargs="+", default=[96], help="hidden sizes (96)")
    p.add_argument("--layers", type=positive, default=6, help="layers per stack (K runs 0..L)")
    p.add_argument("--batch", type=positive, nargs=2, default=[8, 24],
                   metavar=("SENTENCES", "TOKENS"))
    p.add_argument("--repeats", type=positive, default=8)
    p.add_argument("--depths", type=positive, nargs="+", default=[2, 6, 12, 24])
    p.add_argument("--precision-d", type=positive, default=48)
    p.add_argument("--precision-batch", type=positive, nargs=2, default=[4, 12])
    p.add_argument("--parts", nargs="+", default=["memory", "precision"],
                   choices=["memory", "precision"])
    _report.add_space_args(p, "dartsformer")


def run(args: argparse.Namespace) -> None:
    if args.quick:
        args.layers, args.repeats = min(args.layers, 4), min(args.repeats, 4)
    space = _report.space_from_args(args, layers=1)
    if not any(isinstance(spec, Stack) for _, spec in space.parts()):
        raise ConfigError(f"--space {args.space}: has no reversible stack; bench speed measures "
                          "backprop with reconstruction")
    _report.check_d(space, [*args.d, args.precision_d])
    meta = _report.setup(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    meta.update({"device": _report.device_label(device),
                 **_report.args_meta(args), "space": space.name})
    if "memory" in args.parts:
        rows = [r for d in args.d for r in time_memory(args, device, space, d)]
        _report.write("speed", rows, meta | {"part": "time vs memory, keep_layers K"},
                      list(rows[0]), args.out)
        series = {}
        for d in args.d:
            at = [r for r in rows if r["d"] == d]
            series[f"d={d}: reconstruction, K kept layers"] = (
                [r["peak MiB"] for r in at[1:]], [r["time / plain"] for r in at[1:]])
            series[f"d={d}: plain autograd"] = ([at[0]["peak MiB"]], [1.0])
        _report.plot("speed", series, "peak MiB during the step", "time / plain", args.out)
    if "precision" in args.parts:
        rows = precision(args, device, space)
        _report.write("speed_precision", rows, meta | {"part": "precision vs float64"},
                      list(rows[0]), args.out)
        series = {label: ([r["depth (layers per stack)"] for r in rows if r["precision"] == label],
                          [r["rel grad error (norm)"] for r in rows if r["precision"] == label])
                  for label in _precisions(device)}
        _report.plot("speed_precision", series, "layers per stack",
                     "relative gradient error vs float64", args.out, logy=True)


def main(argv: list[str] | None = None) -> None:
    _report.run_main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
