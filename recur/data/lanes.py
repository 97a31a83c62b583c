"""Lanes: which row of an epoch's storage walk each position of a global batch takes.

The loader's stream cuts into global batches of G rows (batch b = stream rows [b*G, (b+1)*G)), and rank r
of W reads positions [r*G/W, (r+1)*G/W) of every batch. If stream rows were the epoch's walk in order
(``GlobalOrder``: permuted row groups, rows shuffled inside windows), every batch would be G consecutive
rows of the walk, a rank's share of every batch would lie in the same few groups as everyone else's, and
every rank would decode the whole dataset.

Instead, within epoch e the positions of the stream that sit at batch position p form *lane* p, and lane p
takes a contiguous stretch of the walk, lanes laid end to end in order of p. Then

- a rank's positions [p0, p1) take the contiguous walk range [start[p0], start[p1]) of every epoch, so it
  decodes only the row groups of about N/W rows per epoch, whatever W is;
- a batch takes one row from each lane, i.e. G rows spread evenly over the whole epoch, so it mixes G
  different row groups (the window order alone mixes only ``shuffle_window`` of them);
- the mapping depends on (N, G, epoch) only, never on W, so batches stay world-size invariant.

Lanes need not be equal: when G does not divide N, a batch straddles an epoch boundary and the epoch's
lanes differ in length by one row.
"""

from __future__ import annotations

import numpy as np


def _before(x: int | np.ndarray, p: np.ndarray, g: int) -> np.ndarray:
    """How many stream positions s < x sit at a batch position below p (s mod G < p)."""
    return (x // g) * p + np.minimum(x % g, p)


def lane_starts(epoch: int, num_rows: int, global_batch_size: int) -> np.ndarray:
    """Walk position where each lane of ``epoch`` begins, for p = 0..G (the last entry is N)."""
    p = np.arange(global_batch_size + 1, dtype=np.int64)
    lo, hi = epoch * num_rows, (epoch + 1) * num_rows
    return _before(hi, p, global_batch_size) - _before(lo, p, global_batch_size)


def walk_positions(stream: np.ndarray, num_rows: int, global_batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(epoch, position in that epoch's walk) of each stream position; per epoch a bijection onto [0, N)."""
    stream = np.asarray(stream, dtype=np.int64)
    g = global_batch_size
    epoch = stream // num_rows
    batch, p = stream // g, stream % g
    lo, hi = epoch * num_rows, (epoch + 1) * num_rows
    # Lane p's first batch in the epoch: the count of batches whose position p lies before the epoch.
    first_batch = -((p - lo) // g)
    return epoch, _before(hi, p, g) - _before(lo, p, g) + batch - first_batch
