"""Figure 1: search memory versus hidden size d, vanilla DARTS vs DARTSformer.

Both supernets have 2 choice nodes per block-split or sublayer (paper.md §1, Fig. 1): vanilla
DARTS on the standard Transformer (``darts-transformer``) and DARTSformer on the reversible
backbone (``dartsformer``, L=1). On CUDA the figure is the peak memory of one search step; on
CPU it is the activation memory autograd keeps for backward (the part reconstruction removes).

    python -m benchmarks.memory_vs_hidden [--d 120 240 480] [--tokens 32] [--batch 8]
"""
from __future__ import annotations

import argparse

import torch

import nasframe as nf
from benchmarks import _report
from nasframe.memory import measure_step


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--d", type=int, nargs="+", default=[48, 96, 192, 384])
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--blocks", type=int, default=2)
    _report.add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.d = [48, 96]
    setup = _report.setup(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    metric = "peak_bytes" if device.type == "cuda" else "saved_bytes"
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, 1000, (args.batch, args.tokens), generator=g).to(device)
    tgt = torch.randint(4, 1000, (args.batch, args.tokens), generator=g).to(device)
    methods = {"DARTS + Transformer": ("darts-transformer", False),
               "DARTSformer": ("dartsformer", True)}
    rows = []
    for d in args.d:
        for method, (space_name, saving) in methods.items():
            space = nf.spaces.get(space_name, layers=1)
            cfg = nf.ModelConfig(d_model=d, blocks=args.blocks, memory_saving=saving)
            torch.manual_seed(0)
            try:
                model = nf.Supernet(space, cfg, vocab_size=1000).to(device)
                mib = measure_step(model, src, tgt)[metric] / 2**20
            except torch.OutOfMemoryError:
                mib = None
            rows.append({"d": d, "method": method, "MiB": mib})
            del model
    meta = {"device": _report.device_label(device), "metric": metric, **setup,
            **{k: (str(v) if k == "out" else v) for k, v in vars(args).items()}}
    for d in args.d:
        a, b = (r["MiB"] for r in rows if r["d"] == d)
        for r in rows:
            if r["d"] == d and a and b:
                r["DARTS / DARTSformer"] = a / b
    _report.write("memory_vs_hidden", rows, meta, ["d", "method", "MiB", "DARTS / DARTSformer"],
                  args.out)
    series = {m: ([r["d"] for r in rows if r["method"] == m and r["MiB"] is not None],
                  [r["MiB"] for r in rows if r["method"] == m and r["MiB"] is not None])
              for m in methods}
    _report.plot("memory_vs_hidden", series, "hidden size d", f"{metric} (MiB)", args.out)


if __name__ == "__main__":
    main()
