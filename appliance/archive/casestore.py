"""Teaching cases: the archive's methods about them (mixed into ``Archive``).

A case document is checked with ``caserules`` whoever hands it in (the web layer has
checked a request body by the same rules already), its key images against their instances'
stored files (the frame exists, points inside the image, lengths in mm from Pixel Spacing), then
written by the index writer in one transaction with its search text. Studies and key images are
rows of the index that go with their resources, so a case never names what is not stored.
Publishing a case shows its studies to students, once they are de-identified.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import copy
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pydicom
from pydicom.errors import InvalidDicomError

from .caserules import (
    LABEL,
    STATES,
    UNKNOWN_TITLE,
    CaseInvalid,
    check_key_image,
    validate_create,
    validate_import,
)
from .dicomfile import ParsedInstance
from .keyedlocks import KeyedLocks
from .model import Level
from .records import CaseConflict, CaseQuery, CaseStale, CaseWrite, IngestResult, NotFound, StoredCase

if TYPE_CHECKING:
    from .hub import Archive

log = logging.getLogger("pipacs.archive")
T = TypeVar("T")

StoreListener = Callable[[list[tuple[IngestResult, ParsedInstance]]], Awaitable[None]]
SUMMARY_FIELDS = ("Title", "Author", "Collections", "BodyRegion", "Category", "Difficulty")
# Modalities of what the board itself makes from a case (key objects, presentation states)
BOARD_MODALITIES = {"KO", "PR"}
_MODALITY = "0008,0060"


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def next_updated(previous: str) -> str:
    """A case's new Updated: now, or a second after ``previous`` when that is not earlier (two
    writes within a second): Updated is what a client's "the case changed since you read it"
    check compares, so each write must change it."""
    now = utc_now()
    if now > previous:
        return now
    try:
        t = calendar.timegm(time.strptime(previous, "%Y-%m-%dT%H:%M:%SZ")) + 1
    except ValueError:
        return now
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


BIG_BODY = 256 * 1024     # a document larger than this (roughly) is checked on a thread, not on the loop


def rough_size(doc: Any) -> int:
    """About how many bytes a document's JSON has (its text fields, its lists), without making it."""
    if not isinstance(doc, dict):
        return 0
    n = 0
    for v in doc.values():
        if isinstance(v, str):
            n += len(v)
        elif isinstance(v, list):
            n += 64 * len(v) + sum(len(x) for x in v if isinstance(x, str))
            n += sum(len(x.get("Caption", "")) + 200 * len(x.get("Annotations", ()))
                     for x in v if isinstance(x, dict) and isinstance(x.get("Caption", ""), str)
                     and isinstance(x.get("Annotations", ()), list))
    return n


async def checked_off_loop(check: Callable[[Any], T], doc: Any) -> T:
    """``check(doc)``, on a thread when the document is big (its JSON is made to check its text)."""
    if rough_size(doc) > BIG_BODY:
        return await asyncio.to_thread(check, doc)
    return check(doc)


_IMAGE_TAGS = ["Rows", "Columns", "NumberOfFrames", "PixelSpacing", "ImagerPixelSpacing"]


def image_tags(path: Path) -> dict[str, Any]:
    """What a key image is checked against, read from the stored file's header (those elements
    only: a multi-frame file is not read whole for them)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=_IMAGE_TAGS)

    def pair(keyword: str) -> list[float] | None:
        v = ds.get(keyword)
        try:
            return [float(x) for x in v] if v is not None and len(v) == 2 else None
        except (TypeError, ValueError):
            return None

    def whole(keyword: str) -> int:
        try:
            return int(ds.get(keyword) or 0)
        except (TypeError, ValueError):
            return 0

    return {"Rows": whole("Rows"), "Columns": whole("Columns"), "NumberOfFrames": whole("NumberOfFrames") or 1,
            "PixelSpacing": pair("PixelSpacing"), "ImagerPixelSpacing": pair("ImagerPixelSpacing")}


class CaseMethods:
    """``Archive``'s teaching-case API (see the contract in the README's Teaching cases)."""

    # ---------------------------------------------------------------- writing

    async def create_case(self: Archive, doc: dict[str, Any], new: bool = False) -> dict[str, Any]:
        """Store a new case. ``doc`` as ``caserules.validate_import`` takes it: its ID, Created,
        Updated, State and Source are kept when given (a bundle, a key object's draft), else
        the board's. ``new``: ``doc`` is a client's POST /cases body (``caserules.validate_create``:
        the board's fields refused), and without Collections it takes the labels the teacher put
        on its studies (the explorer's labels are the collections). Raises CaseInvalid,
        CaseExists (that ID is here), CaseConflict (published with a study that is not
        de-identified)."""
        d = await checked_off_loop(validate_create if new else validate_import, doc)
        if new and "Collections" not in doc:
            d["Collections"] = await self._labels_of_studies(d["Studies"])
        d["KeyImages"] = await self._checked_key_images(d)
        now = utc_now()
        public_id = d.get("ID") or str(uuid.uuid4())
        if d["State"] == "published":
            await self._check_publishable(d["Studies"])
        created = d.get("Created", now)
        case = CaseWrite(public_id, d["State"], created, d.get("Updated", created), d, d["Studies"], d["KeyImages"])
        await self._writes.serialised(self._writer.put_case, case, True)
        self._changed()
        await self._refresh_held_back()
        return await self.get_case(public_id)

    async def update_case(self: Archive, case_id: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Replace a case's document with ``doc`` (the caller merged it: ``caserules.merge_update``).
        ID, State and Created stay the board's (State changes by ``set_case_state``), Updated is
        now, Modalities are derived; Source is ``doc``'s when given. A caller that read the case
        to make ``doc`` should use ``modify_case`` instead: this one writes over any change made since."""
        return await self.modify_case(case_id, lambda _stored: doc)

    async def modify_case(self: Archive, case_id: str,
                          fn: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """Read, change, check and write a case as one step: ``fn(stored)`` gets the document as
        stored now (a copy) and gives the whole new one (it may raise, e.g. CaseConflict when
        the caller's copy is stale: nothing is written). Writers of a case take its lock, so two
        of them (a teacher's PUT, the TCE filling in a key image) never write over each other;
        the write itself checks that the stored Updated is still the one read (a study delete
        may change a case without the lock), and the step is run again if not."""
        async with self._case_lock(case_id):
            for _ in range(3):
                stored = await self.get_case(case_id)
                doc = fn(copy.deepcopy(stored))
                try:
                    return await self._replace_case(case_id, stored, doc)
                except CaseStale:
                    continue
            raise CaseConflict(f"case {case_id} keeps changing: try again")

    async def _replace_case(self: Archive, case_id: str, stored: dict[str, Any],
                            doc: dict[str, Any]) -> dict[str, Any]:
        d = await checked_off_loop(validate_import, doc)
        if d.get("ID", case_id) != case_id:
            raise CaseInvalid(f"ID: this is case {case_id}")
        d["KeyImages"] = await self._checked_key_images(d)
        if "Source" not in doc:
            d["Source"] = stored["Source"]
        if stored["State"] == "published" and d["Studies"] != stored["Studies"]:
            # a published case keeps its studies' check of the day it was published or they changed:
            # a typo fixed is not refused because its patient got an identifiable instance since
            await self._check_publishable(d["Studies"])
        case = CaseWrite(case_id, stored["State"], stored["Created"], next_updated(stored["Updated"]), d,
                         d["Studies"], d["KeyImages"], expect_updated=stored["Updated"])
        await self._writes.serialised(self._writer.put_case, case, False)
        self._changed()
        await self._refresh_held_back()
        return await self.get_case(case_id)

    def _case_lock(self: Archive, case_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """The per-case lock of its writers (kept while someone holds or waits for it)."""
        return self.__dict__.setdefault("_case_locks", KeyedLocks())(case_id)

    async def _labels_of_studies(self: Archive, study_ids: list[str]) -> list[str]:
        found: set[str] = set()
        for pub in study_ids:
            res = await self.index.resource(pub, Level.STUDY)
            if res is not None:       # an unknown study is named by the write
                found.update(label for label in await self.index.labels(res.id) if LABEL.fullmatch(label))
        return sorted(found)

    async def delete_case(self: Archive, case_id: str) -> None:
        """Delete a case (its studies stay); its entries in teaching sessions become Missing (their
        listeners are told). Raises NotFound."""
        touched = await self._writes.serialised(self._writer.delete_case, case_id, utc_now())
        self._changed()
        await self._cases_deleted_in_sessions(touched)

    async def set_case_state(self: Archive, case_id: str, state: str) -> dict[str, Any]:
        """Publish (``"published"``) or unpublish (``"draft"``) a case. Publishing a case whose
        studies are not all de-identified is refused (CaseConflict, saying which and what to do)."""
        if state not in STATES:
            raise CaseInvalid(f"State: one of {', '.join(STATES)}")
        async with self._case_lock(case_id):
            stored = await self.get_case(case_id)
            if state == "published":
                await self._check_publishable(stored["Studies"])
            if stored["State"] != state:
                await self._writes.serialised(self._writer.set_case_state, case_id, state,
                                              next_updated(stored["Updated"]))
                self._changed()
                await self._refresh_held_back()
            return await self.get_case(case_id)

    async def studies_not_deidentified(self: Archive, studies: list[str]) -> dict[str, bool]:
        """Of these studies (public IDs), those a student may not see for want of de-identification
        (an instance of their patient does not say PatientIdentityRemoved YES), in their order:
        public ID -> True while it is still being read (stored by an earlier version), else False.
        Unknown studies are left out."""
        ids: dict[int, str] = {}
        for pub in studies:
            res = await self.index.resource(pub, Level.STUDY)
            if res is not None:
                ids[res.id] = pub
        bad = await self.index.studies_not_deidentified(list(ids))
        return {pub: bad[sid] for sid, pub in ids.items() if sid in bad}

    async def _check_publishable(self: Archive, studies: list[str]) -> None:
        for pub, unread in (await self.studies_not_deidentified(studies)).items():
            if unread:
                raise CaseConflict(f"study {pub} is still being checked for de-identification (it was stored by an "
                                   "earlier version, whose files are read again at start-up): publish in a minute")
            raise CaseConflict(f"study {pub} is not de-identified (an instance of its patient does not say "
                               f"PatientIdentityRemoved YES): de-identify the case (POST /cases/{{id}}/anonymize, the "
                               "case page's De-identify: the case moves onto the anonymized copies with its key "
                               "images and annotations), then publish")

    async def _checked_key_images(self: Archive, d: dict[str, Any]) -> list[dict[str, Any]]:
        """Each key image checked against its instance (of one of the case's studies), lengths in mm."""
        out = []
        studies = set(d["Studies"])
        for i, ki in enumerate(d["KeyImages"]):
            where = f"KeyImages[{i}]"
            res = await self.index.resource(ki["Instance"], Level.INSTANCE)
            study = None
            if res is not None:
                series = await self.index.resource_by_id(res.parent_id) if res.parent_id else None
                parent = await self.index.resource_by_id(series.parent_id) if series and series.parent_id else None
                study = parent.public_id if parent else None
            if study is None or study not in studies:
                raise CaseInvalid(f"{where}.Instance: {ki['Instance']} is not an instance of the case's studies "
                                  "(add its study to Studies)")
            tags = await self._image_tags(res)
            out.append(check_key_image(ki, where, tags))
        return out

    async def _image_tags(self: Archive, res) -> dict[str, Any]:
        cache = self._case_image_tags
        hit = cache.get(res.public_id)
        if hit is not None:
            return hit
        try:
            path, _ = await self.instance_file(res.public_id)
            tags = await asyncio.to_thread(image_tags, path)
        except (NotFound, OSError, InvalidDicomError, ValueError) as e:
            log.warning("cannot read the header of instance %s for a key image: %s", res.public_id, e)
            raise CaseInvalid(f"the stored file of instance {res.public_id} cannot be read (the appliance's log "
                              "says why)") from None
        if len(cache) >= 4096:
            cache.clear()
        cache[res.public_id] = tags
        return tags

    # ---------------------------------------------------------------- reading

    async def get_case(self: Archive, case_id: str) -> dict[str, Any]:
        """The whole document. Raises NotFound."""
        internal = await self.index.case_id_of(case_id)
        found = await self.index.cases_by_ids([internal]) if internal is not None else []
        if not found:
            raise NotFound(f"no case {case_id}")
        return (await self._documents(found))[0]

    async def list_cases(self: Archive, q: CaseQuery) -> tuple[list[dict[str, Any]], int]:
        """(summaries of a page of the matching cases, in order; how many match in all)."""
        if q.students and self._held:
            # cases held back by a teaching session are unknown cases to students meanwhile
            q = dataclasses.replace(q, held_back=self._held.cases)
        ids, total = await self.index.find_cases(q)
        return await self.case_summaries(ids, students=q.students), total

    async def case_summaries(self: Archive, ids: list[int], students: bool = False) -> list[dict[str, Any]]:
        """Summaries in the order of ``ids``. ``students``: an unknown case's Title is "Unknown case"
        (its title often is the answer), and so is a case a teaching session holds back (its
        Collections emptied too: a collection's name may say the answer)."""
        held = self._held.cases if students else frozenset()
        stored = await self.index.cases_by_ids(ids, summary=True)
        modalities = await self._modalities_of(stored)
        firsts = [s.studies[0][0] for s in stored if not s.key_images and s.studies]
        middles = await self.index.middle_instances(firsts) if firsts else {}
        out = []
        for s in stored:
            doc = s.document
            thumb = s.key_images[0]["Instance"] if s.key_images else (
                middles.get(s.studies[0][0]) if s.studies else None)
            out.append({"ID": s.public_id, "State": s.state, "Updated": s.updated,
                        **{f: doc.get(f) if doc.get(f) is not None else ([] if f == "Collections" else "")
                           for f in SUMMARY_FIELDS},
                        "Modalities": modalities[s.id], "Studies": [pub for _, pub in s.studies],
                        "KeyImageCount": doc.get("KeyImageCount", 0), "Thumbnail": thumb,
                        "Unknown": bool(doc.get("Unknown"))})
            if students and out[-1]["Unknown"]:
                out[-1]["Title"] = UNKNOWN_TITLE
            if s.public_id in held:
                out[-1].update({"Title": UNKNOWN_TITLE, "Collections": [], "Unknown": True, "HeldBack": True})
        return out

    async def cases_using_study(self: Archive, study_public_id: str) -> list[dict[str, Any]]:
        """Summaries of the cases that use a study (none for an unknown study)."""
        res = await self.index.resource(study_public_id, Level.STUDY)
        if res is None:
            return []
        return await self.case_summaries(await self.index.cases_using_studies([res.id]))

    async def main_tags_of(self: Archive, level: Level, public_id: str) -> dict[str, str]:
        """A resource's main tags as the index keeps them ("0008,1030" -> "CHEST"). Raises NotFound."""
        res = await self.get(level, public_id)
        return (await self.index.main_tags([res.id])).get(res.id, {})

    async def cases_missing(self: Archive, sop_instance_uids: list[str]) -> dict[str, list[str]]:
        """SOP Instance UID -> IDs of the cases that list it in Missing (those listed by none left out)."""
        return await self.index.cases_missing(list(dict.fromkeys(sop_instance_uids)))

    async def _documents(self: Archive, stored: list[StoredCase]) -> list[dict[str, Any]]:
        modalities = await self._modalities_of(stored)
        out = []
        for s in stored:
            doc = dict(s.document)
            doc.update({"ID": s.public_id, "State": s.state, "Created": s.created, "Updated": s.updated,
                        "Studies": [pub for _, pub in s.studies], "KeyImages": s.key_images,
                        "Modalities": modalities[s.id]})
            out.append(doc)
        return out

    async def _modalities_of(self: Archive, stored: list[StoredCase]) -> dict[int, list[str]]:
        study_ids = list({sid for s in stored for sid, _ in s.studies})
        values = await self.index.child_values(study_ids, tag=_MODALITY) if study_ids else {}
        return {s.id: sorted({m for sid, _ in s.studies for m in values.get(sid, ())} - BOARD_MODALITIES)
                for s in stored}

    # ---------------------------------------------------------------- what was stored

    def add_store_listener(self: Archive, fn: StoreListener) -> None:
        """``fn(results)`` is awaited on the loop after each committed batch of new instances
        (``(IngestResult, ParsedInstance)`` pairs), in order, one batch after another; its
        errors are logged. Runs outside the writer, so it may change the archive.

        The ``data`` of an image (an instance with Pixel Data) is left empty: batches wait for
        a listener that is itself waiting for the writer, and a backlog of images' bytes would
        fill a small board's memory while it ingests; read an image with ``read_file``. Other
        instances (key objects, presentation states, reports) keep their bytes."""
        self._store_listeners.append(fn)

    def _batch_stored(self: Archive, results: list[tuple[IngestResult, ParsedInstance]]) -> None:
        if self._store_listeners and results:
            self._listener_queue.put_nowait(
                [(r, p if p.pixel_data_offset is None else dataclasses.replace(p, data=b"")) for r, p in results])

    async def _run_store_listeners(self: Archive) -> None:
        while True:
            results = await self._listener_queue.get()
            if results is None:
                return
            for fn in list(self._store_listeners):
                try:
                    await fn(results)
                except Exception as e:
                    log.error("a store listener failed: %s", e, exc_info=e)
