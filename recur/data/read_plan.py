"""Which rows, and so which row groups, one process reads in each epoch, and when it last needs each group.

A process reads *items*: item q is micro-batch q % per_step of global batch q // per_step, and a process
reads q = first, first + stride, ... (stride > 1 for DataLoader workers). Knowing the whole epoch's reads
in advance is what lets the decoded-group cache (``recur.data.group_cache``) decode each row group once,
ahead of time, and free it right after its last use, instead of guessing with an LRU that could thrash.
Building a plan sorts about N/W rows, so the next epoch's is built ahead on the decoding thread
(``build_ahead``) and the first read of an epoch does not wait for it.
"""

from __future__ import annotations

from concurrent.futures import Executor, Future
from dataclasses import dataclass

import numpy as np

from recur.data.lanes import walk_positions
from recur.data.order import GlobalOrder


@dataclass(frozen=True)
class Reads:
    """Items q = first + n * stride (n >= 0) of one process."""

    first: int
    stride: int

    def covers(self, item: int) -> bool:
        """Whether this process reads ``item``; any other read needs a new plan."""
        return item >= self.first and (item - self.first) % self.stride == 0


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's rows read by one process, in reading order, and the row groups they come from."""

    epoch: int
    items: np.ndarray  # sorted items with rows in this epoch
    offsets: np.ndarray  # rows of items[k] are [offsets[k], offsets[k + 1])
    groups: np.ndarray  # global row-group id of each row, int32 (half the memory of int64)
    within: np.ndarray  # row within that group, int32
    by_first_use: np.ndarray  # the row groups read, in order of first use
    first_use_sorted: np.ndarray  # first_use[by_first_use] (ascending), for searchsorted
    first_use: np.ndarray  # per group id: first item reading it (-1: not read this epoch)
    last_use: np.ndarray  # per group id: last item reading it (-1: not read this epoch)

    def rows(self, item: int) -> slice:
        """Where ``item``'s rows of this epoch lie in ``groups``/``within``; raises for an item the plan lacks."""
        k = int(np.searchsorted(self.items, item))
        if k == len(self.items) or self.items[k] != item:
            raise LookupError(f"item {item} reads no rows of epoch {self.epoch} in this process's plan")
        return slice(int(self.offsets[k]), int(self.offsets[k + 1]))


class ReadPlan:
    """Epoch plans of one process: micro-batches of ``micro_rows`` rows from the rank's share of each batch."""

    def __init__(self, order: GlobalOrder, first_row: int, micro_rows: int, per_step: int, reads: Reads) -> None:
        self.order = order  # also fixes the global batch size and whether lanes are used (shuffle)
        self.first_row = first_row  # this rank's first position in every global batch
        self.micro_rows = micro_rows
        self.per_step = per_step
        self.reads = reads
        self._epochs: dict[int, EpochPlan | Future] = {}  # a Future: being built by build_ahead

    def start_row(self, items: int | np.ndarray) -> int | np.ndarray:
        """Stream position of the first row of each item; its rows are the next ``micro_rows`` positions."""
        batch, micro = np.divmod(items, self.per_step)
        return batch * self.order.global_batch_size + self.first_row + micro * self.micro_rows

    def epochs_of(self, item: int) -> range:
        """The epochs that ``item``'s rows lie in: one, or several for an item straddling an epoch boundary."""
        start = self.start_row(item)
        return range(start // self.order.num_rows, (start + self.micro_rows - 1) // self.order.num_rows + 1)

    def epoch(self, epoch: int) -> EpochPlan:
        """This process's plan of ``epoch``: built here, unless ``build_ahead`` started it (then waited for)."""
        plan = self._epochs.get(epoch)
        if plan is None:
            plan = self._keep(epoch, self._build(epoch))
        return plan.result() if isinstance(plan, Future) else plan

    def build_ahead(self, epoch: int, executor: Executor) -> None:
        """Start building ``epoch``'s plan on ``executor`` unless it is built or under way."""
        if epoch not in self._epochs:
            self._keep(epoch, executor.submit(self._build, epoch))

    def _keep(self, epoch: int, plan: EpochPlan | Future) -> EpochPlan | Future:
        if len(self._epochs) >= 2:  # a straddling item needs two epochs at most
            self._epochs.pop(min(self._epochs))
        self._epochs[epoch] = plan
        return plan

    def _build(self, epoch: int) -> EpochPlan:
        n, g = self.order.num_rows, self.order.global_batch_size
        lo_item = (epoch * n // g) * self.per_step
        hi_item = (((epoch + 1) * n - 1) // g + 1) * self.per_step
        first = max(lo_item, self.reads.first)
        first += -(first - self.reads.first) % self.reads.stride  # the first of this process's items
        items = np.arange(first, hi_item, self.reads.stride, dtype=np.int64)
        # An item's rows are micro_rows consecutive stream positions, so its rows inside the epoch are one
        # range (clipped only for the items straddling a boundary), laid out without a per-row mask.
        start = self.start_row(items)
        lo = np.clip(start, epoch * n, (epoch + 1) * n)
        counts = np.clip(start + self.micro_rows, epoch * n, (epoch + 1) * n) - lo
        items, lo, counts = items[counts > 0], lo[counts > 0], counts[counts > 0]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        stream = np.arange(offsets[-1]) + np.repeat(lo - offsets[:-1], counts)
        if self.order.shuffle:  # lanes; without shuffling stream rows are storage order
            _, walk = walk_positions(stream, n, g)
        else:
            walk = stream - epoch * n
        groups, within = self.order.locate(epoch, walk)
        # First and last item reading each group: unbuffered min/max scatters, where np.unique would sort.
        item_of_row = np.repeat(items, counts)
        first_use = np.full(len(self.order.group_sizes), np.iinfo(np.int64).max)
        last_use = np.full(len(self.order.group_sizes), -1)
        np.minimum.at(first_use, groups, item_of_row)
        np.maximum.at(last_use, groups, item_of_row)
        used = np.flatnonzero(last_use >= 0)
        first_use[last_use < 0] = -1
        by_first_use = used[np.argsort(first_use[used], kind="stable")]
        return EpochPlan(
            epoch=epoch,
            items=items,
            offsets=offsets,
            groups=groups,
            within=within,
            by_first_use=by_first_use,
            first_use_sorted=first_use[by_first_use],
            first_use=first_use,
            last_use=last_use,
        )
