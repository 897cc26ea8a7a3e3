"""Uploads received over HTTP, spooled to the storage disk rather than held in memory."""

from __future__ import annotations

import asyncio
import errno
from typing import Any

from .storage import FileStorage, Spool, StorageFull


async def spool_stream(files: FileStorage, folder: Any, stream: Any) -> Spool:
    """Receive an upload (an aiohttp StreamReader) into a spool in ``folder``; StorageFull when
    it would not leave MinimumFreeDiskSpace free."""
    spool = await asyncio.to_thread(Spool, folder)
    limit = await asyncio.to_thread(files.free_bytes) - files.reserve_bytes
    try:
        async for chunk in stream.iter_chunked(1 << 20):
            if spool.size + len(chunk) > max(limit, spool.max_memory):
                raise StorageFull(errno.ENOSPC, "the upload is larger than the free space on the storage disk"
                                  + (" (keeping MinimumFreeDiskSpace free)" if files.reserve_bytes else ""))
            await asyncio.to_thread(spool.write, chunk)
    except BaseException:
        await asyncio.to_thread(spool.close)
        raise
    return spool
