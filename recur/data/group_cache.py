"""Decoded row groups of one process: each decoded once per epoch, ahead of use, freed after its last use.

All decoding runs on one background thread (parquet file handles are not shared between threads), so
decoding the next groups overlaps with gathering batches from the current ones. Which groups to decode
and when to free them comes from the process's ``EpochPlan``s, so a group holding none of this process's
rows is never decoded. Once every group of an epoch is queued, the same thread builds the next epoch's
plan, behind those decodes.
"""

from __future__ import annotations

import heapq
import os
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from recur.data.packed_reader import DecodedGroup, PackedShards
from recur.data.read_plan import EpochPlan, ReadPlan


class GroupCache:
    """One process's decoded row groups for the epochs of a ``ReadPlan``. ``blocks`` hands out what an item
    needs; decoding only ``ahead`` groups beyond that and freeing each after its last use bounds memory to
    about one window of groups per lane, while every group is still decoded once per epoch."""

    def __init__(self, shards: PackedShards, read_plan: ReadPlan, ahead: int) -> None:
        self.shards = shards
        self.read_plan = read_plan  # whose epoch plans this cache serves; builds the next one on our thread
        self.ahead = ahead  # groups decoded beyond those the current item needs
        self._pid = os.getpid()
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-prefetch")
        self._held: dict[tuple[int, int], Future] = {}  # (epoch, group id) -> its DecodedGroup, queued or done
        self._plans: dict[int, EpochPlan] = {}
        self._cursor: dict[int, int] = {}  # per epoch: groups of by_first_use submitted so far
        self._expiry: list[tuple[int, int, int]] = []  # heap of (last use, epoch, group) of held groups

    def forked(self) -> bool:
        """True in a forked DataLoader worker, which inherits this object but not its thread."""
        return self._pid != os.getpid()

    def blocks(self, plan: EpochPlan, item: int) -> dict[int, DecodedGroup]:
        """The decoded groups that ``item``'s rows of ``plan.epoch`` come from, by group id."""
        if self._plans.get(plan.epoch) is not plan:
            self._forget(plan.epoch)
            self._plans[plan.epoch] = plan
        self._free_before(item)
        self._submit_ahead(plan, item)
        needed = set(plan.groups[plan.rows(item)].tolist())
        return {g: self._decoded(plan, g).result() for g in needed}

    def _decoded(self, plan: EpochPlan, group: int) -> Future:
        key = (plan.epoch, group)
        future = self._held.get(key)
        if future is None:
            future = self._held[key] = self._reader.submit(self.shards.read_group, group)
            heapq.heappush(self._expiry, (int(plan.last_use[group]), plan.epoch, group))
        return future

    def _submit_ahead(self, plan: EpochPlan, item: int) -> None:
        # Every group first used by now, plus `ahead` more in order of first use.
        order, cursor = plan.by_first_use, self._cursor.get(plan.epoch, 0)
        stop = min(len(order), int(np.searchsorted(plan.first_use_sorted, item, side="right")) + self.ahead)
        for group in order[cursor:stop].tolist():
            if plan.last_use[group] >= item:  # skip groups whose reads all lie behind the start
                self._decoded(plan, group)
        self._cursor[plan.epoch] = max(cursor, stop)
        if stop == len(order):
            self.read_plan.build_ahead(plan.epoch + 1, self._reader)

    def _free_before(self, item: int) -> None:
        # O(1) amortised: pop held groups in order of last use. An entry pushed under an older plan of the
        # same epoch may be stale; the current plan decides whether the group it names is still needed.
        while self._expiry and self._expiry[0][0] < item:
            _, epoch, group = heapq.heappop(self._expiry)
            plan = self._plans.get(epoch)
            if plan is None or plan.last_use[group] < item:
                self._held.pop((epoch, group), None)

    def _forget(self, epoch: int) -> None:
        """A new plan for ``epoch``: drop its groups held for an older plan, and the bookkeeping of past epochs."""
        self._held = {key: f for key, f in self._held.items() if key[0] != epoch}
        # Plans of two epochs are live at most (an item straddling an epoch boundary).
        self._plans = {e: plan for e, plan in self._plans.items() if e >= epoch - 1}
        self._cursor = {e: c for e, c in self._cursor.items() if e in self._plans and e != epoch}

    def close(self) -> None:
        """Drop queued decodes; the running one finishes on the old thread, which then exits."""
        self._reader.shutdown(wait=False, cancel_futures=True)
        self._held.clear()
