"""The global row order of a packed dataset: a pure function of (row group sizes, seed, epoch).

Rows are addressed by their position in an endless *stream*: epoch 0's order, then epoch 1's, ...
Each epoch's order uses a two-level shuffle so that a reader only ever needs whole row groups:

1. the row groups of all shards are permuted globally with an RNG seeded by (seed, epoch);
2. the permuted groups are cut into windows of ``shuffle_window`` consecutive groups, and the rows of
   each window are permuted with an RNG seeded by (seed, epoch, window index).

Nothing here depends on the rank, the world size or the batch size, which is what makes the loader's
batches world-size invariant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

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
    """Maps stream positions to (window, row of the window) for a dataset of row groups."""

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
        self._perm_cache: tuple[tuple[int, int], np.ndarray] | None = None

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

    def next_window(self, window: Window) -> Window:
        """The window whose rows follow ``window``'s in the stream (possibly the next epoch's first)."""
        windows = self._layout(window.epoch).windows
        if window.index + 1 < len(windows):
            return windows[window.index + 1]
        return self._layout(window.epoch + 1).windows[0]

    def window_permutation(self, window: Window) -> np.ndarray:
        """Position within the window -> row index into the concatenation of the window's groups."""
        key = (window.epoch, window.index)
        if self._perm_cache is not None and self._perm_cache[0] == key:
            return self._perm_cache[1]
        if self.shuffle:
            perm = np.random.default_rng([self.seed, window.epoch, _WINDOW_TAG, window.index]).permutation(
                window.num_rows
            )
        else:
            perm = np.arange(window.num_rows)
        self._perm_cache = (key, perm)
        return perm

    def spans(self, start: int, stop: int) -> Iterator[tuple[Window, int, int]]:
        """Yield (window, lo, hi): stream positions [start, stop) are window positions [lo, hi), in order."""
        if not 0 <= start <= stop:
            raise ValueError(f"invalid stream range [{start}, {stop})")
        pos = start
        while pos < stop:
            epoch, offset = divmod(pos, self.num_rows)
            layout = self._layout(epoch)
            w = int(np.searchsorted(layout.starts, offset, side="right")) - 1
            window_start = int(layout.starts[w])
            take = min(stop - pos, int(layout.starts[w + 1]) - offset)
            yield layout.windows[w], offset - window_start, offset - window_start + take
            pos += take

    def origin(self, window: Window, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(global row-group id, row within that group) for rows of the window's concatenation."""
        sizes = self.group_sizes[window.groups]
        ends = np.cumsum(sizes)
        member = np.searchsorted(ends, rows, side="right")
        return window.groups[member], rows - (ends[member] - sizes[member])
