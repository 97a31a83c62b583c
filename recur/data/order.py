"""Each epoch's *walk* of a packed dataset: a pure function of (row group sizes, seed, epoch).

The walk of epoch e lists every row once, with a two-level shuffle so that a reader only needs whole
row groups:

1. the row groups of all shards are permuted globally with an RNG seeded by (seed, epoch);
2. the permuted groups are cut into windows of ``shuffle_window`` consecutive groups, and the rows of
   each window are permuted with an RNG seeded by (seed, epoch, window index).

Which batch position takes which walk position is ``recur.data.lanes``'s job. Nothing here depends on
the rank, the world size or the batch size, which is what makes the loader's batches world-size invariant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Domain tags keep the (seed, epoch) group-permutation stream disjoint from the per-window streams.
_GROUP_TAG = 0
_WINDOW_TAG = 1


@dataclass(frozen=True)
class Window:
    """``shuffle_window`` consecutive row groups of one epoch's group permutation."""

    epoch: int
    index: int
    groups: np.ndarray  # global row-group ids, in the order their rows are concatenated
    num_rows: int


@dataclass(frozen=True)
class _EpochLayout:
    windows: list[Window]
    starts: np.ndarray  # position (within the epoch) of each window's first row, plus a final end


class GlobalOrder:
    """Maps positions of each epoch's walk to (row group, row within it) for a dataset of row groups."""

    def __init__(self, group_sizes: Sequence[int], seed: int, shuffle: bool, shuffle_window: int) -> None:
        if len(group_sizes) == 0 or min(group_sizes) <= 0:
            raise ValueError(f"row group sizes must be positive and non-empty, got {list(group_sizes)[:8]}...")
        if shuffle_window < 1:
            raise ValueError(f"shuffle_window must be >= 1, got {shuffle_window}")
        self.group_sizes = np.asarray(group_sizes, dtype=np.int64)
        self.num_rows = int(self.group_sizes.sum())
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.shuffle_window = int(shuffle_window)
        self._layout_cache: dict[int, _EpochLayout] = {}

    def _layout(self, epoch: int) -> _EpochLayout:
        layout = self._layout_cache.get(epoch)
        if layout is None:
            if self.shuffle:
                rng = np.random.default_rng([self.seed, epoch, _GROUP_TAG])
                groups = rng.permutation(len(self.group_sizes))
            else:
                groups = np.arange(len(self.group_sizes))
            windows = []
            for index, lo in enumerate(range(0, len(groups), self.shuffle_window)):
                members = groups[lo : lo + self.shuffle_window]
                windows.append(Window(epoch, index, members, int(self.group_sizes[members].sum())))
            starts = np.concatenate([[0], np.cumsum([w.num_rows for w in windows])])
            # Two epochs are live at most (a batch straddling an epoch boundary).
            if len(self._layout_cache) >= 2:
                self._layout_cache.pop(min(self._layout_cache))
            layout = self._layout_cache[epoch] = _EpochLayout(windows, starts)
        return layout

    def _window_permutation(self, window: Window) -> np.ndarray:
        """Position within the window -> row index into the concatenation of the window's groups."""
        if not self.shuffle:
            return np.arange(window.num_rows)
        return np.random.default_rng([self.seed, window.epoch, _WINDOW_TAG, window.index]).permutation(window.num_rows)

    def locate(self, epoch: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(global row-group id, row within that group) of each position in ``epoch``'s walk."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and not (0 <= positions.min() and positions.max() < self.num_rows):
            raise ValueError(f"walk positions must lie in [0, {self.num_rows})")
        layout = self._layout(epoch)
        member = np.searchsorted(layout.starts, positions, side="right") - 1
        groups = np.empty_like(positions)
        within = np.empty_like(positions)
        for w in np.unique(member):
            # Each window's permutation is drawn once per call: callers locate many positions at a time.
            window, selected = layout.windows[w], np.flatnonzero(member == w)
            rows = self._window_permutation(window)[positions[selected] - layout.starts[w]]
            sizes = self.group_sizes[window.groups]
            ends = np.cumsum(sizes)
            index = np.searchsorted(ends, rows, side="right")
            groups[selected] = window.groups[index]
            within[selected] = rows - (ends[index] - sizes[index])
        return groups, within
