"""Exactness and cost of backprop with reconstruction, by depth and width.

For a DARTSformer supernet (weighted choices, dropout on), in float32, per (d, depth) and
stream dtype (``--streams``: float64, ``ModelConfig``'s default, and the model's own):
- reconstruction drift: max |inverse(forward(x)) - x| over the encoder stack, in the stream;
- gradient error: max relative difference of all gradients against plain autograd;
- time of one forward + backward with reconstruction over plain autograd: the median of the
  ratios of paired, alternating repetitions, with min/max and quartiles;
- where the time goes: a plain step, a no-grad forward (the one extra forward that
  reconstruction pays) and the rest (``excess`` = recon - plain - no-grad forward);
- each for the weight step and the alpha step, as the bilevel strategies take them: the
  weights (alpha step) or the alphas (weight step) frozen while the graph is built and
  trainable again when it is differentiated.

The loss is the strategies' (``seq2seq_loss``: label-smoothed, the output layer in chunks).
``--preset small`` measures the step as a search at that preset takes it: its d, factorised
embedding, vocabulary, space and a batch of its ``max_tokens`` (sentences of 32 tokens);
without it, a 500-word vocabulary and no factorisation keep the output layer small, so the
ratio is the body's.

    nasframe bench reconstruction [--depths 2 6 12] [--d 96 240] [--streams float64 model]
                                  [--preset small] [--threads 1] [--quick]
"""
from __future__ import annotations

import argparse
import itertools
import statistics
from collections.abc import Sequence

import torch

import nasframe as nf
from nasframe.run.config import SearchConfig, preset_names
from nasframe.searching.updates import frozen
from nasframe.text.data.batching import Batch
from nasframe.text.output_loss import seq2seq_loss

from . import _report
from ._report import positive


def _step(model: nf.Supernet, batch: Batch, constants: Sequence[torch.Tensor] = ()) -> list:
    """One forward + backward as the bilevel strategies take it: ``constants`` (the weights in
    the alpha step, the alphas in the weight step) are frozen while the graph is built,
    trainable again when it is differentiated, and get no gradient."""
    torch.manual_seed(1)
    with frozen(constants):
        loss = seq2seq_loss(model, batch)
    skip = {id(p) for p in constants}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in skip]
    return list(torch.autograd.grad(loss, params, allow_unused=True))


def _constants(model: nf.Supernet, step: str) -> list[torch.Tensor]:
    """What the bilevel update freezes in ``step``: the weights for alpha, the alphas for w."""
    return list(model.weight_parameters() if step == "alpha" else model.arch_parameters())


def _set_saving(model: nf.Supernet, on: bool) -> None:
    for m in model.modules():
        if hasattr(m, "memory_saving"):
            m.memory_saving = on


def profile_ops(model: nf.Supernet, batch: Batch, top: int = 8) -> list[dict[str, float]]:
    """The ops with the most self CPU time in one step with reconstruction."""
    _set_saving(model, True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _step(model, batch)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [{"op": e.key, "share": e.self_cpu_time_total / total, "calls": e.count}
            for e in events[:top]]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--depths", type=positive, nargs="+", default=None,
                   help="blocks per stack (2 6 12; with --preset: the preset's)")
    p.add_argument("--d", type=positive, nargs="+", default=None,
                   help="hidden sizes (96 240; with --preset: the preset's)")
    p.add_argument("--repeats", type=positive, default=10)
    p.add_argument("--batch", type=positive, nargs=2, default=None,
                   metavar=("SENTENCES", "TOKENS"),
                   help="8 24; with --preset: max_tokens / 32 sentences of 32 tokens")
    p.add_argument("--preset", choices=preset_names(), default=None,
                   help="the sizes, space and batch of a search at this preset")
    p.add_argument("--profile", action="store_true", help="top ops by self CPU time")
    p.add_argument("--steps", nargs="+", default=["weights", "alpha"],
                   choices=["weights", "alpha"], help="which update steps to time")
    p.add_argument("--streams", nargs="+", default=["float64", "model"],
                   choices=["float64", "model"],
                   help="dtypes of the reversible stream (ModelConfig.stream_dtype) to compare")
    _report.add_space_args(p, "dartsformer")


def _sizes(args: argparse.Namespace) -> tuple[int, int | None]:
    """Fill the size options left unset (from ``--preset`` where given); return the
    vocabulary and the factorised embedding E."""
    if args.preset is None:
        args.depths = args.depths or [2, 6, 12]
        args.d = args.d or ([96] if args.quick else [96, 240])
        args.batch = args.batch or [8, 24]
        return 500, None
    cfg = SearchConfig.preset_config(args.preset)
    args.depths = args.depths or [cfg.model.blocks]
    args.d = args.d or [cfg.model.d_model]
    args.batch = args.batch or [max(cfg.data.max_tokens // 32, 1), 32]
    if cfg.space is not None and args.space == "dartsformer":
        args.space = cfg.space
    return cfg.data.vocab_size, cfg.model.embed_dim


def run(args: argparse.Namespace) -> None:
    vocab, embed_dim = _sizes(args)
    if args.quick:
        args.depths, args.repeats = [x for x in args.depths if x <= 6], min(args.repeats, 6)
        args.streams = args.streams[:1]
    # Without a preset, one searched layer repeated ``depth`` times; a preset's own space.
    space = _report.space_from_args(args, **({} if args.preset else {"layers": 1}))
    _report.check_d(space, args.d)
    meta = _report.setup(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(0)
    batch = Batch(*(torch.randint(4, vocab, tuple(args.batch), generator=g)
                    for _ in range(3))).to(device)
    rows, profiles = [], {}
    for d, depth, stream in itertools.product(args.d, args.depths, args.streams):
        torch.manual_seed(0)
        cfg = nf.ModelConfig(d_model=d, embed_dim=embed_dim, blocks=depth, dropout=0.1,
                             stream_dtype=stream)
        model = nf.Supernet(space, cfg, vocab_size=vocab).to(device).train()
        with torch.no_grad():
            drift = model.encoder.drift(model.embed(batch.src), padding_mask=batch.src.eq(0))
        for step in args.steps:
            row = {"d": d, "layers per stack": len(model.encoder.layers), "stream": stream,
                   "step": step, "drift": drift}
            rows.append(row | _measure(model, batch, args.repeats, device,
                                       _constants(model, step)))
        if args.profile:
            profiles[f"d={d}, L={depth}, stream {stream}"] = profile_ops(model, batch)
    meta.update({"device": _report.device_label(device), "dtype": "float32",
                 "dropout": 0.1, **_report.args_meta(args), "vocabulary": vocab,
                 "embed_dim": embed_dim, "loss": "seq2seq_loss (label smoothing 0.1)",
                 "space": f"{space.name} (weighted, all candidates)"})
    if profiles:
        meta["profile (share of self CPU time, reconstruction step)"] = profiles
    cols = ["d", "layers per stack", "stream", "step", "drift", "max rel grad error",
            "time plain (s)", "forward / plain", "excess / plain", "ratio median", "ratio min",
            "ratio max"]
    _report.write("reconstruction", rows, meta, cols, args.out)


def _measure(model: nf.Supernet, batch: Batch, repeats: int, device: torch.device,
             constants: Sequence[torch.Tensor]) -> dict[str, float]:
    """Gradient error and paired timings of reconstruction against plain autograd."""
    grads = {}
    for saving in (False, True):
        _set_saving(model, saving)
        grads[saving] = _step(model, batch, constants)
    rel = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
              for a, b in zip(grads[True], grads[False]) if a is not None)

    def run(saving: bool, m: nf.Supernet = model) -> None:
        _set_saving(m, saving)
        _step(m, batch, constants)

    def nograd_forward(m: nf.Supernet = model) -> None:  # the body: what reconstruction redoes
        with torch.no_grad():
            m.output_features(batch.src, batch.tgt_in)

    times = _report.paired({"plain": lambda: run(False),
                            "reconstruction": lambda: run(True),
                            "no-grad forward": nograd_forward},
                           repeats, device=device)
    ratio = _report.ratio_summary(times["reconstruction"], times["plain"])
    plain = statistics.median(times["plain"])
    fwd = statistics.median(times["no-grad forward"])
    recon = statistics.median(times["reconstruction"])
    return {"max rel grad error": rel, "time plain (s)": plain,
            "time reconstruction (s)": recon, "no-grad forward (s)": fwd,
            "forward / plain": fwd / plain,
            "excess / plain": (recon - plain - fwd) / plain,
            "ratio median": ratio["median"], "ratio min": ratio["min"],
            "ratio q1": ratio["q1"], "ratio q3": ratio["q3"],
            "ratio max": ratio["max"], "pairs": ratio["pairs"]}


def main(argv: list[str] | None = None) -> None:
    _report.run_main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
