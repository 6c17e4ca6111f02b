#!/usr/bin/env bash
# The GPU figures of the README, on one CUDA device: `benchmarks/gpu_figures.sh OUTDIR`.
# Each benchmark writes OUTDIR/<name>/<name>.json (device and thread count inside); one that
# runs past its time limit is stopped and the rest still run. EXTRA="--quick" tries the
# plumbing on a CPU in a minute.
set -u
[ $# -eq 1 ] || { echo "error: usage: benchmarks/gpu_figures.sh OUTDIR" >&2; exit 2; }
out=$1
bench="${NASFRAME:-nasframe} bench"
extra=${EXTRA:-}
mkdir -p "$out"
run() { local limit=$1; shift; echo "== $*"; timeout "$limit" $bench "$@" $extra || echo "!! exit $?: $*"; }
# Figure 1 at the paper's 4096 tokens per step (64 x 64), up to the search width d = 960.
run 90 memory --d 96 192 384 768 960 --batch 64 --tokens 64 --memory-limit 16GiB \
    --out "$out/memory"
# Reconstruction against plain autograd, time split into plain / no-grad forward / excess.
run 120 reconstruction --d 240 480 960 --depths 2 6 --batch 64 64 --out "$out/reconstruction"
# keep_layers K = 0..6 at d = 480, and the precision table (float32, bf16, fp16 on CUDA).
run 100 speed --d 480 --layers 6 --batch 64 64 --precision-d 240 --precision-batch 16 32 \
    --out "$out/speed"
# Incremental decoding, reversible against Transformer at the same parameter count.
run 60 decoding --out "$out/decoding"
