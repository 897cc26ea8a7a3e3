"""Known DICOM nodes: the configuration's, and those added at run time (REST, classroom moves).

Read as a plain dict, so association threads may ask without the event loop; run-time
changes are kept in the index, through the write queue.
"""

from __future__ import annotations

from typing import Any

from .writequeue import WriteQueue


class ModalityRegistry:
    def __init__(self, configured: dict[str, Any]):
        self.configured = dict(configured)
        self._added: dict[str, dict] = {}
        self._queue: WriteQueue | None = None

    async def load(self, queue: WriteQueue) -> None:
        self._queue = queue
        self._added = await queue.on_writer(queue.writer.modalities)

    def all(self) -> dict[str, dict]:
        merged = dict(self.configured)
        merged.update(self._added)
        return merged

    def is_configured(self, name: str) -> bool:
        return name in self.configured and name not in self._added

    async def put(self, name: str, config: dict) -> None:
        assert self._queue is not None
        await self._queue.serialised(self._queue.writer.put_modality, name, config)
        self._added = {**self._added, name: config}

    async def delete(self, name: str) -> bool:
        assert self._queue is not None
        removed = await self._queue.serialised(self._queue.writer.delete_modality, name)
        self._added = {k: v for k, v in self._added.items() if k != name}
        return removed
