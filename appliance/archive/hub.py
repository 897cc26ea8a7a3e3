"""The archive hub: the only code that writes storage (the index and the folder of files).

The DICOM and web layers call it. A file's bytes are on disk (written synchronously,
renamed) before its index row is committed, and a row is deleted before its file, so a
power cut can leave only files without rows: ``reconcile`` removes those whose rows were
deleted and indexes the others at the next start. A store is answered once the file and its
folder entry are on disk; its index row may follow with the next synced commit.

Writes to the index go through one writer task feeding one writer thread: stores
that arrive together are committed in one transaction; deletes and other changes are
serialised with them (and synced before any file goes).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .dicomfile import InvalidDicom, ParsedInstance, parse_instance
from .find import FindError, Query, build_query, fold, to_sql
from .index import Index, Resource
from .model import Level
from .storage import FileStorage, Spool, Staged, StorageFull, storage_error
from .writer import IndexWriter, IngestResult, Limits, NotFound, Origin, StoreItem, StoreRefused

__all__ = ["Archive", "Origin", "IngestResult", "NotFound", "StoreRefused", "InvalidDicom", "StorageFull",
           "FindError", "PreparedInstance"]

log = logging.getLogger("pipacs.archive")


@dataclass
class PreparedInstance:
    """An instance checked and written to disk, not yet in the index."""
    parsed: ParsedInstance
    file_uuid: str


@dataclass
class _PendingStore:
    item: StoreItem
    future: asyncio.Future | Future   # a concurrent Future when a thread waits (``store_received``)


def _settle(future: asyncio.Future | Future, outcome: IngestResult | Exception) -> None:
    """A store's outcome to whoever waits for it (a coroutine, or an association's thread)."""
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


@dataclass
class _PendingOp:
    run: Callable[[], Any]
    future: asyncio.Future


@dataclass
class Statistics:
    patients: int = 0
    studies: int = 0
    series: int = 0
    instances: int = 0
    disk_size: int = 0


@dataclass
class Archive:
    storage_dir: Path
    index_dir: Path
    overwrite_instances: bool = False
    stable_age: float = 60.0
    batch_size: int = 64
    max_storage_mb: int = 0
    max_patient_count: int = 0
    storage_mode: str = "Recycle"
    reserve_mb: int = 0
    config_modalities: dict[str, dict] = field(default_factory=dict)
    # bytes -> bytes applied to every incoming instance before it is checked (AnonymizeOnIngest)
    ingest_transform: Callable[[bytes], bytes] | None = None
    index: Index = field(init=False)
    files: FileStorage = field(init=False)

    def __post_init__(self) -> None:
        self._db_modalities: dict[str, dict] = {}
        # public ID -> (path, size) for the hot /file route; emptied whenever a file goes away
        self._file_cache: dict[str, tuple] = {}
        self._queue: asyncio.Queue = asyncio.Queue()
        self._writer_task: asyncio.Task | None = None
        self._stabler: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-writer")
        self._parsers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="parser")
        self._closing = False
        self.writer = IndexWriter(self.index_dir / "pipacs-index.sqlite", self.overwrite_instances,
                                  Limits(self.max_storage_mb * 2**20, self.max_patient_count, self.storage_mode))

    @classmethod
    def from_settings(cls, s) -> "Archive":
        return cls(storage_dir=s.storage_dir, index_dir=s.index_dir,
                   overwrite_instances=s["OverwriteInstances"], stable_age=s["StableAge"],
                   batch_size=s["IngestBatchSize"], max_storage_mb=s["MaximumStorageSize"],
                   max_patient_count=s["MaximumPatientCount"], storage_mode=s["MaximumStorageMode"],
                   reserve_mb=s["MinimumFreeDiskSpace"], config_modalities=dict(s["DicomModalities"]))

    # ------------------------------------------------------------------ life cycle

    async def _on_writer(self, fn: Callable, *args) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        self.files = FileStorage(self.storage_dir, reserve_bytes=self.reserve_mb * 2**20)
        await self._on_writer(self.writer.open)
        self.index = Index(self.writer.path)
        await self.index.open()
        await self.index.r.create_function("fold", 1, fold, deterministic=True)
        await self.reconcile()
        self._db_modalities = await self._on_writer(self.writer.modalities)
        self._loop = asyncio.get_running_loop()
        self._writer_task = asyncio.create_task(self._writer_loop(), name="archive-writer")
        self._stabler = asyncio.create_task(self._stable_loop(), name="archive-stable")

    async def close(self) -> None:
        """Finish every queued write, then close the index."""
        self._closing = True
        if self._stabler:
            self._stabler.cancel()
            try:
                await self._stabler
            except asyncio.CancelledError:
                pass
        if self._writer_task:
            await self._queue.put(None)
            await self._writer_task
        await self.index.close()
        await self._on_writer(self.writer.close)
        self._executor.shutdown(wait=True)
        self._parsers.shutdown(wait=True)

    async def reconcile(self) -> dict[str, int]:
        """Make the folder and the index agree after any stop, clean or not.

        A file without a row is either one whose row was deleted (listed in the index's
        dropped files: removed now) or one stored just before a power cut took the last,
        unsynced index commits (see ``IndexWriter.store_batch``): indexed again, since its
        sender had its answer. A row whose file is gone is dropped.
        """
        known = await self._on_writer(self.writer.file_uuids)
        dropped = await self._on_writer(self.writer.dropped_file_uuids)
        scanned = await asyncio.to_thread(lambda: list(self.files.scan()))
        temps = [n for n, is_tmp in scanned if is_tmp]
        unindexed = [n for n, is_tmp in scanned if not is_tmp and n not in known]
        gone = [n for n in unindexed if n in dropped]
        found = [n for n in unindexed if n not in dropped]
        missing = known - {n for n, is_tmp in scanned if not is_tmp}

        def remove_all(names: list[str]) -> None:
            for n in names:
                self.files.remove_name(n)
        await asyncio.to_thread(remove_all, temps + gone)
        await asyncio.to_thread(shutil.rmtree, self.storage_dir / "incoming", True)
        if missing:
            await self._on_writer(self.writer.forget_files, missing)
            self._file_cache.clear()
        indexed, refused = await self._index_found_files(found)
        await asyncio.to_thread(remove_all, refused)
        if dropped or missing:
            await self._on_writer(self.writer.clear_dropped_files)
        counts = {"temporary": len(temps), "removed": len(gone) + len(refused), "indexed": indexed,
                  "missing": len(missing)}
        if any(counts.values()):
            log.warning("reconciled storage with the index: removed %d unfinished and %d unindexed files, "
                        "indexed %d files stored before a power cut, dropped %d index rows whose file was gone",
                        len(temps), counts["removed"], indexed, len(missing))
        return counts

    async def _index_found_files(self, names: list[str]) -> tuple[int, list[str]]:
        """Index files found without rows (see ``reconcile``); returns how many, and the names
        to remove (not DICOM, duplicates, refused by the storage limits)."""
        indexed, refused = 0, []
        for start in range(0, len(names), 64):
            items = []
            for name in names[start:start + 64]:
                try:
                    parsed = await asyncio.to_thread(lambda n=name: parse_instance(self.files.read(n)))
                except (OSError, InvalidDicom) as e:
                    log.warning("removing %s, found without an index row: %s", name, e)
                    refused.append(name)
                    continue
                items.append(StoreItem(parsed, name, Origin(kind="Unknown")))
            if not items:
                continue
            outcomes, drop = await self._on_writer(self.writer.store_batch, items)
            indexed += sum(1 for o in outcomes if not isinstance(o, Exception) and o.status == "Success")
            refused += drop + [it.file_uuid for it, o in zip(items, outcomes) if isinstance(o, Exception)]
        return indexed, sorted(set(refused))

    # ------------------------------------------------------------------ writing

    def store_received(self, data: bytes, origin: Origin, timeout: float) -> IngestResult:
        """Store an instance received by a thread other than the event loop's (a DICOM
        association's); blocking. Raises InvalidDicom, StorageFull or StoreRefused.

        The slow part (writing and checking the file) happens in the calling thread; only
        the index transaction goes to the archive's writer, through the event loop. The
        fsync of the file's folder entry runs while the index commits: were the power cut
        in between, the next start drops the row of a file whose name did not reach the
        disk, and the sender has had no answer yet.
        """
        prepared, staged = self._prepare(data)
        answer: Future = Future()
        item = StoreItem(prepared.parsed, prepared.file_uuid, origin)
        self._loop.call_soon_threadsafe(self._queue.put_nowait, _PendingStore(item, answer))
        if staged is not None:
            try:
                self.files.sync_folders(staged)
            except OSError as e:
                answer.result(timeout)       # the index row stays; a resend is AlreadyStored
                raise storage_error(e) from None
        return answer.result(timeout)

    def _prepare(self, data: bytes) -> tuple[PreparedInstance, Staged | None]:
        """Check an instance and write its file (renamed; its folder entry not yet synced
        when the Staged is returned). The bytes are written while a parser thread checks
        them: the write is one system call that releases the interpreter lock, so the disk
        and the parser work at once (the other way round, a writer thread would wait for
        the lock until the parse is over), and the file is published only if the check passes.
        """
        if self._closing:
            raise StoreRefused("the archive is shutting down")
        if self.ingest_transform is not None:   # the stored bytes are the transform's: check first
            parsed = self._parse_for_ingest(data, self.ingest_transform)
            return PreparedInstance(parsed, self.files.write(parsed.data)), None
        staging = self.files.start_staging(len(data))
        try:
            parsing = self._parsers.submit(parse_instance, data)
        except BaseException:
            self.files.abandon_staging(staging)
            raise
        staged = self.files.finish_staging(staging, data)
        try:
            parsed = parsing.result()
        except BaseException:
            self.files.discard(staged)
            raise
        if parsed.data is data:
            return PreparedInstance(parsed, self.files.publish(staged, sync_folders=False)), staged
        self.files.discard(staged)      # the meta information was corrected: store the corrected bytes
        return PreparedInstance(parsed, self.files.write(parsed.data)), None

    async def commit(self, prepared: PreparedInstance, origin: Origin,
                     extra_metadata: dict[int, dict[str, str]] | None = None) -> IngestResult:
        """Index a prepared instance (one transaction, possibly shared with other stores)."""
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put(_PendingStore(StoreItem(prepared.parsed, prepared.file_uuid, origin, extra_metadata),
                                            fut))
        return await fut

    async def ingest_bytes(self, data: bytes, origin: Origin,
                           extra_metadata: dict[int, dict[str, str]] | None = None,
                           already_deidentified: bool = False,
                           transform: Callable[[bytes], bytes] | None = None) -> IngestResult:
        """Check, store and index one instance. Raises InvalidDicom, StorageFull or StoreRefused.

        ``transform`` changes the bytes first (anonymize on upload); the configured
        ``ingest_transform`` applies unless the instance is ``already_deidentified``.
        """
        if transform is None and not already_deidentified:
            transform = self.ingest_transform
        parsed = await asyncio.to_thread(self._parse_for_ingest, data, transform)
        if not self.overwrite_instances and await self.index.resource(parsed.ids[3]) is not None:
            return IngestResult("AlreadyStored", parsed.ids)  # spare the disk a write
        if self._closing:
            raise StoreRefused("the archive is shutting down")
        file_uuid = await asyncio.to_thread(self.files.write, parsed.data)
        return await self.commit(PreparedInstance(parsed, file_uuid), origin, extra_metadata)

    @staticmethod
    def _parse_for_ingest(data: bytes, transform: Callable[[bytes], bytes] | None) -> ParsedInstance:
        """Parse, after ``transform`` (de-identification on ingest or on upload) when there is one."""
        return parse_instance(transform(data) if transform is not None else data)

    async def _serialised(self, fn: Callable, *args) -> Any:
        """Run a write on the writer thread, between store batches."""
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put(_PendingOp(lambda: fn(*args), fut))
        return await fut

    async def _writer_loop(self) -> None:
        leftover = None
        while True:
            item = leftover if leftover is not None else await self._queue.get()
            leftover = None
            if item is None:
                return
            if isinstance(item, _PendingOp):
                try:
                    item.future.set_result(await self._on_writer(item.run))
                except Exception as e:
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
            outcomes, drop = await self._on_writer(self._store_batch, batch)
            if drop:
                self._file_cache.clear()
                await asyncio.to_thread(lambda: [self.files.remove(u) for u in drop])
            for pending, outcome in zip(batch, outcomes):
                if not isinstance(outcome, Exception) and outcome.status == "Success":
                    self._remember_file(outcome.ids[3], pending.item.file_uuid, len(pending.item.parsed.data))
                if not pending.future.done():
                    _settle(pending.future, outcome)

    def _store_batch(self, batch: list[_PendingStore]) -> tuple[list[IngestResult | Exception], list[str]]:
        """On the writer thread: index a batch, and answer the threads waiting for theirs at
        once (the event loop settles the others, a turn or two later)."""
        outcomes, drop = self.writer.store_batch([b.item for b in batch])
        for pending, outcome in zip(batch, outcomes):
            if isinstance(pending.future, Future):
                _settle(pending.future, outcome)
        return outcomes, drop

    async def delete(self, level: Level, public_id: str) -> dict[str, str] | None:
        """Delete a resource and every empty ancestor; return Orthanc's RemainingAncestor."""
        remaining, dropped = await self._serialised(self.writer.delete, level, public_id)
        self._file_cache.clear()
        await asyncio.to_thread(lambda: [self.files.remove(u) for u in dropped])
        return remaining

    async def set_protected(self, public_id: str, protected: bool) -> None:
        await self._serialised(self.writer.set_protected, public_id, protected)

    async def set_label(self, level: Level, public_id: str, label: str, present: bool) -> bool:
        return await self._serialised(self.writer.set_label, level, public_id, label, present)

    async def set_metadata(self, level: Level, public_id: str, name: str, value: str | None) -> bool:
        return await self._serialised(self.writer.set_metadata, level, public_id, name, value)

    async def secret(self, name: str) -> bytes:
        """A random key made once per appliance and kept in the index (keyed hashes for anonymization)."""
        return bytes.fromhex(await self._serialised(self.writer.property, f"secret:{name}",
                                                    lambda: os.urandom(32).hex()))

    async def instance_paths_below(self, resources: list[Resource]) -> list[dict[str, Any]]:
        """Every instance below the resources (each once), with its file path and the main tags of
        its series, study and patient: what an archive or media download lays out.

        The paths are for reading only.
        """
        seen: set[int] = set()
        rows: list[tuple] = []
        for res in resources:
            for row in await self.index.fetchall(
                    """WITH RECURSIVE d(id, level) AS (SELECT id, level FROM resources WHERE id=? UNION ALL
                           SELECT r.id, r.level FROM resources r JOIN d ON r.parent_id = d.id)
                       SELECT i.id, i.public_id, se.id, st.id, pa.id, f.uuid, f.size FROM d
                       JOIN resources i ON i.id = d.id AND d.level = 3
                       JOIN files f ON f.resource_id = i.id
                       JOIN resources se ON se.id = i.parent_id
                       JOIN resources st ON st.id = se.parent_id
                       JOIN resources pa ON pa.id = st.parent_id
                       ORDER BY pa.id, st.id, se.id, i.id""", (res.id,)):
                if row[0] not in seen:
                    seen.add(row[0])
                    rows.append(row)
        tags = await self.index.main_tags(list({x for r in rows for x in (r[0], r[2], r[3], r[4])}))
        return [{"instance": r[1], "path": self.files.path_of(r[5]), "size": r[6],
                 "instance_tags": tags.get(r[0], {}), "series_tags": tags.get(r[2], {}),
                 "study_tags": tags.get(r[3], {}), "patient_tags": tags.get(r[4], {}),
                 "series_key": r[2], "study_key": r[3], "patient_key": r[4]} for r in rows]

    def scratch_dir(self) -> Path:
        """Where temporary work may go (emptied at every start, like unfinished uploads)."""
        d = self.storage_dir / "incoming"
        d.mkdir(parents=True, exist_ok=True)
        return d

    async def instances_below(self, res: Resource) -> list[Resource]:
        """Every instance at or below a resource, in storage order."""
        if res.level == Level.INSTANCE:
            return [res]
        return await self.index.resources_by_ids(await self.index.descendant_instances(res.id))

    # ------------------------------------------------------------------ modalities

    def modalities(self) -> dict[str, dict]:
        """Known DICOM nodes: the configuration's, then those added at run time (REST, classroom moves).

        A plain dict read: safe to call from association threads.
        """
        merged = dict(self.config_modalities)
        merged.update(self._db_modalities)
        return merged

    def is_configured_modality(self, name: str) -> bool:
        return name in self.config_modalities and name not in self._db_modalities

    async def put_modality(self, name: str, config: dict) -> None:
        await self._serialised(self.writer.put_modality, name, config)
        self._db_modalities = {**self._db_modalities, name: config}

    async def delete_modality(self, name: str) -> bool:
        removed = await self._serialised(self.writer.delete_modality, name)
        self._db_modalities = {k: v for k, v in self._db_modalities.items() if k != name}
        return removed

    async def _stable_loop(self) -> None:
        """Mark resources stable after StableAge seconds without news, logging Stable* changes."""
        while True:
            await asyncio.sleep(min(1.0, self.stable_age / 4))
            try:
                await self.mark_stable(time.time())
            except Exception as e:  # keep the loop alive: the next round retries
                log.error("stable check failed: %s", e)

    async def mark_stable(self, now: float) -> int:
        row = await self.index.fetchone("SELECT 1 FROM resources WHERE stable=0 AND level<3 AND last_update<? "
                                        "LIMIT 1", (now - self.stable_age,))
        if row is None:
            return 0
        return await self._serialised(self.writer.mark_stable, now, self.stable_age)

    async def spool_request_body(self, stream) -> Spool:
        """Receive an upload (aiohttp StreamReader) without holding a large one in memory."""
        spool = await asyncio.to_thread(Spool, self.storage_dir / "incoming")
        limit = await asyncio.to_thread(self.files.free_bytes) - self.files.reserve_bytes
        try:
            async for chunk in stream.iter_chunked(1 << 20):
                if spool.size + len(chunk) > max(limit, spool.max_memory):
                    raise StorageFull(errno.ENOSPC, "the upload is larger than the free space on the storage disk"
                                      + (" (keeping MinimumFreeDiskSpace free)" if self.files.reserve_bytes else ""))
                await asyncio.to_thread(spool.write, chunk)
        except BaseException:
            await asyncio.to_thread(spool.close)
            raise
        return spool

    # ------------------------------------------------------------------ reading

    async def get(self, level: Level, public_id: str) -> Resource:
        res = await self.index.resource(public_id, level)
        if res is None:
            raise NotFound(f"no {level.title.lower()} {public_id}")
        return res

    async def read_file(self, instance: Resource) -> bytes:
        f = (await self.index.files([instance.id])).get(instance.id)
        if f is None:
            raise NotFound(f"no file for instance {instance.public_id}")
        try:
            return await asyncio.to_thread(self.files.read, f[0])
        except FileNotFoundError:
            raise NotFound(f"the file of instance {instance.public_id} is missing") from None

    async def instance_file(self, public_id: str) -> tuple[Path, int]:
        """The path of an instance's file and its size (NotFound for an unknown instance).

        The path is for reading only (a zero-copy send by the web server); nothing but the
        archive writes or removes files. Instances just stored are known without a query: a
        class fetches the case the teacher has just sent.
        """
        hit = self._file_cache.get(public_id)
        if hit is not None:
            return hit
        row = await self.index.fetchone(
            "SELECT f.uuid, f.size FROM resources r JOIN files f ON f.resource_id = r.id "
            "WHERE r.public_id=? AND r.level=3", (public_id,))
        if row is None:
            raise NotFound(f"no instance {public_id}")
        return self._remember_file(public_id, row[0], row[1])

    def _remember_file(self, public_id: str, file_uuid: str, size: int) -> tuple[Path, int]:
        if len(self._file_cache) >= 4096:
            self._file_cache.clear()
        answer = self._file_cache[public_id] = (self.files.path_of(file_uuid), size)
        return answer

    async def find(self, q: Query, since: int = 0, limit: int = 0) -> list[int]:
        sql, params = to_sql(q, since, limit)
        return [r[0] for r in await self.index.fetchall(sql, params)]

    async def find_request(self, level: Level, items: dict[str, str], case_sensitive: bool = True,
                           pn_case_sensitive: bool = False, since: int = 0, limit: int = 0,
                           labels: list[str] | None = None, labels_constraint: str = "All") -> list[int]:
        q = build_query(level, items, case_sensitive, pn_case_sensitive)
        q.labels, q.labels_constraint = list(labels or []), labels_constraint
        return await self.find(q, since, limit)

    async def instance_files(self, q: Query) -> list[tuple[str, str, str]]:
        """(file UUID, SOP class, transfer syntax) of every instance below the matches of ``q``: what a
        C-MOVE or C-GET sends. The files are then read with ``files.read`` from the sending thread."""
        return await self._instance_files_below(await self.find(q))

    async def files_of_resources(self, public_ids: list[str]) -> tuple[list[tuple[str, str, str]], list[str]]:
        """Instances below each public ID (any level) as in ``instance_files``, and the IDs not found."""
        ids, missing = [], []
        for pid in public_ids:
            res = await self.index.resource(pid)
            if res is None:
                missing.append(pid)
            else:
                ids.append(res.id)
        return await self._instance_files_below(ids), missing

    async def _instance_files_below(self, ids: list[int]) -> list[tuple[str, str, str]]:
        out: list[tuple[str, str, str]] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            out += await self.index.fetchall(
                f"""WITH RECURSIVE d(id, level) AS (
                        SELECT id, level FROM resources WHERE id IN ({",".join("?" * len(chunk))})
                        UNION ALL SELECT r.id, r.level FROM resources r JOIN d ON r.parent_id = d.id)
                    SELECT f.uuid, COALESCE(mc.value, ''), COALESCE(mt.value, '') FROM d
                    JOIN files f ON f.resource_id = d.id
                    LEFT JOIN metadata mc ON mc.resource_id = d.id AND mc.name = 'SopClassUid'
                    LEFT JOIN metadata mt ON mt.resource_id = d.id AND mt.name = 'TransferSyntax'
                    ORDER BY d.id""", chunk)
        return out

    async def statistics(self) -> Statistics:
        counts = dict(await self.index.fetchall("SELECT level, COUNT(*) FROM resources GROUP BY level"))
        size = (await self.index.fetchone("SELECT COALESCE(SUM(size),0) FROM files"))[0]
        return Statistics(counts.get(0, 0), counts.get(1, 0), counts.get(2, 0), counts.get(3, 0), size)

    async def resource_statistics(self, res: Resource) -> dict[str, int]:
        row = await self.index.fetchone(
            """WITH RECURSIVE d(id, level) AS (SELECT id, level FROM resources WHERE id=? UNION ALL
                   SELECT r.id, r.level FROM resources r JOIN d ON r.parent_id = d.id)
               SELECT SUM(d.level=1), SUM(d.level=2), SUM(d.level=3), COALESCE(SUM(f.size),0)
               FROM d LEFT JOIN files f ON f.resource_id = d.id""", (res.id,))
        return {"studies": row[0] or 0, "series": row[1] or 0, "instances": row[2] or 0, "size": row[3] or 0}

    async def lookup(self, value: str) -> list[Resource]:
        """Resources whose identifier (PatientID or a UID) is ``value``: Orthanc's /tools/lookup."""
        rows = await self.index.fetchall(
            "SELECT t.resource_id FROM main_tags t JOIN resources r ON r.id = t.resource_id "
            "WHERE t.value=? AND ((t.tag='0010,0020' AND r.level=0) "
            "OR (t.tag='0020,000d' AND r.level=1) OR (t.tag='0020,000e' AND r.level=2) "
            "OR (t.tag='0008,0018' AND r.level=3)) ORDER BY r.level, r.id", (value.strip(),))
        return await self.index.resources_by_ids([r[0] for r in rows])
