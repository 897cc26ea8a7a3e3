"""The archive hub: the only code that writes storage (the index and the folder of files).

The DICOM and web layers call these coroutines from the event loop. Writes go
through one writer task: stores that arrive together are committed in one
transaction (one fsync for many instances), deletes are serialised with them.
A file is on disk (fsynced, renamed) before its row is committed, and a row is
deleted before its file, so a power cut can leave only orphan files, which
``reconcile`` removes at the next start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from .dicomfile import InvalidDicom, ParsedInstance, parse_instance
from .find import FindError, Query, build_query, fold, to_sql
from .index import Index, Resource, orthanc_date
from .model import Level
import errno
import shutil

from .storage import FileStorage, Spool, StorageFull

__all__ = ["Archive", "Origin", "IngestResult", "NotFound", "StoreRefused", "InvalidDicom", "StorageFull",
           "FindError"]

log = logging.getLogger("pipacs.archive")


class NotFound(LookupError):
    """No such resource (or not at that level)."""


class StoreRefused(Exception):
    """A store refused by policy (storage limits); the message is for the sender."""


@dataclass
class Origin:
    """Where an instance came from; kept as Orthanc's instance metadata."""
    kind: str = "RestApi"              # "DicomProtocol" | "RestApi" | "Import"
    remote_ip: str = ""
    remote_aet: str = ""
    called_aet: str = ""
    http_username: str = ""


@dataclass
class IngestResult:
    status: str                         # "Success" | "AlreadyStored"
    ids: tuple[str, str, str, str]      # patient, study, series, instance public IDs

    def orthanc_json(self) -> dict[str, str]:
        """The response body of Orthanc's POST /instances."""
        p, st, se, i = self.ids
        return {"ID": i, "ParentPatient": p, "ParentSeries": se, "ParentStudy": st,
                "Path": f"/instances/{i}", "Status": self.status}


@dataclass
class _PendingStore:
    parsed: ParsedInstance
    file_uuid: str
    origin: Origin
    future: asyncio.Future


@dataclass
class _PendingOp:
    run: Callable[[], Awaitable[Any]]
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
    index: Index = field(init=False)
    files: FileStorage = field(init=False)

    def __post_init__(self) -> None:
        self._queue: asyncio.Queue = asyncio.Queue()
        self._writer: asyncio.Task | None = None
        self._stabler: asyncio.Task | None = None
        self._closing = False

    @classmethod
    def from_settings(cls, s) -> "Archive":
        return cls(storage_dir=s.storage_dir, index_dir=s.index_dir,
                   overwrite_instances=s["OverwriteInstances"], stable_age=s["StableAge"],
                   batch_size=s["IngestBatchSize"], max_storage_mb=s["MaximumStorageSize"],
                   max_patient_count=s["MaximumPatientCount"], storage_mode=s["MaximumStorageMode"],
                   reserve_mb=s["MinimumFreeDiskSpace"])

    # ------------------------------------------------------------------ life cycle

    async def open(self) -> None:
        self.files = FileStorage(self.storage_dir, reserve_bytes=self.reserve_mb * 2**20)
        self.index = Index(self.index_dir / "pipacs-index.sqlite")
        await self.index.open()
        await self.index.r.create_function("fold", 1, fold, deterministic=True)
        await self.reconcile()
        self._writer = asyncio.create_task(self._writer_loop(), name="archive-writer")
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
        if self._writer:
            await self._queue.put(None)
            await self._writer
        await self.index.close()

    async def reconcile(self) -> dict[str, int]:
        """Make the folder and the index agree after any stop, clean or not."""
        known = await self.index.all_file_uuids()
        scanned = await asyncio.to_thread(lambda: list(self.files.scan()))
        temps = [n for n, is_tmp in scanned if is_tmp]
        orphans = [n for n, is_tmp in scanned if not is_tmp and n not in known]
        present = {n for n, is_tmp in scanned if not is_tmp}
        missing = known - present

        def remove_all() -> None:
            for n in temps + orphans:
                self.files.remove_name(n)
            shutil.rmtree(self.storage_dir / "incoming", ignore_errors=True)
        await asyncio.to_thread(remove_all)
        if missing:
            w = self.index.w
            await w.execute("BEGIN IMMEDIATE")
            for u in missing:
                await w.execute("DELETE FROM resources WHERE id = (SELECT resource_id FROM files WHERE uuid=?)", (u,))
            await self._delete_empty_parents()
            await w.execute("COMMIT")
        counts = {"temporary": len(temps), "orphans": len(orphans), "missing": len(missing)}
        if any(counts.values()):
            log.warning("reconciled storage with the index: removed %d unfinished and %d unindexed files, "
                        "%d index rows whose file was gone", len(temps), len(orphans), len(missing))
        return counts

    # ------------------------------------------------------------------ writing

    async def ingest_bytes(self, data: bytes, origin: Origin) -> IngestResult:
        """Check, store and index one instance. Raises InvalidDicom, StorageFull or StoreRefused."""
        parsed = await asyncio.to_thread(parse_instance, data)
        return await self.ingest_parsed(parsed, origin)

    async def ingest_parsed(self, parsed: ParsedInstance, origin: Origin) -> IngestResult:
        if self._closing:
            raise StoreRefused("the archive is shutting down")
        ids = parsed.ids
        if not self.overwrite_instances and await self.index.resource(ids[3]) is not None:
            return IngestResult("AlreadyStored", ids)
        file_uuid = await asyncio.to_thread(self.files.write, parsed.data)
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put(_PendingStore(parsed, file_uuid, origin, fut))
        return await fut

    async def _serialised(self, run: Callable[[], Awaitable[Any]]) -> Any:
        """Run a write operation on the writer task, between store batches."""
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put(_PendingOp(run, fut))
        return await fut

    async def _writer_loop(self) -> None:
        leftover = None
        while True:
            item = leftover if leftover is not None else await self._queue.get()
            leftover = None
            if item is None:
                return
            if isinstance(item, _PendingOp):
                await self._run_op(item)
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
            await self._commit_stores(batch)
            if leftover is None and self._queue.empty():
                continue

    async def _run_op(self, op: _PendingOp) -> None:
        w = self.index.w
        try:
            await w.execute("BEGIN IMMEDIATE")
            result = await op.run()
            await w.execute("COMMIT")
        except BaseException as e:
            await _rollback(w)
            if not op.future.done():
                op.future.set_exception(e)
            return
        op.future.set_result(result)

    async def _commit_stores(self, batch: list[_PendingStore]) -> None:
        w = self.index.w
        outcomes: list[Any] = []
        drop_files: list[str] = []
        try:
            await w.execute("BEGIN IMMEDIATE")
            for item in batch:
                outcomes.append(await self._insert(item, drop_files))
            await w.execute("COMMIT")
        except Exception as e:
            await _rollback(w)
            if len(batch) > 1:
                # find the culprit: commit one by one so that the others still get stored
                for item in batch:
                    await self._commit_stores([item])
                return
            log.error("cannot index instance %s: %s", batch[0].parsed.sop_instance_uid, e)
            outcomes = [e]
            drop_files = [batch[0].file_uuid]
        if drop_files:
            await asyncio.to_thread(lambda: [self.files.remove(u) for u in drop_files])
        for item, outcome in zip(batch, outcomes):
            if item.future.done():
                continue
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome if isinstance(outcome, (StoreRefused, StorageFull))
                                          else StoreRefused(f"the index could not be written: {outcome}"))
            else:
                item.future.set_result(outcome)

    async def _insert(self, item: _PendingStore, drop_files: list[str]) -> IngestResult | BaseException:
        w = self.index.w
        p = item.parsed
        ids = p.ids
        now = time.time()
        async with w.execute("SELECT id FROM resources WHERE public_id=?", (ids[3],)) as cur:
            row = await cur.fetchone()
        if row is not None:
            if not self.overwrite_instances:
                drop_files.append(item.file_uuid)
                return IngestResult("AlreadyStored", ids)
            async with w.execute("SELECT uuid FROM files WHERE resource_id=?", (row[0],)) as cur:
                old = await cur.fetchone()
            await w.execute("DELETE FROM resources WHERE id=?", (row[0],))
            if old:
                drop_files.append(old[0])

        refusal = await self._make_room(ids[0], len(p.data), drop_files)
        if refusal is not None:
            drop_files.append(item.file_uuid)
            return refusal

        parent: int | None = None
        existing: list[int] = []
        created: list[tuple[Level, str]] = []
        for lvl in (Level.PATIENT, Level.STUDY, Level.SERIES):
            async with w.execute("SELECT id FROM resources WHERE public_id=?", (ids[lvl],)) as cur:
                row = await cur.fetchone()
            if row is not None:
                parent = row[0]
                existing.append(parent)
                continue
            async with w.execute(
                    "INSERT INTO resources(public_id, level, parent_id, last_update) VALUES(?,?,?,?) RETURNING id",
                    (ids[lvl], int(lvl), parent, now)) as cur:
                parent = (await cur.fetchone())[0]
            await w.executemany("INSERT INTO main_tags VALUES(?,?,?)",
                                [(parent, t, v) for t, v in p.main_tags[lvl].items()])
            created.append((lvl, ids[lvl]))
        if existing:
            await w.execute(f"UPDATE resources SET last_update=?, stable=0 WHERE id IN ({','.join('?' * len(existing))})",
                            (now, *existing))
        async with w.execute(
                "INSERT INTO resources(public_id, level, parent_id, last_update) VALUES(?,?,?,?) RETURNING id",
                (ids[3], int(Level.INSTANCE), parent, now)) as cur:
            iid = (await cur.fetchone())[0]
        await w.executemany("INSERT INTO main_tags VALUES(?,?,?)",
                            [(iid, t, v) for t, v in p.main_tags[Level.INSTANCE].items()])
        await w.execute("INSERT INTO files VALUES(?,?,?)", (iid, item.file_uuid, len(p.data)))
        o = item.origin
        index_in_series = p.main_tags[Level.INSTANCE].get("0020,0013") or p.main_tags[Level.INSTANCE].get("0054,1330")
        meta = {
            "ReceptionDate": orthanc_date(now), "Origin": o.kind, "RemoteAET": o.remote_aet,
            "RemoteIP": o.remote_ip, "CalledAET": o.called_aet, "HttpUsername": o.http_username,
            "TransferSyntax": p.transfer_syntax, "SopClassUid": p.sop_class_uid,
        }
        if index_in_series:
            meta["IndexInSeries"] = index_in_series.strip()
        if p.pixel_data_offset is not None:
            meta["PixelDataOffset"] = str(p.pixel_data_offset)
        await w.executemany("INSERT INTO metadata VALUES(?,?,?)", [(iid, k, v) for k, v in meta.items()])
        date = orthanc_date(now)
        changes = [("NewInstance", 3, ids[3], date)]
        changes += [(f"New{lvl.title}", int(lvl), pub, date) for lvl, pub in reversed(created)]
        await w.executemany("INSERT INTO changes(change_type, level, public_id, date) VALUES(?,?,?,?)", changes)
        return IngestResult("Success", ids)

    async def _make_room(self, patient_public_id: str, size: int, drop_files: list[str]) -> StoreRefused | None:
        """Apply MaximumStorageSize / MaximumPatientCount inside the store transaction."""
        if not self.max_storage_mb and not self.max_patient_count:
            return None
        w = self.index.w
        max_bytes = self.max_storage_mb * 2**20
        if max_bytes and size > max_bytes:
            return StoreRefused(f"the instance ({size} bytes) is larger than MaximumStorageSize")
        while True:
            async with w.execute("SELECT COALESCE(SUM(size),0) FROM files") as cur:
                total = (await cur.fetchone())[0]
            async with w.execute("SELECT COUNT(*), SUM(public_id=?) FROM resources WHERE level=0",
                                 (patient_public_id,)) as cur:
                n_patients, is_known = await cur.fetchone()
            too_big = bool(max_bytes) and total + size > max_bytes
            too_many = bool(self.max_patient_count) and not is_known and n_patients >= self.max_patient_count
            if not (too_big or too_many):
                return None
            what = "MaximumStorageSize" if too_big else "MaximumPatientCount"
            if self.storage_mode == "Reject":
                return StoreRefused(f"the archive is full ({what} reached; MaximumStorageMode is Reject)")
            async with w.execute(
                    "SELECT id, public_id FROM resources WHERE level=0 AND protected=0 AND public_id<>? "
                    "ORDER BY last_update, id LIMIT 1", (patient_public_id,)) as cur:
                victim = await cur.fetchone()
            if victim is None:
                return StoreRefused(f"the archive is full ({what} reached) and every other patient is protected")
            log.warning("recycling patient %s to make room (%s)", victim[1], what)
            drop_files.extend(await self._delete_rows(victim[0]))
            await w.execute("INSERT INTO changes(change_type, level, public_id, date) VALUES(?,?,?,?)",
                            ("Deleted", 0, victim[1], orthanc_date()))

    async def _delete_rows(self, internal_id: int) -> list[str]:
        """Delete a resource and its descendants in the open transaction; return their file UUIDs."""
        w = self.index.w
        async with w.execute(
                """WITH RECURSIVE d(id) AS (SELECT ? UNION ALL
                       SELECT r.id FROM resources r JOIN d ON r.parent_id = d.id)
                   SELECT f.uuid FROM files f JOIN d ON f.resource_id = d.id""", (internal_id,)) as cur:
            uuids = [r[0] for r in await cur.fetchall()]
        await w.execute("DELETE FROM resources WHERE id=?", (internal_id,))
        return uuids

    async def _delete_empty_parents(self) -> None:
        w = self.index.w
        for lvl in (Level.SERIES, Level.STUDY, Level.PATIENT):
            await w.execute("DELETE FROM resources WHERE level=? AND NOT EXISTS "
                            "(SELECT 1 FROM resources c WHERE c.parent_id = resources.id)", (int(lvl),))

    async def delete(self, level: Level, public_id: str) -> dict[str, str] | None:
        """Delete a resource and every empty ancestor; return Orthanc's RemainingAncestor."""
        dropped: list[str] = []

        async def run() -> dict[str, str] | None:
            w = self.index.w
            async with w.execute("SELECT id, level, parent_id FROM resources WHERE public_id=?",
                                 (public_id,)) as cur:
                row = await cur.fetchone()
            if row is None or row[1] != level:
                raise NotFound(f"no {level.title.lower()} {public_id}")
            dropped.extend(await self._delete_rows(row[0]))
            parent = row[2]
            while parent is not None:
                async with w.execute("SELECT 1 FROM resources WHERE parent_id=? LIMIT 1", (parent,)) as cur:
                    has_child = await cur.fetchone()
                async with w.execute("SELECT public_id, level, parent_id FROM resources WHERE id=?",
                                     (parent,)) as cur:
                    prow = await cur.fetchone()
                if has_child:
                    lvl = Level(prow[1])
                    return {"ID": prow[0], "Path": f"/{lvl.plural}/{prow[0]}", "Type": lvl.title}
                await w.execute("DELETE FROM resources WHERE id=?", (parent,))
                parent = prow[2]
            return None

        remaining = await self._serialised(run)
        await asyncio.to_thread(lambda: [self.files.remove(u) for u in dropped])
        return remaining

    async def set_protected(self, public_id: str, protected: bool) -> None:
        async def run() -> None:
            cur = await self.index.w.execute("UPDATE resources SET protected=? WHERE public_id=? AND level=0",
                                             (int(protected), public_id))
            if cur.rowcount == 0:
                raise NotFound(f"no patient {public_id}")
        await self._serialised(run)

    async def _stable_loop(self) -> None:
        """Mark resources stable after StableAge seconds without news, logging Stable* changes."""
        while True:
            await asyncio.sleep(min(1.0, self.stable_age / 4))
            try:
                await self.mark_stable(time.time())
            except Exception as e:  # keep the loop alive: the next round retries
                log.error("stable check failed: %s", e)

    async def mark_stable(self, now: float) -> int:
        rows = await self.index.fetchall(
            "SELECT id, level, public_id FROM resources WHERE stable=0 AND level<3 AND last_update<? "
            "ORDER BY level DESC, id", (now - self.stable_age,))
        if not rows:
            return 0

        async def run() -> None:
            w = self.index.w
            date = orthanc_date(now)
            await w.executemany("UPDATE resources SET stable=1 WHERE id=? AND last_update<?",
                                [(r[0], now - self.stable_age) for r in rows])
            await w.executemany("INSERT INTO changes(change_type, level, public_id, date) VALUES(?,?,?,?)",
                                [(f"Stable{Level(r[1]).title}", r[1], r[2], date) for r in rows])
        await self._serialised(run)
        return len(rows)

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

    async def find(self, q: Query, since: int = 0, limit: int = 0) -> list[int]:
        sql, params = to_sql(q, since, limit)
        return [r[0] for r in await self.index.fetchall(sql, params)]

    async def find_request(self, level: Level, items: dict[str, str], case_sensitive: bool = True,
                           pn_case_sensitive: bool = False, since: int = 0, limit: int = 0) -> list[int]:
        return await self.find(build_query(level, items, case_sensitive, pn_case_sensitive), since, limit)

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
            "WHERE t.value=? AND ((t.tag='0010,0020' AND r.level=0) OR (t.tag='0020,000d' AND r.level=1) "
            "OR (t.tag='0020,000e' AND r.level=2) OR (t.tag='0008,0018' AND r.level=3)) ORDER BY r.level, r.id",
            (value.strip(),))
        return await self.index.resources_by_ids([r[0] for r in rows])


async def _rollback(conn) -> None:
    try:
        await conn.execute("ROLLBACK")
    except Exception:
        pass
