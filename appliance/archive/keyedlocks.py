"""One asyncio lock per key (a case, a teaching session), kept only while someone holds or waits for
it: the writers of one record take turns, those of different records do not wait for each other,
and a board that has seen thousands of records keeps no lock for any of them when idle."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class KeyedLocks:
    """``async with locks(key):`` — the lock of ``key``, made on first use, dropped after its last
    holder or waiter leaves."""

    def __init__(self) -> None:
        self._locks: dict[str, list] = {}       # key -> [lock, holders and waiters]

    @contextlib.asynccontextmanager
    async def __call__(self, key: str) -> AsyncIterator[None]:
        entry = self._locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self._locks.pop(key, None)

    def __len__(self) -> int:
        """Keys with a holder or a waiter now."""
        return len(self._locks)
