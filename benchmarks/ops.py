"""Memory and time of each candidate op, over the bytes of its input.

For every op (with its residual and layer norm, as a choice node holds it): the bytes it keeps
for backward (``saved_tensors_hooks``, parameters left out, its input counted) and the most
it allocates at once in a forward and a backward that returns the input's and the parameters'
gradients (``allocated_peak_bytes`` on CPU, ``max_memory_allocated`` on CUDA; what existed
before is not counted, the output and the gradients are), each over the input's bytes; the
same for the op's sublayer alone, without the residual, dropout and norm around it; and the
median time of that forward + backward.

    nasframe bench ops [--ops dynamic_conv:kernel=3 ffn] [--d 240] [--batch 64 64] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from nasframe.base.errors import ConfigError, SpaceError
from nasframe.dsl.ops import Context, create_op
from nasframe.dsl.space import OpSpec
from nasframe.engine.memory import device_peak_bytes, saved_bytes

from . import _report
from ._report import positive

DEFAULT_OPS = ["dynamic_conv:kernel=3", "dynamic_conv:kernel=7", "dynamic_conv:kernel=15",
               "dynamic_conv:kernel=31", "conv:kernel=3", "ffn", "glu", "self_attention"]


def _parse(text: str) -> tuple[str, dict[str, Any]]:
    """``name:key=value,...`` (the space DSL's op notation) -> (name, params)."""
    try:
        spec = OpSpec(**OpSpec.parse(text))
    except (SpaceError, ValidationError) as err:
        reason = err.errors()[0]["msg"] if isinstance(err, ValidationError) else str(err)
        raise ConfigError(f"--ops {text!r}: {reason}") from None
    return spec.name, dict(spec.params)


def _measure(module: nn.Module, x: torch.Tensor, device: torch.device) -> tuple[float, float]:
    """(kept, peak) of one forward + backward of ``module``, over the input's bytes."""
    params = [p for p in module.parameters() if p.requires_grad]
    grad = torch.randn_like(x)
    kept = saved_bytes(lambda: module(x, Context()), exclude=params).bytes

    peak = device_peak_bytes(
        lambda: torch.autograd.grad(module(x, Context()), [x, *params], grad), device)
    return kept / x.nbytes, peak / x.nbytes


def measure_op(text: str, d: int, batch: tuple[int, int], repeats: int,
               device: torch.device) -> dict[str, Any]:
    name, params = _parse(text)
    torch.manual_seed(0)
    try:
        op = create_op(name, d, causal=False, dropout=0.1, **params).to(device).train()
    except (SpaceError, TypeError) as err:
        raise ConfigError(f"--ops {text!r} at d={d}: {err}") from None
    x = torch.randn(*batch, d, device=device, requires_grad=True)
    kept, peak = _measure(op, x, device)
    row: dict[str, Any] = {"op": text, "d": d, "params": sum(p.numel() for p in op.parameters()),
                           "kept / input": kept, "peak / input": peak}
    sub = getattr(op, "sublayer", None)
    if sub is not None:
        row["sublayer kept / input"], row["sublayer peak / input"] = _measure(sub, x, device)
    grad = torch.randn_like(x)

    def fwd_bwd() -> None:
        op(x, Context()).backward(grad)

    times = _report.paired({"step": fwd_bwd}, repeats, device=device)["step"]
    row["fwd+bwd (ms)"] = 1e3 * statistics.median(times)
    return row


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ops", nargs="+", default=None, metavar="OP",
                   help="ops as the space DSL writes them (default: the DARTSformer candidates)")
    p.add_argument("--d", type=positive, default=240, help="the op's width (240)")
    p.add_argument("--batch", type=positive, nargs=2, default=[64, 64],
                   metavar=("SENTENCES", "TOKENS"))
    p.add_argument("--repeats", type=positive, default=5)


def run(args: argparse.Namespace) -> None:
    if args.quick:
        args.d, args.batch, args.repeats = min(args.d, 48), [4, 16], min(args.repeats, 2)
    ops = args.ops or DEFAULT_OPS
    meta = _report.setup(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = [measure_op(text, args.d, tuple(args.batch), args.repeats, device) for text in ops]
    meta.update({"device": _report.device_label(device), "dtype": "float32", "dropout": 0.1,
                 "norm": "post (the search supernet's)", **_report.args_meta(args)})
    cols = ["op", "params", "kept / input", "peak / input", "sublayer kept / input",
            "sublayer peak / input", "fwd+bwd (ms)"]
    _report.write("ops", rows, meta, cols, args.out)


def main(argv: list[str] | None = None) -> None:
    _report.run_main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
