"""Decoding speed with and without incremental state, side by side on the same model.

Loads trained run directories (default: the two models of ``nasframe quickstart``) and
translates the first N test sentences with beam search, once step by step with every op's
incremental state and once recomputing the whole prefix at every step; both must give the
same output.

    python -m benchmarks.decoding [--runs runs/quickstart/derived runs/quickstart/transformer]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import _report
from nasframe.data import load_split
from nasframe.decode import decoding_speed
from nasframe.loading import load_run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", nargs="+",
                   default=["runs/quickstart/derived", "runs/quickstart/transformer"])
    p.add_argument("--sentences", type=int, default=200)
    p.add_argument("--beams", type=int, nargs="+", default=[5, 1])
    _report.add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.sentences = 20
    setup = _report.setup(args)
    rows = []
    device = None
    for run in args.runs:
        loaded = load_run(run, device="cpu")
        device = next(loaded.model.parameters()).device
        test = load_split("lohelp", "test")
        sources = [loaded.vocab.encode(s) for s in test.src[: args.sentences]]
        for beam in args.beams:
            r = decoding_speed(loaded.model, sources, beam=beam, repeats=2)
            rows.append({"run": Path(run).name, "beam": beam,
                         "incremental sent/s": r["incremental_sentences_per_s"],
                         "recompute sent/s": r["recompute_sentences_per_s"],
                         "speedup": r["speedup"], "same output": bool(r["same_output"])})
    meta = {"device": _report.device_label(device), **setup,
            **{k: (str(v) if k == "out" else v) for k, v in vars(args).items()}}
    _report.write("decoding", rows, meta, list(rows[0]), args.out)


if __name__ == "__main__":
    main()
