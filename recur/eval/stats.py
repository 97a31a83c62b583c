"""Confidence intervals for exact-match accuracies (a count of correct answers out of n problems).

Wilson's score interval, not the textbook normal one (p̂ ± z·√(p̂(1−p̂)/n)): our cells are small (often
n ≤ 64) and accuracies sit near 0 or 1, where the normal interval collapses to zero width at 0/n and n/n
and spills outside [0, 1]. Wilson's stays inside [0, 1], keeps a useful width at the extremes and has
close to nominal coverage even for n of a few dozen.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

Z_95 = 1.959964  # two-sided 95% normal quantile


def wilson_interval(correct: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """(low, high) Wilson score interval of correct/n; n = 0 (no evidence) gives (0.0, 1.0)."""
    if n < 0 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n, got correct={correct}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p, z2 = correct / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At 0/n and n/n the bound is exactly 0 or 1 on paper; set it, as float rounding lands a hair off either way.
    return (0.0 if correct == 0 else centre - half), (1.0 if correct == n else centre + half)


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two closed intervals share a point. compare calls a difference significant only when the 95%
    intervals do not overlap: a conservative test (such pairs differ well below p = 0.05, and some
    overlapping pairs would pass a two-proportion test too), but simple and readable from the tables."""
    return a[0] <= b[1] and b[0] <= a[1]


def interval_fields(correct: int, n: int) -> dict[str, float]:
    """{"ci_low", "ci_high"}: the 95% Wilson interval as stored next to correct/num_samples in results."""
    low, high = wilson_interval(correct, n)
    return {"ci_low": low, "ci_high": high}


def pooled_counts(cells: Iterable[dict]) -> dict | None:
    """{"correct", "num_samples", "ci_low", "ci_high"} of result cells taken together (sum correct / sum n),
    None for no cells. Computed from the counts, not the cells' stored intervals, so files written before
    ci_low/ci_high existed get intervals too."""
    cells = list(cells)
    if not cells:
        return None
    correct, n = sum(c["correct"] for c in cells), sum(c["num_samples"] for c in cells)
    return {"correct": correct, "num_samples": n, **interval_fields(correct, n)}
