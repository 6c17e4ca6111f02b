"""Exactness and cost of backprop with reconstruction, by depth.

For a DARTSformer supernet (weighted choices, dropout on) at several depths, in float32:
- reconstruction drift: max |inverse(forward(x)) - x| over the encoder stack;
- gradient error: max relative difference of all gradients against plain autograd;
- time of one forward + backward, with reconstruction over plain (paper.md §3 expects ~4/3).

    python -m benchmarks.reconstruction [--depths 2 6 12] [--d 96]
"""
from __future__ import annotations

import argparse
import time

import torch

import nasframe as nf
from benchmarks import _report


def _grads(model: nf.Supernet, src: torch.Tensor, tgt: torch.Tensor) -> tuple[list, float]:
    torch.manual_seed(1)
    start = time.perf_counter()
    loss = model(src, tgt).log_softmax(-1).mean()
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    return list(grads), time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--depths", type=int, nargs="+", default=[2, 6, 12])
    p.add_argument("--d", type=int, default=96)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    space = nf.spaces.get("dartsformer", layers=1)
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, 500, (8, 24), generator=g).to(device)
    tgt = torch.randint(4, 500, (8, 24), generator=g).to(device)
    rows = []
    for depth in args.depths:
        torch.manual_seed(0)
        cfg = nf.ModelConfig(d_model=args.d, blocks=depth, dropout=0.1)
        model = nf.Supernet(space, cfg, vocab_size=500).to(device).train()
        x = model.embed(src).detach()
        model.eval()  # dropout off: the inverse must see the forward's functions
        with torch.no_grad():
            drift = (model.encoder.inverse(model.encoder(x, padding_mask=src.eq(0)),
                                           padding_mask=src.eq(0)) - x).abs().max().item()
        model.train()
        timings = {}
        grads = {}
        for saving in (False, True):
            model.set_memory_saving(saving)
            runs = [_grads(model, src, tgt) for _ in range(args.repeats)]
            grads[saving] = runs[0][0]
            timings[saving] = min(t for _, t in runs)
        rel = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
                  for a, b in zip(grads[True], grads[False]) if a is not None)
        rows.append({"depth (layers per stack)": depth, "drift": drift, "max rel grad error": rel,
                     "time plain (s)": timings[False], "time reconstruction (s)": timings[True],
                     "ratio": timings[True] / timings[False]})
    meta = {"device": _report.device_label(device), "dtype": "float32", **vars(args)}
    _report.write("reconstruction", rows, meta, list(rows[0]))


if __name__ == "__main__":
    main()
