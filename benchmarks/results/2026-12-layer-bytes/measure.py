"""What one reversible layer keeps for backward, the figure behind ``--memory-limit``.

``nasframe search --memory-limit`` measures each layer with every parameter trainable
(``nasframe.searching.budget.per_layer_bytes``), an upper bound on what either bilevel update
keeps; this measures the same layers with the alphas frozen (a weight step) and with the
weights frozen (an alpha step) too. DARTSformer supernet, d=96, 6 blocks, dropout 0.1, a
500-word vocabulary, a batch of 8 random sentences of 24 tokens (the setting of
``nasframe bench speed``), CPU, one thread.

    .venv/bin/python benchmarks/results/2026-12-layer-bytes/measure.py OUT.json
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

import torch

import nasframe as nf
from nasframe.searching.budget import per_layer_bytes
from nasframe.searching.updates import frozen
from nasframe.text.data import collate


def main(out: str) -> None:
    torch.set_num_threads(1)
    d, blocks, vocab, sentences, tokens = 96, 6, 500, 8, 24
    torch.manual_seed(0)
    net = nf.Supernet(nf.spaces.get("dartsformer"),
                      nf.ModelConfig(d_model=d, blocks=blocks, dropout=0.1), vocab).train()
    g = torch.Generator().manual_seed(0)
    # the target's BOS / EOS make both sides 24 tokens long
    pairs = [(torch.randint(4, vocab, (tokens,), generator=g).tolist(),
              torch.randint(4, vocab, (tokens - 1,), generator=g).tolist())
             for _ in range(sentences)]
    batch = collate(pairs)
    alphas = list(net.arch_parameters())
    ids = {id(a) for a in alphas}
    weights = [p for p in net.parameters() if id(p) not in ids]
    rows, layers = [], {}
    for step, constants in (("every parameter trainable (--memory-limit)", []),
                            ("weight step (alphas frozen)", alphas),
                            ("alpha step (weights frozen)", weights)):
        with frozen(constants):
            sizes = per_layer_bytes(net, batch)
        layers[step] = sizes
        for stack, each in sizes.items():
            rows.append({"graph": step, "stack": stack, "layers": len(each),
                         "MiB per layer (median)": round(statistics.median(each) / 2**20, 2),
                         "MiB (min)": round(min(each) / 2**20, 2),
                         "MiB (max)": round(max(each) / 2**20, 2)})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    meta = {"threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "torch": torch.__version__,
            "device": f"CPU ({platform.processor() or platform.machine()}, "
                      f"{torch.get_num_threads()} threads)",
            "space": "dartsformer", "d": d, "blocks": blocks, "dropout": 0.1, "vocab": vocab,
            "batch": [sentences, tokens], "date": datetime.date.today().isoformat(),
            "code commit": commit,
            "command": "python benchmarks/results/2026-12-layer-bytes/measure.py "
                       "benchmarks/results/2026-12-layer-bytes/layer_bytes.json"}
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "rows": rows, "bytes per layer": layers}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
