"""Each epoch's *walk* of a packed dataset: a pure function of (row group sizes, seed, epoch, G).

The walk of epoch e lists every row once, with a two-level shuffle so that a reader only needs whole
row groups:

1. the row groups of all shards are permuted globally with an RNG seeded by (seed, epoch);
2. the permuted groups are cut into windows of ``shuffle_window`` consecutive groups, each window is cut
   further at the epoch's lane boundaries (``recur.data.lanes``, which depend on G), and the rows of each
   piece are permuted by sorting them on a hash of (seed, epoch, walk position).

Cutting at lane boundaries keeps every lane's rows inside the row groups of its own stretch of the walk:
a rank, which reads whole lanes, then decodes only the groups its stretch covers, never the rest of a
window that a neighbouring rank's lanes share. Nothing here depends on the rank or the world size, which
is what makes the loader's batches world-size invariant. Without shuffling the walk is storage order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recur.data.lanes import lane_starts

# Constants in the seeds of the group permutation (numpy's SeedSequence) and of the row-shuffle keys
# (splitmix64). The two generators are unrelated, so the tags separate nothing; they stay because every
# saved state's order depends on them.
_GROUP_TAG = 0
_ROW_TAG = 2  # 1 keyed the whole-window shuffles of loader state version 1


@dataclass(frozen=True)
class _EpochLayout:
    groups: np.ndarray  # global row-group ids in walk order (before the row shuffle), int32
    starts: np.ndarray  # walk position of the first row of each of those groups
    ends: np.ndarray  # walk position just past each of those groups
    windows: np.ndarray  # walk position where each window starts, plus a final end
    lanes: np.ndarray  # walk position where each lane starts, plus a final end


def _mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (uint64 arithmetic wraps, which the mixing relies on)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _argsort_in_pieces(piece: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``np.lexsort((keys, piece))`` for ascending ``piece`` and distinct uint64 ``keys``, by one argsort of
    packed uint64s (lexsort is about 4x slower): the piece index fills the top bits and the key's leading
    bits the rest; the rare runs that tie on those bits are put in order of their whole keys."""
    bits = int(piece[-1]).bit_length()
    packed = keys >> np.uint64(bits)
    if bits:
        packed |= piece.astype(np.uint64) << np.uint64(64 - bits)
    order = np.argsort(packed)
    tied = np.flatnonzero(packed[order[1:]] == packed[order[:-1]])
    if tied.size:
        at = np.union1d(tied, tied + 1)
        run = order[at]
        order[at] = run[np.lexsort((keys[run], packed[run]))]
    return order


class GlobalOrder:
    """Maps positions of each epoch's walk to (row group, row within it) for a dataset of row groups."""

    def __init__(
        self, group_sizes: Sequence[int], seed: int, shuffle: bool, shuffle_window: int, global_batch_size: int
    ) -> None:
        if len(group_sizes) == 0 or min(group_sizes) <= 0:
            raise ValueError(f"row group sizes must be positive and non-empty, got {list(group_sizes)[:8]}...")
        self.group_sizes = np.asarray(group_sizes, dtype=np.int64)
        self.num_rows = int(self.group_sizes.sum())
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.shuffle_window = int(shuffle_window)
        self.global_batch_size = int(global_batch_size)

    def _layout(self, epoch: int) -> _EpochLayout:
        # Not cached: O(groups + G), small next to locating an epoch's rows, and keeping it pure lets a
        # plan be built on the decoding thread while another is built on the caller's.
        if self.shuffle:
            groups = np.random.default_rng([self.seed, epoch, _GROUP_TAG]).permutation(len(self.group_sizes))
        else:
            groups = np.arange(len(self.group_sizes))
        ends = np.cumsum(self.group_sizes[groups])
        windows = np.concatenate([[0], ends[self.shuffle_window - 1 :: self.shuffle_window], [self.num_rows]])
        lanes = lane_starts(epoch, self.num_rows, self.global_batch_size)
        return _EpochLayout(groups.astype(np.int32), ends - self.group_sizes[groups], ends, windows, lanes)

    def _unshuffled(self, epoch: int, layout: _EpochLayout, positions: np.ndarray) -> np.ndarray:
        """Walk positions -> positions in the concatenation of the epoch's permuted groups."""
        if not self.shuffle or positions.size == 0:
            return positions
        # A piece is a stretch between two consecutive window or lane starts. Only the starts around
        # [min, max] of the positions are merged (a sort of a few per lane and window), and each position
        # finds its piece by a search in them rather than a sort of all positions.
        lo, hi = positions.min(), positions.max()
        cuts = np.union1d(
            *(
                c[np.searchsorted(c, lo, "right") - 1 : np.searchsorted(c, hi, "right") + 1]
                for c in (layout.windows, layout.lanes)
            )
        )
        piece = np.searchsorted(cuts, positions, side="right") - 1
        touched = np.zeros(len(cuts) - 1, dtype=bool)
        touched[piece] = True
        piece_lo, lengths = cuts[:-1][touched], np.diff(cuts)[touched]
        # Every position of the pieces touched, in walk order; each piece is permuted by sorting its
        # positions on a hash of (seed, epoch, position): one vectorised sort for all pieces, and a piece's
        # permutation does not depend on which of its positions were asked for.
        offset = np.cumsum(lengths) - lengths  # where each touched piece begins in `walk`
        walk = np.arange(int(lengths.sum())) + np.repeat(piece_lo - offset, lengths)
        rows = walk[_argsort_in_pieces(np.repeat(np.arange(len(lengths)), lengths), self._hash(epoch, walk))]
        slot = (np.cumsum(touched) - 1)[piece]  # each position's piece among the touched ones
        return rows[offset[slot] + positions - piece_lo[slot]]

    def _hash(self, epoch: int, positions: np.ndarray) -> np.ndarray:
        """splitmix64 of (seed, epoch, position): a fixed pseudo-random key per walk position."""
        key = _mix(np.array([(self.seed * 0x9E3779B97F4A7C15 + epoch * 4 + _ROW_TAG) % 2**64], dtype=np.uint64))
        return _mix(positions.astype(np.uint64) ^ key)

    def locate(self, epoch: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(global row-group id, row within that group), both int32, of each position in ``epoch``'s walk."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and not (0 <= positions.min() and positions.max() < self.num_rows):
            raise ValueError(f"walk positions must lie in [0, {self.num_rows})")
        layout = self._layout(epoch)
        rows = self._unshuffled(epoch, layout, positions)
        member = np.searchsorted(layout.ends, rows, side="right")
        return layout.groups[member], (rows - layout.starts[member]).astype(np.int32)
