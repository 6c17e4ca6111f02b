"""Incremental decoding: a reversible (DARTSformer) model against a standard Transformer of the
same parameter count, sentences per second with beam 1 and 5 (issue 10 item 6).

The models are UNTRAINED (random weights, seeded): what is measured is the cost of a decoding
step, not translation quality. Every sentence decodes to a fixed length (the length limit
``max_len_b``, ``max_len_a=0``) unless a random model emits end-of-sentence first; the mean
output length of each model is reported beside the speed. Sources are the first N test
sentences of the embedded corpus, each word hashed into the vocabulary (no SentencePiece model
is trained for this). The reversible architecture has self-attention and a feed-forward op in
its splits (and the decoder's fixed cross-attention), as the Transformer's sublayers; the
Transformer's d is chosen by hand, the multiple of 8 whose parameter count is nearest.
Timings are paired: the two models alternate within every repetition. On a machine with
a GPU both models decode on it.

    nasframe bench decoding [--d 240] [--sentences 300] [--beams 1 5] [--threads 1] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import zlib
from typing import Any

import torch

import nasframe as nf
from nasframe.base.errors import ConfigError
from nasframe.dsl.space import SearchSpace, Stack
from nasframe.text.data import load_split
from nasframe.text.decode import DecodeOptions, translate_ids

from . import _report
from ._report import positive

VOCAB = 8000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--d", type=positive, nargs="+", default=None,
                   help="hidden sizes of the reversible model (240; --quick: 96)")
    p.add_argument("--blocks", type=positive, default=2, help="block repeats of both models (2)")
    p.add_argument("--sentences", type=positive, default=300)
    p.add_argument("--beams", type=positive, nargs="+", default=[1, 5])
    p.add_argument("--length", type=positive, default=30, help="output length limit (30)")
    p.add_argument("--repeats", type=positive, default=5)
    p.add_argument("--profile", action="store_true",
                   help="top ops by self CPU time of each model (always when the reversible "
                        "one is slower)")
    _report.add_space_args(p, "dartsformer")


def _sources(n: int) -> list[list[int]]:
    test = load_split("lohelp", "test")
    return [[4 + zlib.crc32(w.encode()) % (VOCAB - 4) for w in s.split()][:64] or [4]
            for s in test.src[:n]]


def reversible_arch(space: SearchSpace) -> nf.Architecture:
    """Self-attention in the first split, the feed-forward op in every other free split."""
    choices = {}
    for node, labels in space.choice_nodes().items():
        want = "self_attention" if node.endswith("split1") else "ffn"
        choices[node] = want if want in labels else labels[0]
    return nf.Architecture(space=space, choices=choices)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def transformer_like(target: int, blocks: int, embed: int) -> tuple[nf.Supernet, int]:
    """The Transformer (multiple of 8 for d) whose parameter count is nearest ``target``."""
    arch = nf.Architecture(space=nf.spaces.get("transformer"), choices={})
    best: tuple[int, int] | None = None
    for d in range(8, 2049, 8):
        cfg = nf.ModelConfig(d_model=d, embed_dim=embed, blocks=blocks, dropout=0.0)
        n = _params(nf.build_model(arch, cfg, VOCAB))
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (d, n)
        if n > target:
            break
    assert best is not None
    torch.manual_seed(0)
    cfg = nf.ModelConfig(d_model=best[0], embed_dim=embed, blocks=blocks, dropout=0.0)
    return nf.build_model(arch, cfg, VOCAB).eval(), best[0]


def _profile(model: nf.Supernet, sources: list[list[int]], opt: DecodeOptions) -> dict:
    """Self CPU milliseconds of the top ops of one decoding pass, and the pass's total."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        translate_ids(model, sources, opt)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return {"total ms": round(sum(e.self_cpu_time_total for e in events) / 1e3, 1),
            "top ops": [{"op": e.key, "self ms": round(e.self_cpu_time_total / 1e3, 1),
                         "calls": e.count} for e in events[:10]]}


def run(args: argparse.Namespace) -> None:
    if args.quick:
        args.sentences, args.repeats = min(args.sentences, 12), 1
        args.length, args.blocks = min(args.length, 8), 1
    sizes = args.d or ([96] if args.quick else [240])
    space = _report.space_from_args(args, layers=1)
    if not any(isinstance(spec, Stack) for _, spec in space.parts()):
        raise ConfigError(f"--space {args.space}: has no reversible stack to compare with the "
                          "Transformer")
    _report.check_d(space, sizes)
    meta = _report.setup(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sources = _sources(args.sentences)
    rows: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    for d in sizes:
        embed = min(d, 128)
        torch.manual_seed(0)
        cfg = nf.ModelConfig(d_model=d, embed_dim=embed, blocks=args.blocks, dropout=0.0)
        models = {"reversible": nf.build_model(reversible_arch(space), cfg, VOCAB).eval()}
        models["transformer"], d_t = transformer_like(_params(models["reversible"]),
                                                      args.blocks, embed)
        models = {name: model.to(device) for name, model in models.items()}
        widths = {"reversible": d, "transformer": d_t}
        for beam in args.beams:
            opt = DecodeOptions(beam=beam, max_len_a=0.0, max_len_b=args.length)
            outputs: dict[str, list[list[int]]] = {}

            def runner(name: str, o: DecodeOptions = opt, out: dict = outputs,
                       nets: dict = models) -> Any:
                def go() -> None:
                    with torch.inference_mode():
                        out[name] = translate_ids(nets[name], sources, o)
                return go

            times = _report.paired({n: runner(n) for n in models}, args.repeats, device=device)
            ratio = _report.ratio_summary(times["reversible"], times["transformer"])
            for name, model in models.items():
                secs = statistics.median(times[name])
                rows.append({"model": name, "d": widths[name], "parameters": _params(model),
                             "beam": beam, "sentences/s": len(sources) / secs,
                             "mean output tokens": statistics.mean(
                                 len(o) for o in outputs[name]),
                             "time / transformer": ratio["median"] if name == "reversible"
                             else 1.0,
                             "ratio min": ratio["min"] if name == "reversible" else None,
                             "ratio max": ratio["max"] if name == "reversible" else None})
            if args.profile or (ratio["median"] > 1.0 and not args.quick):
                for name, model in models.items():
                    with torch.inference_mode():
                        profiles[f"d={d}, beam {beam}, {name}"] = _profile(model, sources, opt)
    meta.update({"device": _report.device_label(device), "weights": "random (untrained)",
                 "sources": f"first {len(sources)} test sentences of lohelp, words hashed",
                 "space": space.name,
                 **_report.args_meta(args)})
    if profiles:
        meta["profile (self CPU ms of one pass)"] = profiles
    _report.write("decoding", rows, meta, ["model", "d", "parameters", "beam", "sentences/s",
                                           "mean output tokens", "time / transformer"],
                  args.out)


def main(argv: list[str] | None = None) -> None:
    _report.run_main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
