"""Make the folder of files and the index agree after any stop, clean or not.

A file's bytes are on disk before its index row is committed, and a row is deleted before
its file, so a power cut can leave only files without rows (and rows whose file a person
removed by hand). Run once at start, before anything is served.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from .dicomfile import STORED_FILE_BUDGET, InvalidDicom, parse_instance
from .records import Origin, StoreItem
from .storage import FileStorage
from .writequeue import WriteQueue

log = logging.getLogger("pipacs.archive")


async def reconcile(files: FileStorage, queue: WriteQueue, incoming: Path) -> dict[str, int]:
    """A file without a row is either one whose row was deleted (listed in the index's dropped
    files: removed now) or one stored just before a power cut took the last, unsynced index
    commits (see ``IndexWriter.store_batch``): indexed again, since its sender had its answer.
    A row whose file is gone is dropped. Unfinished temporary files and uploads are removed.
    """
    writer = queue.writer
    known = await queue.on_writer(writer.file_uuids)
    dropped = await queue.on_writer(writer.dropped_file_uuids)
    scanned = await asyncio.to_thread(lambda: list(files.scan()))
    temps = [n for n, is_tmp in scanned if is_tmp]
    unindexed = [n for n, is_tmp in scanned if not is_tmp and n not in known]
    gone = [n for n in unindexed if n in dropped]
    found = [n for n in unindexed if n not in dropped]
    missing = known - {n for n, is_tmp in scanned if not is_tmp}

    def remove_all(names: list[str]) -> None:
        for n in names:
            files.remove_name(n)
    await asyncio.to_thread(remove_all, temps + gone)
    await asyncio.to_thread(shutil.rmtree, incoming, True)
    if missing:
        await queue.on_writer(writer.forget_files, missing)
    indexed, refused = await _index_found_files(files, queue, found)
    await asyncio.to_thread(remove_all, refused)
    if dropped or missing:
        await queue.on_writer(writer.clear_dropped_files)
    counts = {"temporary": len(temps), "removed": len(gone) + len(refused), "indexed": indexed,
              "missing": len(missing)}
    if any(counts.values()):
        log.warning("reconciled storage with the index: removed %d unfinished and %d unindexed files, "
                    "indexed %d files stored before a power cut, dropped %d index rows whose file was gone",
                    len(temps), counts["removed"], indexed, len(missing))
    return counts


async def _index_found_files(files: FileStorage, queue: WriteQueue, names: list[str]) -> tuple[int, list[str]]:
    """Index files found without rows; returns how many, and the names to remove (not DICOM,
    duplicates, refused by the storage limits)."""
    indexed, refused = 0, []
    for start in range(0, len(names), 64):
        items = []
        for name in names[start:start + 64]:
            try:
                parsed = await asyncio.to_thread(lambda n=name: parse_instance(files.read(n), STORED_FILE_BUDGET))
            except (OSError, InvalidDicom) as e:
                log.warning("removing %s, found without an index row: %s", name, e)
                refused.append(name)
                continue
            items.append(StoreItem(parsed, name, Origin(kind="Unknown")))
        if not items:
            continue
        outcomes, drop = await queue.on_writer(queue.writer.store_batch, items)
        indexed += sum(1 for o in outcomes if not isinstance(o, Exception) and o.status == "Success")
        refused += drop + [it.file_uuid for it, o in zip(items, outcomes) if isinstance(o, Exception)]
    return indexed, sorted(set(refused))
