"""Resumable, rank-aware, world-size-invariant loader over a packed parquet dataset.

Order. Rows form an endless stream, cut into global batches of ``global_batch_size`` (G) rows: batch b is
stream rows [b*G, (b+1)*G), and stream rows [e*N, (e+1)*N) hold every row of epoch e once. Which row a
stream position takes comes from two pure functions of (data, seed, shuffle settings, G): the epoch's
*walk* (``recur.data.order``: a global row-group permutation, then a row shuffle inside windows of
``shuffle_window`` groups, cut at lane boundaries) and the *lanes* (``recur.data.lanes``: the stream
positions of epoch e that sit at batch position p take a contiguous stretch of the walk, lanes end to
end). A batch thus mixes rows from across the whole epoch (G row groups rather than one window's).
``shuffle=False`` uses neither: stream rows are storage order. Batches cut across epoch boundaries, so
no row is ever dropped: when num_rows is divisible by G every epoch is exactly a whole number of batches;
otherwise the batch that straddles a boundary finishes epoch e and starts epoch e+1.

Ranks. Rank r of W reads rows [r*G/W, (r+1)*G/W) of every global batch, optionally split into
micro-batches of ``micro_batch_size`` rows yielded in order. The global batch sequence therefore depends
only on (data, seed, shuffle settings, G), never on W; there is no rank-local randomness.

State. ``state_dict()`` holds the number of *fully consumed* global batches plus what defines the order
(seed, G, shuffle settings, dataset fingerprint); it is identical on every rank, so a state saved on W
ranks resumes on W' ranks with exactly the next rows. State is kept at global-batch granularity: a state
taken in the middle of gradient accumulation resumes at the start of that global batch, which is what a
checkpoint without the partial gradients needs.

Workers. With ``torch.utils.data.DataLoader(num_workers=k)`` worker w produces items w, w+k, ... of the
remaining (batch, micro-batch) sequence, so DataLoader's round-robin returns them in order. The main
process cannot see worker-side positions, so ``make_dataloader`` returns a wrapper that counts received
items and owns the state. Each worker decodes the row groups of its own items. When k divides
``micro_batches_per_step``, worker w takes the same micro-batches of every step, hence the same lanes,
and the k workers decode disjoint row groups (a group is read twice only where the lanes of two workers
meet inside it); otherwise every worker reads every lane and the rank's data is decoded k times. One or
two workers suffice to hide loading behind compute: pick k = 1, or 2 with an even number of micro-batches
per step.

Cost. Rank r's positions [r*G/W, (r+1)*G/W) take one contiguous range of each epoch's walk, about N/W
rows, and windows are cut at lane boundaries, so a rank decodes exactly the row groups of that range
(a group cut by either end is shared with the neighbouring rank): its decode work per delivered row does
not grow with W. Each process plans its reads of an epoch in advance (``recur.data.read_plan``) and keeps
decoded groups from their first use to their last (``recur.data.group_cache``); one background thread
decodes upcoming groups while batches are gathered, and then builds the next epoch's plan. Memory: each
of a rank's G/W lanes holds up to one window of decoded rows (less where the lane is shorter), hence the
default ``shuffle_window`` of 1 group (the lanes already mix G groups into every batch; the window only
mixes the order inside a lane). With ``shuffle=False`` every rank decodes every group (consecutive rows
are split between ranks).

Epochs. ``infinite=True`` streams forever; ``infinite=False`` makes one pass of ``for batch in loader``
end with the batch that consumes the last row of the epoch the pass started in (a straddling final batch
is completed from the next epoch's order, so every batch has the full size).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from recur.data.group_cache import GroupCache
from recur.data.order import GlobalOrder
from recur.data.packed_reader import PackedShards, take_rows
from recur.data.read_plan import EpochPlan, ReadPlan, Reads
from recur.data.validate import open_packed_dataset

if TYPE_CHECKING:
    from recur.config import DataConfig
    from recur.parallel.env import DistEnv

# 2: batch positions take lanes of the walk (recur.data.lanes); version 1 took the walk in order.
STATE_VERSION = 2
# Decoded row groups held ahead of the ones the current micro-batch needs.
_DECODE_AHEAD = 4
# Keys that define the batch sequence; a state saved under other values cannot be resumed exactly
# (shuffle_window only while shuffling: storage order has no windows).
_ORDER_KEYS = ("dataset_fingerprint", "global_batch_size", "seed", "shuffle", "shuffle_window")
# The lowest value of each integer setting that ``check_settings`` checks.
_LOWEST = {"seed": 0, "shuffle_window": 1, "num_workers": 0}


def check_settings(flags: str = "--", **settings: int) -> None:
    """Raise naming the flag for a seed, shuffle_window or num_workers the loader cannot use.
    Called by the trainer before anything is written (its flags are `--data.*`), and by every loader."""
    for name, value in settings.items():
        if value < _LOWEST[name]:
            raise ValueError(f"{flags}{name} must be >= {_LOWEST[name]}, got {value}")


def split_batch(
    global_batch_size: int, world_size: int, micro_batch_size: int | None, flags: str = "--"
) -> tuple[int, int]:
    """(rows per rank, rows per micro-batch) of a global batch; raises naming the flag when it does not split.
    Called by the trainer before anything is written (its flags are `--data.*`), and by every loader."""
    if global_batch_size < 1 or world_size < 1:
        raise ValueError(f"{flags}global_batch_size ({global_batch_size}) and world size ({world_size}) must be >= 1")
    if global_batch_size % world_size:
        raise ValueError(
            f"{flags}global_batch_size {global_batch_size} is not divisible by the world size {world_size}; "
            "every rank must read the same number of rows per global batch"
        )
    rank_rows = global_batch_size // world_size
    micro = rank_rows if micro_batch_size is None else micro_batch_size
    if micro < 1 or rank_rows % micro:
        raise ValueError(
            f"{flags}micro_batch_size {micro_batch_size} must divide the per-rank batch "
            f"{flags}global_batch_size {global_batch_size} / world size {world_size} = {rank_rows}"
        )
    return rank_rows, micro


class StatefulParquetDataset(IterableDataset):
    """Per-rank batches ``{"input_ids": int64, "loss_mask": uint8, "doc_ids": int32}``, each [B, row_len]."""

    def __init__(
        self,
        path: str | Path,
        global_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_window: int = 1,
        micro_batch_size: int | None = None,
        infinite: bool = True,
        flags: str = "--",
    ) -> None:
        super().__init__()
        rank_rows, micro = split_batch(global_batch_size, world_size, micro_batch_size, flags)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world size {world_size})")
        check_settings(flags, seed=seed, shuffle_window=shuffle_window)
        self.flags = flags  # how the caller spells the settings in errors: "--" or the trainer's "--data."
        self.shards = PackedShards(path)
        self.order = GlobalOrder(self.shards.group_sizes, seed, shuffle, shuffle_window, global_batch_size)
        self.global_batch_size = global_batch_size
        self.rank = rank
        self.world_size = world_size
        self.rank_batch_size = rank_rows
        self.micro_batch_size = micro
        self.micro_batches_per_step = rank_rows // micro
        self.infinite = infinite
        self._next_batch = 0
        self._plan: ReadPlan | None = None
        self._cache: GroupCache | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Threads and decoded groups stay in the process that made them; DataLoader workers start fresh.
        return {**self.__dict__, "_plan": None, "_cache": None}

    # ----- position and state -------------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        return self.shards.num_rows

    @property
    def row_len(self) -> int:
        return self.shards.row_len

    @property
    def batch_index(self) -> int:
        """Global batches fully consumed so far (the next one to read)."""
        return self._next_batch

    @property
    def epoch(self) -> int:
        """Epoch of the next row to be read."""
        return self.epoch_of(self._next_batch)

    def epoch_of(self, batch_index: int) -> int:
        """Epoch of the first row of global batch ``batch_index`` (a straddling batch ends in the next one)."""
        return batch_index * self.global_batch_size // self.num_rows

    def seek(self, batch_index: int) -> None:
        """Make ``batch_index`` the next batch to read; how the wrapper restarts workers at its own count."""
        if batch_index < 0:
            raise ValueError(f"batch index must be >= 0, got {batch_index}")
        self._next_batch = batch_index

    def state_at(self, batch_index: int) -> dict[str, Any]:
        """The (JSON-serialisable, world-size independent) state after ``batch_index`` global batches."""
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch_of(batch_index),
            "batch_index": batch_index,
            "seed": self.order.seed,
            "global_batch_size": self.global_batch_size,
            "shuffle": self.order.shuffle,
            "shuffle_window": self.order.shuffle_window,
            "dataset_fingerprint": self.shards.fingerprint,
        }

    def state_dict(self) -> dict[str, Any]:
        return self.state_at(self._next_batch)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after a saved state; refuses one whose batch sequence differs from this loader's."""
        expected = self.state_at(0)
        missing = sorted(set(expected) - set(state))
        if missing:
            raise ValueError(f"loader state is missing keys {missing}; expected a dict from state_dict()")
        if state["version"] != STATE_VERSION:
            raise ValueError(
                f"loader state format version {state['version']} cannot be resumed exactly by this loader (format "
                f"version {STATE_VERSION}: batch positions take lanes of the walk); restart the data order without it"
            )
        for key in _ORDER_KEYS:
            if key == "shuffle_window" and not self.order.shuffle:
                continue
            if state[key] != expected[key]:
                raise ValueError(
                    f"loader state was saved with {key}={state[key]!r} but this loader has {key}={expected[key]!r} "
                    f"(dataset {self.shards.path}); resuming would not continue the same batch sequence"
                )
        batch_index = state["batch_index"]
        if type(batch_index) is not int:  # not bool, not a float that int() would truncate
            raise ValueError(f"loader state key batch_index must be an integer, got {batch_index!r}")
        if batch_index < 0 or state["epoch"] != self.epoch_of(batch_index):
            raise ValueError(
                f"loader state is inconsistent: batch_index {state['batch_index']} is in epoch "
                f"{self.epoch_of(max(batch_index, 0))}, state says epoch {state['epoch']}"
            )
        self._next_batch = batch_index

    # ----- reading ------------------------------------------------------------------------------------
    def _use(self, reads: Reads) -> None:
        """Plan for this process's items ``reads`` and start a fresh cache of decoded groups for them."""
        if self._cache is not None and not self._cache.forked():
            self._cache.close()
        self._plan = ReadPlan(
            self.order, self.rank * self.rank_batch_size, self.micro_batch_size, self.micro_batches_per_step, reads
        )
        self._cache = GroupCache(self.shards, self._plan, _DECODE_AHEAD)

    def _rows(self, batch_index: int, micro: int) -> tuple[int, list[tuple[EpochPlan, slice]]]:
        """Item number of (batch_index, micro), and (epoch plan, slice of its rows) for each epoch it reads."""
        item = batch_index * self.micro_batches_per_step + micro
        if self._plan is None or not self._plan.reads.covers(item) or self._cache.forked():
            # A read outside the current plan (or in a forked worker): plan the reads from here on.
            self._use(Reads(item, 1))
        plans = [self._plan.epoch(epoch) for epoch in self._plan.epochs_of(item)]
        return item, [(plan, plan.rows(item)) for plan in plans]

    def read(self, batch_index: int, micro: int = 0) -> dict[str, torch.Tensor]:
        """This rank's micro-batch ``micro`` of global batch ``batch_index`` (no change of position)."""
        item, plans = self._rows(batch_index, micro)
        parts = [
            take_rows(self._cache.blocks(plan, item), plan.groups[rows], plan.within[rows]) for plan, rows in plans
        ]
        arrays = parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return {name: torch.from_numpy(array) for name, array in arrays.items()}

    def origins(self, batch_index: int, micro: int = 0) -> list[tuple[str, int, int]]:
        """(shard file, row group, row within group) of each row that ``read`` returns, in order."""
        return [
            (*self.shards.origin(g), int(r))
            for plan, rows in self._rows(batch_index, micro)[1]
            for g, r in zip(plan.groups[rows].tolist(), plan.within[rows].tolist())
        ]

    def _end_batch(self, start: int) -> int | None:
        if self.infinite:
            return None
        end_row = (self.epoch_of(start) + 1) * self.num_rows
        return -(-end_row // self.global_batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        start, end = self._next_batch, self._end_batch(self._next_batch)
        worker = get_worker_info()
        item, stride = (0, 1) if worker is None else (worker.id, worker.num_workers)
        per_step = self.micro_batches_per_step
        self._use(Reads(start * per_step + item, stride))
        while True:
            batch_index, micro = start + item // per_step, item % per_step
            if end is not None and batch_index >= end:
                return
            out = self.read(batch_index, micro)
            if worker is None and micro == per_step - 1:
                # Advance before yielding: once the caller holds the last micro-batch, the batch is consumed.
                self._next_batch = batch_index + 1
            yield out
            item += stride


class StatefulDataLoader:
    """A DataLoader over a ``StatefulParquetDataset`` whose state is counted in the main process."""

    def __init__(self, dataset: StatefulParquetDataset, num_workers: int = 0, pin_memory: bool = False) -> None:
        check_settings(dataset.flags, num_workers=num_workers)
        self.dataset = dataset
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self._next_batch = dataset.batch_index

    @property
    def batch_index(self) -> int:
        return self._next_batch

    @property
    def epoch(self) -> int:
        return self.dataset.epoch_of(self._next_batch)

    def state_dict(self) -> dict[str, Any]:
        return self.dataset.state_at(self._next_batch)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)
        self._next_batch = self.dataset.batch_index

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # Workers are (re)started from the position counted here, never from their own copies.
        self.dataset.seek(self._next_batch)
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory)
        per_step, received = self.dataset.micro_batches_per_step, 0
        for item in loader:
            received += 1
            if received == per_step:
                self._next_batch += 1
                received = 0
            yield item


def make_dataloader(
    dataset: StatefulParquetDataset, num_workers: int = 0, pin_memory: bool = False
) -> StatefulDataLoader:
    """Wrap ``dataset`` in a DataLoader with ``num_workers`` workers; the wrapper owns the resumable state."""
    return StatefulDataLoader(dataset, num_workers, pin_memory)


def open_rank_loader(
    path: str | Path, data: DataConfig, env: DistEnv
) -> tuple[StatefulParquetDataset, StatefulDataLoader]:
    """This rank's dataset and loader over a packed directory, configured by a trainer `DataConfig`
    (global/micro batch size, seed, shuffle window, workers, --data.verify_sha256)."""
    if data.verify_sha256 and env.local_rank == 0:
        # One full read per machine: enough for shared storage, and it also covers a copy on each node's disk.
        open_packed_dataset(path, check_rows=False, verify_sha256=True)
    dataset = StatefulParquetDataset(
        path,
        data.global_batch_size,
        env.rank,
        env.world_size,
        seed=data.seed,
        shuffle_window=data.shuffle_window,
        micro_batch_size=data.micro_batch_size,
        flags="--data.",
    )
    return dataset, make_dataloader(dataset, data.num_workers, env.device.type == "cuda")
