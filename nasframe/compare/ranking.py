"""Rank statistics for scoring a strategy against a ground-truth table, without scipy.

- ``kendall_tau``: Kendall's tau-b (ties in either sequence handled as scipy's default does);
- ``spearman``: Spearman's rho, the Pearson correlation of average ranks;
- ``precision_at_k``: how many of the k items a strategy ranks best are among the k best;
- ``expected_best_of_k``: the exact expectation of Random-K, the best of K uniform draws
  without replacement by one measurement, reported by another.

Every sequence is "smaller is better" where it matters (``precision_at_k``,
``expected_best_of_k``); negate a score where larger is better (an alpha log-probability).
A correlation that is undefined (fewer than two items, or one sequence constant) is ``nan``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["average_ranks", "expected_best_of_k", "kendall_tau", "precision_at_k", "spearman"]


def _check_pair(x: Sequence[float], y: Sequence[float], what: str) -> None:
    if len(x) != len(y):
        raise ValueError(f"{what}: the two sequences differ in length ({len(x)} and {len(y)})")


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two paired sequences: (concordant - discordant) pairs over
    sqrt((pairs - ties in x) (pairs - ties in y)); a pair tied in both counts in both ties.
    O(n^2) pairs, fine for tables of a few thousand architectures."""
    _check_pair(x, y, "kendall_tau")
    n = len(x)
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        xi, yi = x[i], y[i]
        for j in range(i + 1, n):
            dx, dy = xi - x[j], yi - y[j]
            if dx == 0 or dy == 0:
                ties_x += dx == 0
                ties_y += dy == 0
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    pairs = n * (n - 1) // 2
    denominator = math.sqrt((pairs - ties_x) * (pairs - ties_y))
    return (concordant - discordant) / denominator if denominator > 0 else math.nan


def average_ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n, smallest first; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: the Pearson correlation of the average ranks of ``x`` and ``y``."""
    _check_pair(x, y, "spearman")
    if len(x) < 2:
        return math.nan
    rx, ry = average_ranks(x), average_ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def precision_at_k(predicted: Sequence[float], truth: Sequence[float], k: int) -> float:
    """The fraction of the ``k`` items with the smallest ``predicted`` values (ties broken by
    position) whose ``truth`` rank is at most ``k`` (rank = 1 + how many are strictly
    smaller, so an item tied with the k-th best counts as among the best k)."""
    _check_pair(predicted, truth, "precision_at_k")
    if not 1 <= k <= len(truth):
        raise ValueError(f"precision_at_k: k={k} must be between 1 and {len(truth)}")
    chosen = sorted(range(len(predicted)), key=lambda i: predicted[i])[:k]
    ordered = sorted(truth)
    kth = ordered[k - 1]
    return sum(truth[i] <= kth for i in chosen) / k


def expected_best_of_k(select: Sequence[float], report: Sequence[float], k: int) -> float:
    """E[``report`` of the item with the smallest ``select`` among ``k`` drawn uniformly
    without replacement], exactly.

    Sorted by ``select``, a group G of tied values whose better items number b holds the
    sample's best with probability (C(n-b, k) - C(n-b-|G|, k)) / C(n, k); within G each item
    is equally likely to be the one chosen, so G contributes the mean of its ``report``
    values. Without ties, item i (1 = best) is the best of the sample with probability
    C(n-i, k-1) / C(n, k).
    """
    _check_pair(select, report, "expected_best_of_k")
    n = len(select)
    if not 1 <= k <= n:
        raise ValueError(f"expected_best_of_k: k={k} must be between 1 and {n}")
    order = sorted(range(n), key=lambda i: select[i])
    total = math.comb(n, k)
    expected = 0.0
    start = 0
    while start < n:
        end = start
        while end + 1 < n and select[order[end + 1]] == select[order[start]]:
            end += 1
        size = end - start + 1
        ways = math.comb(n - start, k) - math.comb(n - start - size, k)
        if ways:
            mean = sum(report[i] for i in order[start:end + 1]) / size
            expected += ways / total * mean
        start = end + 1
    return expected
