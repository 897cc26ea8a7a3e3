"""The archive hub: the only code that writes storage (the index and the folder of files).

The DICOM and web layers call it, through ``appliance.archive``. A file's bytes are on disk
(written synchronously, renamed) before its index row is committed, and a row is deleted
before its file, so a power cut can leave only files without rows: ``reconcile`` removes
those whose rows were deleted and indexes the others at the next start. A store is answered
once the file and its folder entry are on disk; its index row may follow with the next
synced commit.

The jobs live beside it: ``ingest`` (check and write a file), ``writequeue`` (batched index
writes), ``reconcile`` (start-up), ``modalities``, ``uploads``; the index is ``index``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .casestore import CaseMethods, utc_now
from .derived import DERIVED_FOLDER, DerivedStore
from .dicomfile import STORED_FILE_BUDGET, Budget, InvalidDicom, ParsedInstance, parse_instance
from .find import FindError, Query, build_query
from .frames import FrameMethods
from .index import IndexReader, open_index
from .ingest import PreparedInstance, Transform, parse_for_ingest, prepare
from .lock import StorageLock
from .model import Level, orthanc_date
from .nodes import ModalityRegistry
from .reconcile import reconcile
from .records import (
    IngestResult,
    Limits,
    NotFound,
    Origin,
    Resource,
    Statistics,
    StoreItem,
    StoreRefused,
)
from .sessionstore import SessionMethods
from .storage import FileStorage, Spool, StorageFull, storage_error
from .uploads import spool_stream
from .writequeue import WriteQueue

__all__ = ["Archive", "Origin", "IngestResult", "NotFound", "StoreRefused", "InvalidDicom", "StorageFull",
           "FindError", "PreparedInstance", "Statistics"]

log = logging.getLogger("pipacs.archive")
SETTING_PREFIX = "setting:"


@dataclass
class Archive(CaseMethods, SessionMethods, FrameMethods):
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
    ingest_transform: Transform | None = None
    # the budgets of every input (MaximumInstanceSize ... MaximumZipMembers): the same for the
    # DICOM listener, REST uploads, STOW-RS and ZIP members
    max_instance_mb: int = 256
    max_inflation_ratio: int = 100
    max_dataset_elements: int = 250_000
    max_sequence_depth: int = 32
    max_zip_members: int = 50_000
    index: IndexReader = field(init=False)
    files: FileStorage = field(init=False)

    def __post_init__(self) -> None:
        # public ID -> (path, size) for the hot /file route; emptied whenever a file goes away
        self._file_cache: dict[str, tuple] = {}
        self._stabler: asyncio.Task | None = None
        self._identities: asyncio.Task | None = None
        self._tags: asyncio.Task | None = None
        self._student_view: dict[tuple[Level, str], bool] = {}
        self._generation = 0
        self._parsers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="parser")
        self._closing = False
        self._locks: list[StorageLock] = []
        self._imports_stopped = False
        self._frames_init()
        self.budget = Budget(self.max_instance_mb * 2**20, self.max_inflation_ratio, self.max_dataset_elements,
                             self.max_sequence_depth)
        self.index, self._writer = open_index(
            self.index_dir, self.overwrite_instances,
            Limits(self.max_storage_mb * 2**20, self.max_patient_count, self.storage_mode))
        self._writes = WriteQueue(self._writer, self.batch_size, self._stored, self._drop_files, self._batch_stored)
        # teaching cases (``casestore``): key images' instance tags, and who hears of new instances
        self._case_image_tags: dict[str, dict] = {}
        self._store_listeners: list = []
        self._derived: DerivedStore | None = None      # derived data (derived_store), dropped with its files
        self._drop_listeners: list[Callable[[list[str]], None]] = []
        self._listener_queue: asyncio.Queue = asyncio.Queue()
        self._listener_task: asyncio.Task | None = None
        self._modalities = ModalityRegistry(self.config_modalities)
        self._settings: dict[str, str] = {}
        self._sessions_init()       # teaching sessions (``sessionstore``): what is asked from memory

    @classmethod
    def from_settings(cls, s) -> Archive:
        return cls(storage_dir=s.storage_dir, index_dir=s.index_dir,
                   overwrite_instances=s["OverwriteInstances"], stable_age=s["StableAge"],
                   batch_size=s["IngestBatchSize"], max_storage_mb=s["MaximumStorageSize"],
                   max_patient_count=s["MaximumPatientCount"], storage_mode=s["MaximumStorageMode"],
                   reserve_mb=s["MinimumFreeDiskSpace"], config_modalities=dict(s["DicomModalities"]),
                   max_instance_mb=s["MaximumInstanceSize"], max_inflation_ratio=s["MaximumInflationRatio"],
                   max_dataset_elements=s["MaximumDatasetElements"], max_sequence_depth=s["MaximumSequenceDepth"],
                   max_zip_members=s["MaximumZipMembers"])

    # ------------------------------------------------------------------ life cycle

    async def open(self) -> None:
        """Lock the storage (StorageInUse when another server has it), then open the index and
        reconcile it with the folder."""
        self._loop = asyncio.get_running_loop()   # the derived store asks the writer from its worker thread
        # one lock per folder: the index's too when it has its own (a second flock of one file in
        # this process would wait for the first)
        folders = dict.fromkeys(Path(d).resolve() for d in (self.storage_dir, self.index_dir))
        self._locks = [StorageLock(d) for d in folders]
        try:
            for lock in self._locks:
                lock.acquire()
            self.files = FileStorage(self.storage_dir, reserve_bytes=self.reserve_mb * 2**20)
            await self._writes.on_writer(self._writer.open)
        except BaseException:
            self._release_locks()
            raise
        await self.index.open()
        await self.reconcile()
        await self._sessions_load()
        await self._modalities.load(self._writes)
        self._settings = await self._writes.on_writer(self._writer.properties, SETTING_PREFIX)
        self._writes.start()
        self._listener_task = asyncio.create_task(self._run_store_listeners(), name="archive-store-listeners")
        self._stabler = asyncio.create_task(self._stable_loop(), name="archive-stable")
        self._identities = asyncio.create_task(self._read_unread_identities(), name="archive-identities")
        self._tags = asyncio.create_task(self._read_unread_tags(), name="archive-tags")

    async def close(self) -> None:
        """Finish every queued write, then close the index. Every step runs even when one
        before it failed (logged), so no thread is left holding the process."""
        self._closing = True
        for task in (self._stabler, self._identities, self._tags):
            if task:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception as e:  # noqa: BLE001 - logged: closing goes on
                    log.error("archive task %s ended with an error: %s", task.get_name(), e)
        if self._listener_task is not None:
            # before the writes drain: a listener may still write (a change queued after the
            # drain would wait for ever); batches committed from here on are not told
            self._listener_queue.put_nowait(None)
            try:
                await self._listener_task
            except Exception as e:  # noqa: BLE001 - logged: closing goes on
                log.error("the store listeners ended with an error: %s", e)
        steps = (("finish queued writes", self._writes.drain), ("close the index reader", self.index.close),
                 ("close the index writer", self._writes.close),
                 ("stop the parsers", lambda: asyncio.to_thread(self._parsers.shutdown, True)))
        for name, step in steps:
            try:
                await step()
            except Exception as e:  # noqa: BLE001 - logged: the next step runs anyway
                log.error("closing the archive: could not %s: %s", name, e)
        self._release_locks()

    def describe_owner(self, **details: Any) -> None:
        """Add ``details`` (the ports) to what the storage lock says of this server, so that a second
        server started on the same folder can name it."""
        for lock in self._locks:
            lock.describe(**details)

    def _release_locks(self) -> None:
        for lock in self._locks:
            lock.release()

    async def reconcile(self) -> dict[str, int]:
        """Make the folder and the index agree (see ``reconcile.reconcile``)."""
        counts = await reconcile(self.files, self._writes, self.storage_dir / "incoming")
        if counts["missing"]:
            self._file_cache.clear()
        return counts

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
        if self._closing:
            raise StoreRefused("the archive is shutting down")
        prepared, staged = prepare(self.files, self._parsers, data, self.ingest_transform, self.budget)
        answer: Future = self._writes.store_from_thread(StoreItem(prepared.parsed, prepared.file_uuid, origin))
        if staged is not None:
            try:
                self.files.sync_folders(staged)
            except OSError as e:
                answer.result(timeout)       # the index row stays; a resend is AlreadyStored
                raise storage_error(e) from None
        return answer.result(timeout)

    @property
    def closing(self) -> bool:
        """The archive is closing, or was told to stop long imports: a ZIP's members stop
        being imported (between two members)."""
        return self._closing or self._imports_stopped

    def stop_imports(self) -> None:
        """Stop long imports (ZIP uploads) at their next member, while single stores go on:
        for a stop, before the web server waits for its running requests (aiohttp 3.14 waits
        its shutdown timeout twice before it cancels a handler)."""
        self._imports_stopped = True

    def check_instance(self, data: bytes) -> ParsedInstance:
        """Check an instance within the budget, store nothing (what it names, before a store
        decides on it: STOW-RS's study check); blocking. Raises InvalidDicom (OverBudget)."""
        return parse_instance(data, self.budget)

    async def commit(self, prepared: PreparedInstance, origin: Origin,
                     extra_metadata: dict[int, dict[str, str]] | None = None) -> IngestResult:
        """Index a prepared instance (one transaction, possibly shared with other stores)."""
        return await self._writes.store(StoreItem(prepared.parsed, prepared.file_uuid, origin, extra_metadata))

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
        parsed = await asyncio.to_thread(parse_for_ingest, data, transform, self.budget)
        if not self.overwrite_instances and await self.index.resource(parsed.ids[3]) is not None:
            return IngestResult("AlreadyStored", parsed.ids)  # spare the disk a write
        if self._closing:
            raise StoreRefused("the archive is shutting down")
        file_uuid = await asyncio.to_thread(self.files.write, parsed.data)
        return await self.commit(PreparedInstance(parsed, file_uuid), origin, extra_metadata)

    def _stored(self, item: StoreItem) -> None:
        self._changed()
        self._remember_file(item.parsed.ids[3], item.file_uuid, len(item.parsed.data))

    async def _drop_files(self, uuids: list[str]) -> None:
        """Remove files whose rows are gone (committed before this runs)."""
        self._changed()
        self._file_cache.clear()
        self._case_image_tags.clear()
        # what was made from them goes first (patient names, pixels): a crash or a failing remove after this
        # leaves only files reconcile removes at start, never derived data of a deleted instance
        if uuids and self._derived is not None:
            await asyncio.to_thread(self._derived.drop_owners, uuids)
        await asyncio.to_thread(lambda: [self.files.remove(u) for u in uuids])
        for listener in self._drop_listeners:
            listener(uuids)

    def on_files_dropped(self, listener: Callable[[list[str]], None]) -> None:
        """Call ``listener(file_uuids)`` (on the loop) after instance files are deleted or replaced: the
        class cache's memory tier forgets what it made from them."""
        self._drop_listeners.append(listener)

    async def delete(self, level: Level, public_id: str, in_cases: str = "detach") -> dict[str, str] | None:
        """Delete a resource and every empty ancestor; return Orthanc's RemainingAncestor.

        When teaching cases use a study at or below it: ``in_cases="refuse"`` raises CaseConflict
        naming them; ``"detach"`` (the default) takes the study and its key images out of them.
        Callers that may meet cases say which (web/resources.py, teaching/derive.py)."""
        remaining, dropped = await self._writes.serialised(self._writer.delete, level, public_id, in_cases,
                                                           utc_now())
        self._changed()
        await self._refresh_held_back()      # a study that left cases leaves what they hold back
        await self._drop_files(dropped)
        return remaining

    async def set_protected(self, public_id: str, protected: bool) -> None:
        await self._writes.serialised(self._writer.set_protected, public_id, protected)

    async def set_label(self, level: Level, public_id: str, label: str, present: bool) -> bool:
        changed = await self._writes.serialised(self._writer.set_label, level, public_id, label, present)
        self._changed()
        return changed

    async def set_metadata(self, level: Level, public_id: str, name: str, value: str | None) -> bool:
        return await self._writes.serialised(self._writer.set_metadata, level, public_id, name, value)

    async def secret(self, name: str) -> bytes:
        """A random key made once per appliance and kept in the index (keyed hashes for anonymization)."""
        return bytes.fromhex(await self._writes.serialised(self._writer.property, f"secret:{name}",
                                                           lambda: os.urandom(32).hex()))

    def setting(self, name: str) -> str | None:
        """A setting changed at run time (the teacher's defaults, as JSON text), kept in the index
        so that it survives restarts; None when never set. Read from memory: any thread may ask."""
        return self._settings.get(name)

    async def put_setting(self, name: str, value: str | None) -> None:
        """Store a setting (None: forget it, back to the built-in default); durable when this returns."""
        await self._writes.serialised(self._writer.set_property, SETTING_PREFIX + name, value)
        if value is None:
            self._settings.pop(name, None)
        else:
            self._settings[name] = value

    async def mark_stable(self, now: float) -> int:
        if not await self.index.has_unstable_before(now - self.stable_age):
            return 0
        return await self._writes.serialised(self._writer.mark_stable, now, self.stable_age)

    async def _stable_loop(self) -> None:
        """Mark resources stable after StableAge seconds without news, logging Stable* changes."""
        while True:
            await asyncio.sleep(min(1.0, self.stable_age / 4))
            try:
                await self.mark_stable(time.time())
            except Exception as e:  # noqa: BLE001 - logged: the loop must outlive one failure
                log.error("stable check failed: %s", e)

    # ------------------------------------------------------------------ what students may see

    async def release_study(self, public_id: str, released: bool) -> None:
        """Show a study to students (once every instance of its patient is de-identified), or stop."""
        await self._writes.serialised(self._writer.set_released, public_id, released)
        self._changed()

    async def publish_label(self, label: str, published: bool) -> bool:
        """Show every study carrying ``label`` to students (a collection for the class), or stop."""
        changed = await self._writes.serialised(self._writer.set_label_published, label, published)
        self._changed()
        return changed

    async def is_released(self, res: Resource) -> bool:
        return await self.index.is_released(res.id)

    async def student_labels(self) -> list[str]:
        return await self.index.student_labels()

    async def labels_students_see(self) -> list[str]:
        """The published labels and those of studies students may see."""
        q = build_query(Level.STUDY, {})
        q.students = True
        seen = set(await self.index.student_labels())
        for labels in (await self.index.labels_of(await self.find(q))).values():
            seen.update(labels)
        return sorted(seen)

    async def visible_to_students(self, res: Resource) -> bool:
        return res.id in await self.index.student_visible_ids([res.id])

    async def student_may_see(self, level: Level, public_id: str) -> bool:
        """Whether a student may see this resource (False for an unknown one too). Answers are
        remembered until the next change to the archive: asked on every student request."""
        key = (level, public_id)
        known = self._student_view.get(key)
        if known is not None:
            return known
        generation = self._generation
        res = await self.index.resource(public_id, level)
        visible = res is not None and await self.visible_to_students(res)
        if generation == self._generation:        # no change meanwhile: the answer is still true
            if len(self._student_view) >= 8192:
                self._student_view.clear()
            self._student_view[key] = visible
        return visible

    def _changed(self) -> None:
        """Anything stored, deleted, released or labelled: what students see may differ."""
        self._generation += 1
        self._student_view.clear()

    async def narrowed_for_students(self, resources: list[Resource]) -> list[Resource]:
        """What students may take from resources they may see: a patient stands for its
        published studies only (the others are the teacher's)."""
        out: list[Resource] = []
        for r in resources:
            if r.level == Level.PATIENT:
                out += await self.only_visible_to_students(await self.index.children(r.id))
            else:
                out.append(r)
        return out

    async def only_visible_to_students(self, resources: list[Resource]) -> list[Resource]:
        visible = await self.index.student_visible_ids([r.id for r in resources])
        return [r for r in resources if r.id in visible]

    async def _read_unread_identities(self) -> None:
        """PatientIdentityRemoved of instances indexed before the index kept it (schema 1), read
        from their files in the background; until then students do not see them."""
        done = 0
        while batch := await self.index.unread_identities(200):
            found = await asyncio.to_thread(self._identities_of, batch)
            await self._writes.serialised(self._writer.set_identities, found)
            self._changed()
            done += len(found)
        if done:
            log.warning("read PatientIdentityRemoved of %d instances stored before this version", done)

    async def _read_unread_tags(self) -> None:
        """The tags indexed since schema 3 (Timezone Offset From UTC, Performed Procedure Step Start
        Date/Time) of series indexed before, read from each series' first file in the background;
        until then QIDO-RS answers leave them out."""
        done = 0
        while batch := await self.index.series_with_unread_tags(100):
            found = await asyncio.to_thread(self._tags_of, batch)
            await self._writes.serialised(self._writer.set_read_tags, found)
            done += len(found)
        if done:
            log.warning("read the tags indexed since this version for %d series stored before it", done)

    def _tags_of(self, batch: list[tuple[int, int, str | None]]) -> list[tuple[int, int, dict, dict]]:
        out = []
        for series_id, study_id, file_uuid in batch:
            series_tags: dict[str, str] = {}
            study_tags: dict[str, str] = {}
            if file_uuid is not None:
                try:
                    parsed = parse_instance(self.files.read(file_uuid), STORED_FILE_BUDGET)
                    series_tags, study_tags = parsed.main_tags[Level.SERIES], parsed.main_tags[Level.STUDY]
                except (OSError, InvalidDicom) as e:
                    log.warning("cannot read instance file %s again: %s; its series' new tags stay unknown",
                                file_uuid, e)
            out.append((series_id, study_id, series_tags, study_tags))
        return out

    def _identities_of(self, batch: list[tuple[int, str]]) -> list[tuple[int, bool]]:
        out = []
        for rid, file_uuid in batch:
            try:
                parsed = parse_instance(self.files.read(file_uuid), STORED_FILE_BUDGET)
                out.append((rid, parsed.identity_removed))
            except (OSError, InvalidDicom) as e:
                log.warning("cannot read instance file %s again: %s; not shown to students", file_uuid, e)
                out.append((rid, False))
        return out

    def scratch_dir(self) -> Path:
        """Where temporary work may go (emptied at every start, like unfinished uploads)."""
        d = self.storage_dir / "incoming"
        d.mkdir(parents=True, exist_ok=True)
        return d

    async def spool_request_body(self, stream: Any, content_length: int | None = None,
                                 encoded: bool = False) -> Spool:
        """Receive an upload (aiohttp StreamReader) without holding a large one in memory,
        within its budget (``uploads.body_limits``: ``encoded`` when it had a Content-Encoding,
        ``content_length`` its size as sent). Raises OverBudget or StorageFull."""
        return await spool_stream(self.files, self.storage_dir / "incoming", stream, self.budget,
                                  content_length, encoded)

    # ------------------------------------------------------------------ modalities

    def modalities(self) -> dict[str, dict]:
        """Known DICOM nodes: the configuration's, then those added at run time (REST, classroom moves).

        A plain dict read: safe to call from association threads.
        """
        return self._modalities.all()

    def is_configured_modality(self, name: str) -> bool:
        return self._modalities.is_configured(name)

    async def put_modality(self, name: str, config: dict) -> None:
        await self._modalities.put(name, config)

    async def delete_modality(self, name: str) -> bool:
        return await self._modalities.delete(name)

    # ------------------------------------------------------------------ reading

    async def get(self, level: Level, public_id: str) -> Resource:
        res = await self.index.resource(public_id, level)
        if res is None:
            raise NotFound(f"no {level.title.lower()} {public_id}")
        return res

    async def metadata(self, res: Resource) -> dict[str, str]:
        """A resource's metadata as Orthanc names it: what was recorded (reception details,
        case notes), and for a patient, study or series its LastUpdate (Orthanc keeps it as
        metadata at those levels; here it is the resource's own time, the one its JSON shows)."""
        meta = await self.index.metadata(res.id)
        if res.level != Level.INSTANCE:
            meta["LastUpdate"] = orthanc_date(res.last_update)
        return meta

    async def read_file(self, instance: Resource) -> bytes:
        f = (await self.index.files([instance.id])).get(instance.id)
        if f is None:
            raise NotFound(f"no file for instance {instance.public_id}")
        try:
            return await asyncio.to_thread(self.files.read, f[0])
        except FileNotFoundError:
            raise NotFound(f"the file of instance {instance.public_id} is missing") from None

    def read_stored(self, file_uuid: str) -> bytes:
        """A stored file's bytes, by the UUID ``instance_files`` gave; blocking (a sending thread's)."""
        return self.files.read(file_uuid)

    def stored_path(self, file_uuid: str) -> Path:
        """Where a stored file is, for reading only."""
        return self.files.path_of(file_uuid)

    async def instance_file(self, public_id: str) -> tuple[Path, int]:
        """The path of an instance's file and its size (NotFound for an unknown instance).

        The path is for reading only (a zero-copy send by the web server); nothing but the
        archive writes or removes files. Instances just stored are known without a query: a
        class fetches the case the teacher has just sent.
        """
        hit = self._file_cache.get(public_id)
        if hit is not None:
            return hit
        found = await self.index.instance_file(public_id)
        if found is None:
            raise NotFound(f"no instance {public_id}")
        return self._remember_file(public_id, *found)

    def _remember_file(self, public_id: str, file_uuid: str, size: int) -> tuple[Path, int]:
        if len(self._file_cache) >= 4096:
            self._file_cache.clear()
        answer = self._file_cache[public_id] = (self.files.path_of(file_uuid), size)
        return answer

    async def find(self, q: Query, since: int = 0, limit: int = 0) -> list[int]:
        """Internal ids of the matches of ``q`` (the one query engine of every front door)."""
        return await self.index.find(q, since, limit)

    async def find_request(self, level: Level, items: dict[str, str], case_sensitive: bool = True,
                           pn_case_sensitive: bool = False, since: int = 0, limit: int = 0,
                           labels: list[str] | None = None, labels_constraint: str = "All",
                           students: bool = False) -> list[int]:
        q = build_query(level, items, case_sensitive, pn_case_sensitive)
        q.labels, q.labels_constraint, q.students = list(labels or []), labels_constraint, students
        return await self.find(q, since, limit)

    async def instance_files(self, q: Query) -> list[tuple[str, str, str]]:
        """(file UUID, SOP class, transfer syntax) of every instance below the matches of ``q``: what a
        C-MOVE or C-GET sends. The files are then read with ``read_stored`` from the sending thread."""
        ids = await self.find(q)
        if q.students and q.level == Level.PATIENT:
            found = await self.narrowed_for_students(await self.index.resources_by_ids(ids))
            ids = [r.id for r in found]
        return await self.index.stored_files_below(ids)

    async def files_of_resources(self, public_ids: list[str]) -> tuple[list[tuple[str, str, str]], list[str]]:
        """Instances below each public ID (any level) as in ``instance_files``, and the IDs not found."""
        ids, missing = [], []
        for pid in public_ids:
            res = await self.index.resource(pid)
            if res is None:
                missing.append(pid)
            else:
                ids.append(res.id)
        return await self.index.stored_files_below(ids), missing

    async def instances_below(self, res: Resource) -> list[Resource]:
        """Every instance at or below a resource, in storage order."""
        if res.level == Level.INSTANCE:
            return [res]
        return await self.index.resources_by_ids(await self.index.descendant_instances(res.id))

    async def instance_paths_below(self, resources: list[Resource]) -> list[dict[str, Any]]:
        """Every instance below the resources (each once), with its file path and the main tags of
        its series, study and patient: what an archive or media download lays out.

        The paths are for reading only.
        """
        seen: set[int] = set()
        rows: list[tuple] = []
        for res in resources:
            for row in await self.index.instances_with_ancestors(res.id):
                if row[0] not in seen:
                    seen.add(row[0])
                    rows.append(row)
        tags = await self.index.main_tags(list({x for r in rows for x in (r[0], r[2], r[3], r[4])}))
        return [{"instance": r[1], "path": self.files.path_of(r[5]), "size": r[6],
                 "instance_tags": tags.get(r[0], {}), "series_tags": tags.get(r[2], {}),
                 "study_tags": tags.get(r[3], {}), "patient_tags": tags.get(r[4], {}),
                 "series_key": r[2], "study_key": r[3], "patient_key": r[4]} for r in rows]

    async def statistics(self) -> Statistics:
        counts = await self.index.level_counts()
        return Statistics(counts.get(0, 0), counts.get(1, 0), counts.get(2, 0), counts.get(3, 0),
                          await self.index.total_size())

    async def content_revision(self, resources: list[Resource]) -> str:
        """A short hash of the (instance public ID, file UUID) pairs at or below ``resources``: it
        changes when any instance is added, removed or replaced, so a cache key holding it (a series'
        stack document, its WADO-RS metadata) is invalidated without anyone telling the cache."""
        pairs = sorted(f"{p}:{u or '-'}" for p, u in (await self._content(resources)).items())
        return hashlib.blake2b("\n".join(pairs).encode(), digest_size=10).hexdigest()

    async def content_files(self, resources: list[Resource]) -> list[str]:
        """The file UUIDs of the instances at or below ``resources``: the owners of what is derived
        from them (``DerivedStore.put``), dropped when one of those files is deleted or replaced."""
        return sorted(u for u in (await self._content(resources)).values() if u)

    async def _content(self, resources: list[Resource]) -> dict[str, str | None]:
        """Instance public ID -> file UUID (None: no file) at or below ``resources``."""
        publics: dict[int, str] = {}
        below: list[int] = []
        for res in resources:
            if res.level == Level.INSTANCE:
                publics[res.id] = res.public_id
            else:
                below += await self.index.descendant_instances(res.id)
        unnamed = [i for i in dict.fromkeys(below) if i not in publics]
        publics.update((r.id, r.public_id) for r in await self.index.resources_by_ids(unnamed))
        files = await self.index.files(list(publics))
        return {p: files[i][0] if i in files else None for i, p in publics.items()}

    def derived_store(self, budget: int) -> DerivedStore:
        """The disk store of derived data (``derived``), in the storage folder's ``cache`` folder, kept
        within ``budget`` bytes and the configured free-space reserve. Its folder is indexed at its first
        use (in a worker thread), not here."""
        loop = getattr(self, "_loop", None)      # set by open(); unopened (no index): nothing to compare

        def known() -> set[str]:     # from the store's first-use worker thread, after reconcile
            return asyncio.run_coroutine_threadsafe(self._writes.on_writer(self._writer.file_uuids), loop).result()
        self._derived = DerivedStore(self.storage_dir / DERIVED_FOLDER, budget, reserve_bytes=self.reserve_mb * 2**20,
                                     load=False, known=known if loop is not None else None)
        return self._derived

    def free_disk_bytes(self) -> int:
        """Free space on the storage folder's disk (what the derived-data budget is a share of)."""
        return shutil.disk_usage(self.storage_dir if self.storage_dir.exists() else self.storage_dir.parent).free

    async def resource_statistics(self, res: Resource) -> dict[str, int]:
        return await self.index.resource_statistics(res.id)

    async def lookup(self, value: str) -> list[Resource]:
        """Resources whose identifier (PatientID or a UID) is ``value``: Orthanc's /tools/lookup."""
        return await self.index.resources_by_ids(await self.index.lookup(value.strip()))
