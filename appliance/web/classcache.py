"""The class cache: derived answers (stack documents, encoded frames, WADO-RS metadata) made once
and served to a whole class.

Thirty students open the same case at the same moment: the first request for a key makes the
answer, the other twenty-nine wait for that one make (request coalescing) instead of decoding the
same frame thirty times. Makes run at most ``workers`` at once (the board's cores), so a flood is
queued rather than thrashing two slow cores. Answers are kept in memory (an LRU by bytes) and on
disk (the archive's ``DerivedStore``: it survives a restart, so a class prepared the evening before
is ready at 8 a.m.). A caller that goes away (a student closing the iPad) does not cancel a make
that others wait for: the make is shielded and its answer kept for the next caller.

Keys are per content (file UUID, content revision): the callers check visibility through the
archive before asking, so only callers who may see a content share its answer. Each answer names
its owners (the file UUIDs it is made from): when the archive deletes or replaces one of those files
the answer leaves memory (``forget_owners``, the archive's ``on_files_dropped``) and disk (the archive
drops it from its store itself). The Orthanc image routes (images.py) use the same door in a pool of
their own (``render``: memory only, RenderCacheSize), so they are coalesced and bounded too.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from aiohttp import web

from ..archive import DerivedStore, Tombstones

__all__ = ["ClassCache", "CLASS_CACHE", "POOLS", "memory_total", "memory_budget", "disk_budget", "cores"]

log = logging.getLogger("pipacs.classcache")
T = TypeVar("T")

MIB = 2**20
MEMORY_SHARE = 8            # "auto": an eighth of the board's memory ...
MEMORY_MINIMUM = 64 * MIB   # ... and at least 64 MiB
DISK_SHARE = 10             # "auto": a tenth of the free space of the data folder's disk ...
DISK_CAP = 16 * 2**30       # ... and at most 16 GiB
RENDER_SHARE = 32           # the render cache (images.py), "auto": a 32nd of the memory, at least 32 MiB
RENDER_MINIMUM = 32 * MIB


def memory_total() -> int:
    """The board's memory in bytes: MemTotal of /proc/meminfo, else sysconf; 1 GiB if neither says."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**30


def cores() -> int:
    """Cores this process may use: the bound of concurrent makes."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def memory_budget(setting: int | str, total: int | None = None, share: int = MEMORY_SHARE,
                  minimum: int = MEMORY_MINIMUM) -> int:
    """Bytes of memory for a cache: ``setting`` MB, or for "auto" a share of the board's memory
    (never more than half of it, whatever the minimum)."""
    if setting != "auto":
        return int(setting) * MIB
    total = memory_total() if total is None else total
    return min(max(total // share, minimum), total // 2)


def disk_budget(setting: int | str, free: int) -> int:
    """Bytes of disk for derived data: ``setting`` MB, or for "auto" a share of ``free``, capped."""
    if setting != "auto":
        return int(setting) * MIB
    return min(free // DISK_SHARE, DISK_CAP)


class _Lru:
    """One memory pool: an LRU by bytes, each answer with its owners (file UUIDs) so that a deleted
    instance's answers go at once."""

    def __init__(self, budget: int):
        self.budget = max(0, int(budget))
        self.items: OrderedDict[str, tuple[bytes, tuple[str, ...]]] = OrderedDict()
        self.owned: dict[str, set[str]] = {}
        self.size = 0

    def get(self, key: str) -> bytes | None:
        hit = self.items.get(key)
        if hit is None:
            return None
        self.items.move_to_end(key)
        return hit[0]

    def remember(self, key: str, data: bytes, owners: tuple[str, ...]) -> None:
        if len(data) > self.budget // 4:
            return
        self.pop(key)
        self.items[key] = (data, owners)
        self.size += len(data)
        for o in owners:
            self.owned.setdefault(o, set()).add(key)
        while self.size > self.budget and self.items:
            self.pop(next(iter(self.items)))

    def pop(self, key: str) -> None:
        old = self.items.pop(key, None)
        if old is None:
            return
        self.size -= len(old[0])
        for o in old[1]:
            keys = self.owned.get(o)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.owned[o]

    def drop(self, owners: list[str]) -> None:
        for key in set().union(*(self.owned.get(o, ()) for o in owners)) if owners else ():
            self.pop(key)


POOLS = ("class", "render")
"""The memory pools: ``class`` (stack documents, frames, WADO-RS metadata; memory then disk) and
``render`` (images.py's Orthanc image routes, memory only, with its own budget: a student trying window
values cannot evict what the teacher prepared, nor write the card)."""


class ClassCache:
    """Memory LRU -> disk -> make(), with coalescing and bounded concurrent makes."""

    def __init__(self, memory_budget: int, disk: DerivedStore | None = None, workers: int | None = None,
                 render_budget: int = RENDER_MINIMUM):
        self._pools = {"class": _Lru(memory_budget), "render": _Lru(render_budget)}
        self.disk = disk
        self.workers = workers or cores()
        self._slots = asyncio.Semaphore(self.workers)
        self._pending: dict[str, asyncio.Task] = {}
        self.dropped = Tombstones()   # file UUIDs deleted: answers made from them are not kept
        # per pool: answered from memory or disk, make() called, callers who waited for another's make
        self.tally = {pool: {"Hits": 0, "Misses": 0, "Coalesced": 0} for pool in POOLS}
        self.disk_hits = 0
        self.making = 0        # makes running now (at most ``workers``)
        self.runs = 0          # uncached work done in the slots (``run``: WADO-RS frames decoded)
        # the DICOMweb multipart answers' tally (dicomweb/formatter.py): parts written, and answers
        # stopped because their client went away (no part is made for a closed connection)
        self.parts_sent = 0
        self.streams_cut = 0

    @property
    def memory_budget(self) -> int:
        return self._pools["class"].budget

    def peek(self, key: str) -> bytes | None:
        """The answer kept in memory for ``key``, without making it (and without counting): what the
        tests observe."""
        for pool in self._pools.values():
            hit = pool.items.get(key)
            if hit is not None:
                return hit[0]
        return None

    # ------------------------------------------------------------------ the one door

    async def get_or_make(self, key: str, make: Callable[[], Awaitable[bytes]],
                          owners: Iterable[str] = (), pool: str = "class") -> bytes:
        """The answer for ``key``: from memory, else from disk, else ``make()`` (once, however many
        callers ask at the same time). ``make`` must produce the same bytes for the same key.
        ``owners``: the file UUIDs the answer is made from (deleting one of those instances drops it,
        from memory and disk). ``pool`` "render": memory only, in its own budget (POOLS)."""
        lru, tally = self._pools[pool], self.tally[pool]
        hit = lru.get(key)
        if hit is not None:
            tally["Hits"] += 1
            return hit
        task = self._pending.get(key)
        if task is not None:
            tally["Coalesced"] += 1
        else:
            task = asyncio.ensure_future(self._produce(key, make, tuple(sorted(set(owners))), pool))
            self._pending[key] = task
            task.add_done_callback(lambda t, key=key: self._done(key, t))
        # shielded: this caller's cancellation (a client gone) leaves the make running for the others
        return await asyncio.shield(task)

    def _done(self, key: str, task: asyncio.Task) -> None:
        if self._pending.get(key) is task:
            del self._pending[key]
        if not task.cancelled() and task.exception() is not None:
            log.debug("making %s failed: %s", key, task.exception())

    async def _produce(self, key: str, make: Callable[[], Awaitable[bytes]], owners: tuple[str, ...],
                       pool: str) -> bytes:
        lru = self._pools[pool]
        disk = self.disk if pool == "class" else None
        if disk is not None:
            data = await asyncio.to_thread(disk.get, key)
            if data is not None:
                self.tally[pool]["Hits"] += 1
                self.disk_hits += 1
                if not self.dropped.any_of(owners):    # (read just before a delete dropped it)
                    lru.remember(key, data, owners)
                return data
        self.tally[pool]["Misses"] += 1
        async with self._slots:
            self.making += 1
            try:
                data = await make()
            finally:
                self.making -= 1
        if not isinstance(data, bytes):
            data = bytes(data)
        if self.dropped.any_of(owners):    # deleted while it was made: answered, not kept
            return data
        lru.remember(key, data, owners)
        if disk is not None:
            await asyncio.to_thread(disk.put, key, data, owners)
        return data

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a worker thread, in one of the same ``workers`` slots as the makes: decoding
        that is not cached (WADO-RS frames) queues with the rest instead of using the default pool."""
        async with self._slots:
            self.making += 1
            self.runs += 1
            try:
                return await asyncio.to_thread(fn, *args)
            finally:
                self.making -= 1

    def forget_owners(self, owners: list[str]) -> None:
        """The archive deleted or replaced these files (``Archive.on_files_dropped``): their answers
        leave memory now, and a make still running for them is not kept (the disk tier is dropped by
        the archive itself)."""
        self.dropped.add(owners)
        for lru in self._pools.values():
            lru.drop(owners)

    def stats(self) -> dict:
        """What the cache holds and how it served, for the teacher's prepare page and the bench."""
        main, render = self._pools["class"], self._pools["render"]
        return {"MemoryBytes": main.size, "MemoryBudget": main.budget,
                "RenderBytes": render.size, "RenderBudget": render.budget,
                "DiskBytes": self.disk.size if self.disk is not None else 0,
                "DiskBudget": self.disk.budget if self.disk is not None else 0,
                **self.tally["class"], "DiskHits": self.disk_hits,
                **{f"Render{k}": v for k, v in self.tally["render"].items()}, "Making": self.making, "Workers": self.workers, "Runs": self.runs,
                "Entries": len(main.items), "PartsSent": self.parts_sent, "StreamsCut": self.streams_cut}


CLASS_CACHE = web.AppKey("class_cache", ClassCache)
