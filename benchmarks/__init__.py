"""Benchmarks reproducing the paper's comparisons; each writes JSON + PNG + a rich table."""
