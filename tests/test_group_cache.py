"""The decoded-group cache keeps memory bounded: it decodes a fixed number of groups ahead of the reader,
frees each group after its last use, a cache replaced by a seek stops decoding for the old plan, and the
next epoch's plan is built on the decoding thread."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from test_loader import fixture_rows, write_dataset

from recur.data.loader import _DECODE_AHEAD, StatefulParquetDataset
from recur.data.read_plan import EpochPlan, ReadPlan


@pytest.fixture(scope="module")
def many_groups(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("groups") / "data", fixture_rows(960), rows_per_shard=240)


@pytest.mark.parametrize("world_size, global_batch", [(1, 8), (4, 32)])
def test_groups_held_stay_bounded(many_groups: Path, world_size: int, global_batch: int) -> None:
    ds = StatefulParquetDataset(
        many_groups, global_batch_size=global_batch, world_size=world_size, rank=0, shuffle_window=1, infinite=False
    )
    lanes = global_batch // world_size
    most_held = 0
    for item, _ in enumerate(ds):
        plan = ds._plan.epoch(0)
        held = list(ds._cache._held)
        ahead = [g for _, g in held if plan.first_use[g] > item]
        assert len(ahead) <= _DECODE_AHEAD, f"item {item}: {len(ahead)} groups decoded ahead"
        assert all(plan.last_use[g] >= item for _, g in held), "a group is kept after its last use"
        most_held = max(most_held, len(held))
    # each of the rank's lanes reads about one group at a time (two at a group boundary), plus the look-ahead
    assert most_held <= 2 * lanes + _DECODE_AHEAD


def test_a_replaced_cache_stops_decoding(many_groups: Path) -> None:
    ds = StatefulParquetDataset(many_groups, global_batch_size=8, world_size=1, rank=0, shuffle_window=1)
    it = iter(ds)
    for _ in range(3):
        next(it)
    old = ds._cache
    ds.seek(50)
    next(iter(ds))
    assert old._reader._shutdown and not old._held  # queued decodes were cancelled with it


def test_the_next_epochs_plan_is_built_ahead_on_the_decoding_thread(
    many_groups: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built_on: dict[int, str] = {}
    build = ReadPlan._build

    def recording_build(plan: ReadPlan, epoch: int) -> EpochPlan:
        built_on[epoch] = threading.current_thread().name
        return build(plan, epoch)

    monkeypatch.setattr(ReadPlan, "_build", recording_build)
    ds = StatefulParquetDataset(many_groups, global_batch_size=8, world_size=1, rank=0, shuffle_window=1)
    for _, _batch in zip(range(960 // 8 + 1), ds):  # one epoch and the first batch of the next
        pass
    assert built_on[0] == threading.current_thread().name
    assert built_on[1].startswith("parquet-prefetch")
