"""Kneedle knee/elbow detection (Satopaa et al., 2011, "Finding a 'Kneedle' in a Haystack").

The algorithm: normalise x and y to [0, 1]; rotate/flip the curve so that it becomes concave and
increasing; take the difference curve D = y - x (how far the curve rises above the diagonal);
every local maximum of D is a knee candidate, confirmed when D later drops below the threshold
``D_max - S * mean(diff(x))`` before the next local maximum. ``S`` (sensitivity) trades
aggressiveness for robustness: larger S needs a sharper bend.

Knee indices are returned in the caller's original indexing, whatever transformation was needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Curve = Literal["concave", "convex"]
Direction = Literal["increasing", "decreasing"]
Select = Literal["first", "prominent"]

MIN_POINTS = 3


def _as_curve(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if xa.ndim != 1 or ya.ndim != 1 or xa.shape != ya.shape:
        raise ValueError(f"kneedle: x and y must be 1-D of equal length, got shapes {xa.shape} and {ya.shape}")
    if xa.size < MIN_POINTS:
        raise ValueError(f"kneedle: need at least {MIN_POINTS} points to find a knee, got {xa.size}")
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ya))):
        raise ValueError("kneedle: x and y must be finite (found NaN or inf)")
    if np.any(np.diff(xa) <= 0):
        raise ValueError("kneedle: x must be strictly increasing")
    return xa, ya


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average of odd width ``window``; edges are padded with the edge value so the
    length (and therefore every index) is preserved."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"kneedle: smoothing window must be an odd integer >= 1, got {window}")
    if window == 1:
        return y
    half = window // 2
    padded = np.pad(y, half, mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid")


def _normalise(v: np.ndarray) -> np.ndarray:
    return (v - v.min()) / (v.max() - v.min())


def difference_curve(
    x: Sequence[float], y: Sequence[float], curve: Curve, direction: Direction, smooth_window: int = 1
) -> tuple[np.ndarray, np.ndarray, bool]:
    """The Kneedle difference curve in concave-increasing orientation.

    Returns ``(x_t, d, reversed)``: the normalised x of the transformed curve, the difference curve
    over it, and whether the transform reversed the index order (so index ``j`` of ``d`` is index
    ``n - 1 - j`` of the input). A flat y has no shape, so ``d`` is all zeros.
    """
    if curve not in ("concave", "convex"):
        raise ValueError(f"kneedle: curve must be 'concave' or 'convex', got {curve!r}")
    if direction not in ("increasing", "decreasing"):
        raise ValueError(f"kneedle: direction must be 'increasing' or 'decreasing', got {direction!r}")
    xa, ya = _as_curve(x, y)
    ya = smooth(ya, smooth_window)
    if np.ptp(ya) == 0:
        return _normalise(xa), np.zeros_like(xa), False
    # Convex-decreasing flips vertically, concave-decreasing horizontally, convex-increasing both;
    # each lands on a concave increasing curve where the knee is the point farthest above y = x.
    # The flips are negations and reversals of the raw data (exact in floating point) done before
    # normalising, so a flipped input gives bit for bit the same difference curve and the same ties.
    flip_vertical = curve == "convex"
    reverse = (curve == "convex") == (direction == "increasing")
    if flip_vertical:
        ya = -ya
    if reverse:
        ya = ya[::-1]
        xa = -xa[::-1]
    xn = _normalise(xa)
    return xn, _normalise(ya) - xn, reverse


def _local_maxima(d: np.ndarray) -> list[int]:
    # Interior points only: a knee at the curve's ends is not a bend. ">=" on the left lets the last
    # point of a plateau count once.
    return [i for i in range(1, d.size - 1) if d[i] >= d[i - 1] and d[i] > d[i + 1]]


def find_knees(
    x: Sequence[float],
    y: Sequence[float],
    curve: Curve = "concave",
    direction: Direction = "increasing",
    S: float = 1.0,
    smooth_window: int = 1,
) -> list[int]:
    """Indices (into ``x``/``y``, ascending) of every knee Kneedle confirms; ``[]`` when none.

    ``curve``/``direction`` describe the curve's shape: e.g. ``1/x`` is convex decreasing,
    ``log x`` concave increasing. ``S >= 0`` is the sensitivity; ``smooth_window`` (odd) applies a
    moving average to y first, which helps on noisy measurements.
    """
    if S < 0:
        raise ValueError(f"kneedle: sensitivity S must be >= 0, got {S}")
    xt, d, reverse = difference_curve(x, y, curve, direction, smooth_window)
    maxima = _local_maxima(d)
    step = float(np.mean(np.diff(xt)))
    knees: list[int] = []
    for k, idx in enumerate(maxima):
        threshold = d[idx] - S * step
        stop = maxima[k + 1] if k + 1 < len(maxima) else d.size
        # The candidate is a knee only if the curve falls clearly below it before rising to the next
        # candidate; otherwise the next local maximum supersedes it (the paper's threshold reset).
        if np.any(d[idx + 1 : stop] < threshold):
            knees.append(idx)
    n = d.size
    return sorted(n - 1 - i for i in knees) if reverse else knees


def find_knee(
    x: Sequence[float],
    y: Sequence[float],
    curve: Curve = "concave",
    direction: Direction = "increasing",
    S: float = 1.0,
    smooth_window: int = 1,
    select: Select = "prominent",
) -> int | None:
    """One knee index, or None: the ``"first"`` along x or the ``"prominent"`` one (largest
    difference-curve value, i.e. the sharpest bend)."""
    if select not in ("first", "prominent"):
        raise ValueError(f"kneedle: select must be 'first' or 'prominent', got {select!r}")
    knees = find_knees(x, y, curve, direction, S, smooth_window)
    if not knees:
        return None
    if select == "first":
        return knees[0]
    _, d, reverse = difference_curve(x, y, curve, direction, smooth_window)
    n = d.size
    return max(knees, key=lambda i: d[n - 1 - i] if reverse else d[i])
