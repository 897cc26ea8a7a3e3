"""Uploads received over HTTP, spooled to the storage disk rather than held in memory.

A body is refused (OverBudget, answered 413) as soon as it passes its budget: a body that is
not a ZIP can only be one instance (MaximumInstanceSize); one that the client compressed
(Content-Encoding, inflated by aiohttp a chunk at a time) may grow MaximumInflationRatio
times its Content-Length beyond a first MB, or to MaximumInstanceSize when it has no
Content-Length (chunked). The spool is removed with it: nothing of a refused body is stored.
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any

from ..codec.part10 import size_text
from .dicomfile import Budget, OverBudget
from .storage import FileStorage, Spool, StorageFull

ZIP_MAGIC = b"PK\x03\x04"


def body_limits(budget: Budget, content_length: int | None, encoded: bool) -> tuple[int | None, int]:
    """(limit of an encoded body whatever it holds, limit of one that is not a ZIP), in bytes
    as received after any Content-Encoding."""
    if not encoded:
        return None, budget.max_instance_bytes
    if content_length is None:
        return budget.max_instance_bytes, budget.max_instance_bytes
    inflated = budget.max_inflation_ratio * content_length + 2**20
    return inflated, min(inflated, budget.max_instance_bytes)


async def spool_stream(files: FileStorage, folder: Any, stream: Any, budget: Budget | None = None,
                       content_length: int | None = None, encoded: bool = False) -> Spool:
    """Receive an upload (an aiohttp StreamReader) into a spool in ``folder``; StorageFull when
    it would not leave MinimumFreeDiskSpace free, OverBudget past its budget (``body_limits``)."""
    budget = budget or Budget()
    any_body, not_zip = body_limits(budget, content_length, encoded)
    spool = await asyncio.to_thread(Spool, folder)
    limit = await asyncio.to_thread(files.free_bytes) - files.reserve_bytes
    head = b""
    try:
        async for chunk in stream.iter_chunked(1 << 20):
            size = spool.size + len(chunk)
            if len(head) < 4:
                head = (head + chunk)[:4]
            if any_body is not None and size > any_body:
                raise OverBudget(_too_large(any_body, content_length))
            if size > not_zip and head != ZIP_MAGIC:
                raise OverBudget(_too_large(not_zip, content_length if encoded else None)
                                 + ": a body that is not a ZIP holds one instance")
            if size > max(limit, spool.max_memory):
                raise StorageFull(errno.ENOSPC, "the upload is larger than the free space on the storage disk"
                                  + (" (keeping MinimumFreeDiskSpace free)" if files.reserve_bytes else ""))
            await asyncio.to_thread(spool.write, chunk)
    except BaseException:
        await asyncio.to_thread(spool.close)
        raise
    return spool


def _too_large(limit: int, compressed: int | None) -> str:
    what = f"the upload is larger than {size_text(limit)}"
    if compressed is not None:
        what += f" once inflated from {size_text(compressed)} (MaximumInflationRatio, MaximumInstanceSize)"
    else:
        what += " (MaximumInstanceSize)"
    return what
