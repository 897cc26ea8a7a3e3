"""The IHE Teaching File and Clinical Trial Export (TCE) receiver: a teaching Key Object Selection
document received by C-STORE or upload becomes a draft case (or joins the draft made from its study).

The hospital workstation flags key images and sends the study with a KOS titled "For Teaching" or
"For Teaching File Export" (PS3.16 CID 7010; ``keyobjects.TEACHING_TITLES``). The receiver listens to
the archive's committed stores (``Archive.add_store_listener``) and works through the archive's case
API only. What it does with each KOS, in the log:
- teaching, new study: a draft case; Studies = the KOS's study, KeyImages = its referenced instances
  (and frames) already stored, Missing = the others, History = the Key Object Description,
  DelayReason = a CID 7015 Document Title Modifier, Source.KeyObject = the KOS's SOP Instance UID;
- teaching, a study with a TCE draft already: its key images, missing instances and description are
  added to that draft;
- a KOS a case bundle brings (Origin kind "Import": its case is imported beside it), one of this
  board's own exports (Manufacturer pipacs: a bundle import, store-key-objects), a KOS
  titled otherwise ("Of Interest", "For Clinical Trial Export"), or a bad one (references nothing,
  another study): stored as any instance, no case, one log line saying why.
Instances listed as Missing fill their cases as they arrive (``Archive.cases_missing``).

With AnonymizeOnIngest the archive stores the de-identified KOS: its evidence references are mapped
to the same new UIDs as the images (the transform is deterministic), and of its Content Sequence the
anonymizer keeps the codes (the delay reason) and the image references with their frames
(``anonymize.key_object_content``), not the description (free text), so the draft has no history.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from pydicom.dataset import Dataset

from ..archive import (
    MAX_KEY_IMAGES,
    MAX_MISSING,
    MAX_TEXT_BYTES,
    CaseConflict,
    CaseInvalid,
    Level,
    NotFound,
    read_dataset,
    tag_key,
)
from .keyobjects import (
    KOS_SOP_CLASS,
    KeyObjectProblem,
    ReceivedKeyObject,
    read_key_object,
    title_of,
)

log = logging.getLogger("pipacs.tce")
IMPORT_ORIGIN = "Import"     # the Origin kind of a case bundle's instances (teaching.bundles)

__all__ = ["TceReceiver", "install"]

STUDY_DESCRIPTION = tag_key(0x00081030)
STUDY_DATE = tag_key(0x00080020)
STUDY_INSTANCE_UID = tag_key(0x0020000D)
SOP_INSTANCE_UID = tag_key(0x00080018)


def _key_image(instance_id: str, frame: int) -> dict[str, Any]:
    return {"Instance": instance_id, "Frame": frame, "Window": None, "Zoom": None, "Caption": "",
            "Annotations": []}


def _add_history(history: str, text: str) -> str:
    if not text or text in history:
        return history
    return f"{history}\n\n{text}" if history else text


def _joined(doc: dict[str, Any], kos: ReceivedKeyObject, found: list[tuple[str, int]],
            missing: list[dict[str, str]]) -> dict[str, Any]:
    """A draft with a further key object of its study: its key images, missing instances, text added."""
    have = {(k["Instance"], int(k.get("Frame") or 1)) for k in doc.get("KeyImages", [])}
    doc["KeyImages"] = list(doc.get("KeyImages", [])) + [_key_image(i, f) for i, f in found if (i, f) not in have]
    known = {m["SOPInstanceUID"] for m in doc.get("Missing", [])}
    doc["Missing"] = list(doc.get("Missing", [])) + [m for m in missing if m["SOPInstanceUID"] not in known]
    doc["History"] = _add_history(doc.get("History", ""), kos.description)
    doc["DelayReason"] = kos.delay_reason or doc.get("DelayReason", "")
    return doc


def _filled(doc: dict[str, Any], arrived: set[str], added: list[dict[str, Any]]) -> dict[str, Any]:
    """A case (as stored now) whose missing instances ``arrived``: out of Missing, ``added`` key images in."""
    doc["Missing"] = [m for m in doc.get("Missing", []) if m["SOPInstanceUID"] not in arrived]
    have = {(k["Instance"], int(k.get("Frame") or 1)) for k in doc.get("KeyImages", [])}
    doc["KeyImages"] = list(doc.get("KeyImages", [])) + [k for k in added if (k["Instance"], k["Frame"]) not in have]
    return doc


def _fit(doc: dict[str, Any], uid: str) -> dict[str, Any]:
    """The case document within the case limits (a KOS may reference more, or say more, than a case
    holds): the first MAX_KEY_IMAGES key images, MAX_MISSING missing instances, the history cut at
    MAX_TEXT_BYTES; each cut said in the log."""
    if len(doc["KeyImages"]) > MAX_KEY_IMAGES:
        log.warning("TCE: key object %s: %d key images, a case holds %d: the first %d kept", uid,
                    len(doc["KeyImages"]), MAX_KEY_IMAGES, MAX_KEY_IMAGES)
        doc["KeyImages"] = doc["KeyImages"][:MAX_KEY_IMAGES]
    if len(doc["Missing"]) > MAX_MISSING:
        log.warning("TCE: key object %s: %d instances not received, a case lists %d: the first %d kept", uid,
                    len(doc["Missing"]), MAX_MISSING, MAX_MISSING)
        doc["Missing"] = doc["Missing"][:MAX_MISSING]
    history = doc.get("History", "").encode()
    if len(history) > MAX_TEXT_BYTES:
        log.warning("TCE: key object %s: its description has %d bytes, a case's history %d: cut", uid,
                    len(history), MAX_TEXT_BYTES)
        doc["History"] = history[:MAX_TEXT_BYTES].decode(errors="ignore")
    return doc


class TceReceiver:
    """The archive's store listener for TCE key objects (one batch at a time: two batches of one study
    must not both make a draft)."""

    def __init__(self, archive: Any):
        self.archive = archive
        self._lock = asyncio.Lock()

    async def __call__(self, results: list[tuple[Any, Any]]) -> None:
        async with self._lock:
            try:
                await self._fill_missing([p for _, p in results if p.sop_class_uid != KOS_SOP_CLASS])
            except Exception:   # a listener's failure must not touch the stores
                log.exception("TCE: filling in missing key images failed")
            for result, parsed in results:
                if parsed.sop_class_uid != KOS_SOP_CLASS:
                    continue
                if getattr(result.origin, "kind", "") == IMPORT_ORIGIN:
                    # a case bundle's key object (a TCE case keeps its source KOS among its study's
                    # files): the case it made comes in the same bundle, a second draft would double it
                    log.info("TCE: key object %s came in a case bundle: stored, no new case (the bundle's "
                             "cases are imported as they are)", parsed.sop_instance_uid)
                    continue
                try:
                    await self.receive(parsed.data, result.ids)
                except Exception:   # the KOS stays stored; the log says what failed
                    log.exception("TCE: key object %s stored, but no case could be made from it",
                                  parsed.sop_instance_uid)

    # ------------------------------------------------------------------ one key object

    async def receive(self, data: bytes, ids: tuple[str, str, str, str]) -> dict | None:
        """The case a stored KOS (its bytes, its public IDs) made or joined; None (and a log line) if none."""
        ds = await asyncio.to_thread(read_dataset, data)
        title, teaching, made_here = title_of(ds)
        uid = str(ds.get("SOPInstanceUID", ""))
        if made_here:
            log.info("TCE: key object %s is one of this board's own exports (%s): stored, no new case",
                     uid, title.meaning)
            return None
        if not teaching:
            log.info("TCE: key object %s is titled %r, not a teaching title (CID 7010 For Teaching, For Teaching "
                     "File Export): stored as any instance, no case", uid, title.meaning or title.value)
            return None
        try:
            kos = read_key_object(ds)
        except KeyObjectProblem as e:
            log.warning("TCE: %s; the key object is stored, no case made", e)
            return None
        made_from = await self._case_of_its_source(ids)
        if made_from is not None:
            log.info("TCE: key object %s is a copy (anonymized or modified) of the key object case %s came "
                     "from: stored, no second case (POST /cases/%s/anonymize moves a case onto its copies)",
                     uid, made_from, made_from)
            return None
        if not ds.get("ContentSequence") and str(ds.get("PatientIdentityRemoved", "")).upper() == "YES":
            log.info("TCE: key object %s was de-identified without its content tree (description, delay "
                     "reason, frames): the draft has its instances only", uid)
        study_id = ids[1]
        found, missing = await self._resolve(kos)
        draft = await self._draft_of(study_id)
        if draft is not None:
            if draft.get("Source", {}).get("KeyObject") == kos.sop_instance_uid:
                return draft
            try:
                return await self._join(draft, kos, found, missing)
            except CaseInvalid as e:
                log.warning("TCE: key object %s cannot join draft case %s: %s; the key object is stored", uid,
                            draft["ID"], e)
                return None
        doc = {
            "Title": await self._title(ds, study_id),
            "History": kos.description,
            "Studies": [study_id],
            "KeyImages": [_key_image(i, f) for i, f in found],
            "Missing": missing,
            "DelayReason": kos.delay_reason,
            "Source": {"KeyObject": kos.sop_instance_uid},
        }
        try:
            case = await self.archive.create_case(_fit(doc, uid))
        except CaseInvalid as e:
            log.warning("TCE: key object %s makes no case: %s; the key object is stored", uid, e)
            return None
        log.info("TCE: draft case %s from key object %s (%s) of study %s: %d key images, %d not received yet%s",
                 case["ID"], uid, kos.title_name, study_id, len(found), len(missing),
                 f", {kos.delay_reason}" if kos.delay_reason else "")
        return case

    async def _resolve(self, kos: ReceivedKeyObject) -> tuple[list[tuple[str, int]], list[dict[str, str]]]:
        """(instance ID, frame) of the referenced instances stored; the others as Missing entries."""
        found: list[tuple[str, int]] = []
        missing: list[dict[str, str]] = []
        for ref in kos.references:
            instance = await self._instance(ref.sop_instance_uid)
            if instance is None:
                missing.append({"StudyInstanceUID": ref.study_uid, "SeriesInstanceUID": ref.series_uid,
                                "SOPInstanceUID": ref.sop_instance_uid})
            else:
                found += [(instance, f) for f in (ref.frames or [1])]
        return found, missing

    async def _instance(self, sop_uid: str) -> str | None:
        for res in await self.archive.lookup(sop_uid):
            if res.level == Level.INSTANCE:
                return res.public_id
        return None

    async def _case_of_its_source(self, ids: tuple[str, str, str, str]) -> str | None:
        """The case made from the key object this one was derived from (POST /studies/{id}/anonymize
        or /modify copies a study's key objects too, and marks each copy with its source): the
        teacher's draft is on the original, a second draft of the copy would double it."""
        try:
            meta = await self.archive.metadata(await self.archive.get(Level.INSTANCE, ids[3]))
            source = meta.get("AnonymizedFrom") or meta.get("ModifiedFrom")
            if not source:
                return None
            study_meta = await self.archive.metadata(await self.archive.get(Level.STUDY, ids[1]))
            source_study = study_meta.get("AnonymizedFrom") or study_meta.get("ModifiedFrom")
            source_uid = (await self.archive.main_tags_of(Level.INSTANCE, source)).get(SOP_INSTANCE_UID, "").strip()
        except NotFound:          # the source went meanwhile: nothing was made from it here
            return None
        if not source_study or not source_uid:
            return None
        for summary in await self.archive.cases_using_study(source_study):
            try:
                case = await self.archive.get_case(summary["ID"])
            except NotFound:
                continue
            if case.get("Source", {}).get("KeyObject") == source_uid:
                return case["ID"]
        return None

    async def _draft_of(self, study_id: str) -> dict | None:
        """The draft a TCE key object already made from this study, if any."""
        for summary in await self.archive.cases_using_study(study_id):
            if summary.get("State") != "draft":
                continue
            try:
                case = await self.archive.get_case(summary["ID"])
            except NotFound:
                continue
            if case.get("Source", {}).get("KeyObject"):
                return case
        return None

    async def _join(self, case: dict, kos: ReceivedKeyObject, found: list[tuple[str, int]],
                    missing: list[dict[str, str]]) -> dict:
        # merged into the case as stored when written (Archive.modify_case: a teacher's PUT meanwhile stays)
        updated = await self.archive.modify_case(
            case["ID"], lambda fresh: _fit(_joined(fresh, kos, found, missing), kos.sop_instance_uid))
        log.info("TCE: key object %s added %d key images and %d missing instances to draft case %s",
                 kos.sop_instance_uid, len(updated["KeyImages"]) - len(case.get("KeyImages", [])),
                 len(updated["Missing"]) - len(case.get("Missing", [])), case["ID"])
        return updated

    async def _title(self, ds: Dataset, study_id: str) -> str:
        description = str(ds.get("StudyDescription", "") or "").strip()
        date = str(ds.get("StudyDate", "") or "").strip()
        if not description:
            try:
                tags = await self.archive.main_tags_of(Level.STUDY, study_id)
                description = tags.get(STUDY_DESCRIPTION, "").strip()
                date = date or tags.get(STUDY_DATE, "").strip()
            except NotFound:
                pass
        if description:
            return description
        if len(date) == 8 and date.isdigit():
            return f"Teaching file {date[:4]}-{date[4:6]}-{date[6:]}"
        return f"Teaching file {datetime.now(UTC):%Y-%m-%d}"

    # ------------------------------------------------------------------ instances that were missing

    async def _fill_missing(self, parsed: list[Any]) -> None:
        if not parsed:
            return
        by_uid = {p.sop_instance_uid: p.ids[3] for p in parsed}
        by_study = {p.sop_instance_uid: p.ids[1] for p in parsed}
        waiting = await self.archive.cases_missing(list(by_uid))
        cases: dict[str, list[str]] = {}
        for uid, case_ids in waiting.items():
            for cid in case_ids:
                cases.setdefault(cid, []).append(uid)
        for cid, uids in cases.items():
            try:
                case = await self.archive.get_case(cid)
            except NotFound:
                continue
            frames = await self._source_frames(case)
            doc = dict(case)
            arrived = set(uids)
            # an instance of a study taken out of the case meanwhile (deleted with ?force, or by the
            # teacher's PUT) is no longer missing from it: no key image, no longer listed
            gone = {u for u in uids if by_study[u] not in case.get("Studies", [])}
            uids = [u for u in uids if u not in gone]
            doc["Missing"] = [m for m in case.get("Missing", []) if m["SOPInstanceUID"] not in arrived]
            have = {(k["Instance"], int(k.get("Frame") or 1)) for k in case.get("KeyImages", [])}
            added = [_key_image(by_uid[u], f) for u in uids for f in (frames.get(u) or [1])
                     if (by_uid[u], f) not in have]
            doc["KeyImages"] = list(case.get("KeyImages", [])) + added
            try:
                await self.archive.modify_case(cid, lambda fresh, a=arrived, k=added: _fit(
                    _filled(fresh, a, k), fresh.get("Source", {}).get("KeyObject", "")))
            except (CaseInvalid, CaseConflict, NotFound) as e:   # one case refused: the batch's others go on
                log.warning("TCE: instances missing from case %s arrived but cannot be added: %s", cid, e)
                continue
            if gone:
                log.info("TCE: %d instance(s) case %s listed as missing arrived in a study it no longer has: "
                         "no longer listed", len(gone), cid)
            log.info("TCE: %d missing instance(s) of case %s arrived (%d still missing)", len(arrived), cid,
                     len(doc["Missing"]))

    async def _source_frames(self, case: dict) -> dict[str, list[int]]:
        """The frames the case's source KOS references, by SOP Instance UID (the Missing entries of the
        contract name instances only)."""
        uid = case.get("Source", {}).get("KeyObject")
        if not uid:
            return {}
        try:
            for res in await self.archive.lookup(uid):
                if res.level == Level.INSTANCE:
                    ds = await asyncio.to_thread(read_dataset, await self.archive.read_file(res))
                    return {r.sop_instance_uid: r.frames for r in read_key_object(ds).references}
        except (NotFound, KeyObjectProblem):
            pass
        return {}


def install(archive: Any) -> TceReceiver:
    """Make ``archive`` turn teaching key objects into draft cases (at service start)."""
    receiver = TceReceiver(archive)
    archive.add_store_listener(receiver)
    return receiver
