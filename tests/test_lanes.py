"""Lanes map each epoch's stream positions one-to-one onto its walk, a rank's share onto one range of it."""

from __future__ import annotations

import numpy as np
import pytest

from recur.data.lanes import lane_starts, walk_positions


@pytest.mark.parametrize("num_rows,global_batch_size", [(240, 24), (240, 36), (20, 48), (7, 3), (101, 8), (5, 1)])
def test_each_epoch_is_a_bijection_and_each_lane_a_contiguous_range(num_rows: int, global_batch_size: int) -> None:
    stream = np.arange(6 * num_rows + global_batch_size)
    epoch, walk = walk_positions(stream, num_rows, global_batch_size)
    assert np.array_equal(epoch, stream // num_rows)
    for e in range(6):
        inside = epoch == e
        assert np.array_equal(np.sort(walk[inside]), np.arange(num_rows))
        starts = lane_starts(e, num_rows, global_batch_size)
        assert starts[0] == 0 and starts[-1] == num_rows and np.all(np.diff(starts) >= 0)
        lane = stream[inside] % global_batch_size
        # Lane p holds walk [starts[p], starts[p+1]) in batch order, so any run of lanes is one walk range.
        assert np.all((starts[lane] <= walk[inside]) & (walk[inside] < starts[lane + 1]))
        for p in range(global_batch_size):
            assert np.array_equal(walk[inside][lane == p], np.arange(starts[p], starts[p + 1]))
