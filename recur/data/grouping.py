"""Indices of each distinct key of an array, in one sort rather than one full scan per key."""

from __future__ import annotations

from typing import Iterator

import numpy as np


def runs(keys: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (key, indices of ``keys`` equal to it, ascending) for each distinct key, in key order."""
    order = np.argsort(keys, kind="stable")
    distinct, starts = np.unique(keys[order], return_index=True)
    ends = np.append(starts[1:], len(keys))
    for key, lo, hi in zip(distinct.tolist(), starts.tolist(), ends.tolist()):
        yield key, order[lo:hi]
