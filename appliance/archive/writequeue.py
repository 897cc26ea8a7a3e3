"""The one road to the index writer: stores that arrive together share a transaction.

Every change to the index goes through one asyncio queue feeding one writer thread. Stores
waiting in the queue are taken as a batch (one commit); any other change (delete, label,
metadata...) is run alone between batches, so changes are serialised with the stores.
An association's thread that waits for its store is answered from the writer thread
itself, the moment its batch commits; coroutines are answered by the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .index import IndexWriter
from .records import IngestResult, StoreItem, StoreRefused

log = logging.getLogger("pipacs.archive")


@dataclass
class _PendingStore:
    item: StoreItem
    future: asyncio.Future | Future   # a concurrent Future when a thread waits (``put_from_thread``)


@dataclass
class _PendingOp:
    run: Callable[[], Any]
    future: asyncio.Future


def _settle(future: asyncio.Future | Future, outcome: IngestResult | Exception) -> None:
    """A store's outcome to whoever waits for it (a coroutine, or an association's thread)."""
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class WriteQueue:
    """Batches stores for ``writer`` and serialises every other change with them.

    ``on_stored(item)`` runs on the event loop for each instance newly indexed;
    ``on_dropped(uuids)`` is awaited with the files a batch made obsolete (duplicates,
    overwritten or recycled instances), to remove them once the rows are committed;
    ``on_batch(results)`` runs on the event loop with the (IngestResult, ParsedInstance) of every
    instance a committed batch indexed anew (it must not wait for the queue: it is the queue).
    """

    def __init__(self, writer: IndexWriter, batch_size: int,
                 on_stored: Callable[[StoreItem], None],
                 on_dropped: Callable[[list[str]], Any],
                 on_batch: Callable[[list[tuple[IngestResult, Any]]], None] | None = None):
        self.writer = writer
        self.batch_size = batch_size
        self._on_stored = on_stored
        self._on_batch = on_batch
        self._on_dropped = on_dropped
        self._queue: asyncio.Queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-writer")
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def on_writer(self, fn: Callable, *args) -> Any:
        """Run ``fn`` on the writer thread now, outside the queue (start-up and shutdown only)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="archive-writer")

    async def drain(self) -> None:
        """Finish every queued write; nothing is taken after this."""
        if self._task:
            await self._queue.put(None)
            await self._task
            self._task = None

    async def close(self) -> None:
        """Close the writer on its own thread, then let the thread go."""
        try:
            await self.on_writer(self.writer.close)
        finally:
            await asyncio.to_thread(self._executor.shutdown, True)

    async def store(self, item: StoreItem) -> IngestResult:
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put(_PendingStore(item, fut))
        return await fut

    def store_from_thread(self, item: StoreItem) -> Future:
        """Queue a store from a thread other than the event loop's; its future is settled by
        the writer thread as soon as the batch commits."""
        answer: Future = Future()
        assert self._loop is not None, "the write queue is not started"
        self._loop.call_soon_threadsafe(self._queue.put_nowait, _PendingStore(item, answer))
        return answer

    async def serialised(self, fn: Callable, *args) -> Any:
        """Run a change on the writer thread, between store batches."""
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put(_PendingOp(lambda: fn(*args), fut))
        return await fut

    async def _run(self) -> None:
        leftover = None
        while True:
            item = leftover if leftover is not None else await self._queue.get()
            leftover = None
            if item is None:
                return
            if isinstance(item, _PendingOp):
                try:
                    item.future.set_result(await self.on_writer(item.run))
                except Exception as e:  # noqa: BLE001 - handed to the waiting caller
                    item.future.set_exception(e)
                continue
            batch = [item]
            while len(batch) < self.batch_size:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if not isinstance(nxt, _PendingStore):
                    leftover = nxt
                    break
                batch.append(nxt)
            try:
                outcomes, drop = await self.on_writer(self._store_batch, batch)
                if drop:
                    await self._on_dropped(drop)
            except Exception as e:  # noqa: BLE001 - answered to every waiter; the writer goes on
                log.error("index write failed for a batch of %d: %s", len(batch), e)
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(StoreRefused(f"the index could not be written: {e}"))
                continue
            new = []
            for pending, outcome in zip(batch, outcomes):
                if not isinstance(outcome, Exception) and outcome.status == "Success":
                    self._on_stored(pending.item)
                    outcome.origin = pending.item.origin    # the store listeners tell a bundle's import
                    new.append((outcome, pending.item.parsed))
                if not pending.future.done():
                    _settle(pending.future, outcome)
            if new and self._on_batch is not None:
                try:
                    self._on_batch(new)
                except Exception as e:  # noqa: BLE001 - logged: the writer goes on
                    log.error("telling of a stored batch failed: %s", e)

    def _store_batch(self, batch: list[_PendingStore]) -> tuple[list[IngestResult | Exception], list[str]]:
        """On the writer thread: index a batch, and answer the threads waiting for theirs at
        once (the event loop settles the others, a turn or two later)."""
        outcomes, drop = self.writer.store_batch([b.item for b in batch])
        for pending, outcome in zip(batch, outcomes):
            if isinstance(pending.future, Future):
                _settle(pending.future, outcome)
        return outcomes, drop
