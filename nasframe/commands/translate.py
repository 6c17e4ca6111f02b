"""``nasframe translate --model RUN < in.txt > out.txt``: translate lines with beam search.

Reads source sentences from stdin (or --input), one per line (split on newline only), and
writes one detokenised translation per line to stdout (or --output), in the input order.
Sentences are decoded in length-sorted batches; empty lines stay empty.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from nasframe.base.errors import DataError
from nasframe.base.runtime import atomic_write_text
from nasframe.text.decode import DecodeOptions
from nasframe.text.evaluation import translate_with_progress
from nasframe.text.loading import load_run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("translate", help="translate stdin with a trained run (beam search)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="run directory of `nasframe train`")
    add_decode_arguments(p)
    p.add_argument("--input", help="read sentences from this file instead of stdin")
    p.add_argument("--output", help="write translations to this file instead of stdout")
    p.add_argument("--progress", action="store_true", help="show a progress bar on stderr")
    p.set_defaults(func=run)


def add_decode_arguments(p: argparse.ArgumentParser) -> None:
    """Beam size, length penalty, output length limit, checkpoint, device (shared)."""
    p.add_argument("--beam", type=int, default=5, help="beam size (default 5; 1: greedy)")
    p.add_argument("--lenpen", type=float, default=1.0,
                   help="length penalty exponent alpha (default 1.0)")
    p.add_argument("--lenpen-style", choices=["fairseq", "gnmt"], default="fairseq",
                   help="score / len^alpha (fairseq, default) or ((5 + len) / 6)^alpha (gnmt)")
    p.add_argument("--max-len-a", type=float, default=1.2, help="output limit a*x + b: a (1.2)")
    p.add_argument("--max-len-b", type=int, default=10, help="output limit a*x + b: b (10)")
    p.add_argument("--checkpoint", default="auto",
                   help="auto (averaged, else best, else last), avg, best, last or a file name")
    p.add_argument("--device", help="auto (the run's), cpu, cuda, ...")


def decode_options(args: argparse.Namespace) -> DecodeOptions:
    return DecodeOptions(beam=args.beam, alpha=args.lenpen, style=args.lenpen_style,
                         max_len_a=args.max_len_a, max_len_b=args.max_len_b)


def read_lines(data: bytes, where: str) -> list[str]:
    """Lines split on ``\n`` only (a form feed, ``\r`` or U+2028 inside a line stays in it),
    so the output always has one line per input line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise DataError(f"{where}:{line}: not valid UTF-8 (byte {err.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return lines


def _output_path(name: str) -> Path:
    path = Path(name)
    if path.is_dir():
        raise DataError(f"--output {path}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise DataError(f"--output {path}: folder {path.parent} does not exist")
    return path


def run(args: argparse.Namespace) -> int:
    options = decode_options(args)
    output = _output_path(args.output) if args.output else None
    if args.input:
        source = Path(args.input)
        if not source.is_file():
            raise DataError(f"--input {source}: no such file")
        try:
            data = source.read_bytes()
        except OSError as err:
            raise DataError(f"--input {source}: cannot read ({err.strerror or err})") from None
        lines = read_lines(data, str(source))
    else:
        stdin = getattr(sys.stdin, "buffer", None)  # bytes, so bad UTF-8 names its line
        raw = stdin.read() if stdin is not None else sys.stdin.read().encode("utf-8")
        lines = read_lines(raw, "stdin")
    loaded = load_run(args.model, args.checkpoint, args.device)
    texts = [line.strip() for line in lines]
    keep = [i for i, t in enumerate(texts) if t]
    translated = translate_with_progress(loaded.model, loaded.vocab, [texts[i] for i in keep],
                                         options, Console(stderr=True), args.progress,
                                         loaded.config.max_len)
    out = [""] * len(texts)
    for i, t in zip(keep, translated):
        out[i] = " ".join(t.split("\n"))  # a decoded piece can never add a line
    text = "".join(line + "\n" for line in out)
    if output is not None:
        atomic_write_text(text, output)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    return 0
