"""De-identify a teaching case: its identifiable studies anonymized, the case moved onto the copies.

A draft made from a study straight from the hospital (a TCE draft without AnonymizeOnIngest, a case
made on an identifiable study) cannot be published, and anonymizing its study by hand leaves the
key images and annotations on the original instances. ``anonymize_case`` anonymizes each study of
the case that is not de-identified (the teacher's de-identification defaults, the case title as the
anonymized Patient's Name), then rewrites the case onto the copies: Studies, KeyImages (the instance
IDs mapped source -> copy; frame, window, zoom, centre, caption and annotations kept) and Missing
(the UIDs mapped for the studies that were copied; Source.KeyObject too). The copies are deterministic (the board's key):
the same source gives the same copy UIDs every time, so an instance listed as Missing that arrives
later and is anonymized the same way lands on the UID the case waits for, and a study anonymized
again for another case is the same copy.

The copy leaves out the hospital's teaching key objects and the board's own KOS/GSPS exports
(``not_copied``): the case holds what they said, and a copy of a teaching KOS would make a second
draft. Source.KeyObject takes the UID the KOS's copy would have had.

Other cases that use a source study: with KeepSource true they stay on the original (it is kept;
their teacher de-identifies them in turn, onto the same copy); with KeepSource false they are moved
too, since the original is deleted. A source that a case could not be moved off (an instance whose
file cannot be read has no copy) is kept.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import Any

from ..archive import Archive, CaseConflict, Level, NotFound, Origin
from .anonymize import AnonymizationError, UidMap, parse_instructions
from .deid_options import CASE_TITLE_MAX
from .derive import derive_copy
from .keyobjects import GSPS_SOP_CLASS, KOS_SOP_CLASS, MANUFACTURER, title_of

__all__ = ["anonymize_case", "case_title_of", "moved_document", "not_copied", "NoCopy", "BODY_KEYS"]

log = logging.getLogger("pipacs.teaching")

BODY_KEYS = ("Options", "KeepSource", "CaseTitle")
UNKNOWN_CASE_TITLE = "Unknown case"     # an unknown case's Patient's Name must not tell the answer
# one case de-identification at a time on a board (each one reads and writes whole studies)
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


class NoCopy(Exception):
    """A key image's instance was left out of its study's copy (its stored file cannot be read)."""

    def __init__(self, instance_id: str):
        super().__init__(instance_id)
        self.instance_id = instance_id


def case_title_of(case: dict[str, Any]) -> str | None:
    """The anonymized Patient's Name a case gives its copies: its Title made a valid person name
    (no ^ = \\ or control characters, at most CASE_TITLE_MAX characters); "Unknown case" for an
    unknown case; None (the anonymizer's own name) when the title is empty."""
    if case.get("Unknown"):
        return UNKNOWN_CASE_TITLE
    text = "".join(" " if c in "\\^=" or ord(c) < 32 or ord(c) == 127 else c for c in str(case.get("Title", "")))
    text = " ".join(text.split())[:CASE_TITLE_MAX].strip()
    return text or None


def moved_document(doc: dict[str, Any], studies: dict[str, str], instances: dict[str, str],
                   source_instances: set[str], uid_maps: list[UidMap]) -> dict[str, Any]:
    """``doc`` moved onto the copies: ``studies`` source study ID -> copy's, ``instances`` source
    instance ID -> copy's, ``source_instances`` every instance of the source studies (one without a
    copy raises NoCopy), ``uid_maps`` the UIDs each copy was given (a Missing entry of a copied study
    takes them, as does Source.KeyObject: the hospital's UIDs leave the case)."""
    out = dict(doc)
    moved = []
    for s in doc.get("Studies", []):
        new = studies.get(s, s)
        if new not in moved:
            moved.append(new)
    out["Studies"] = moved
    keys = []
    for ki in doc.get("KeyImages", []):
        iid = ki["Instance"]
        if iid in instances:
            ki = {**ki, "Instance": instances[iid]}
        elif iid in source_instances:
            raise NoCopy(iid)
        keys.append(ki)
    out["KeyImages"] = keys
    missing = []
    for m in doc.get("Missing", []):
        for uids in uid_maps:
            if m.get("StudyInstanceUID") in uids.known:
                m = {k: uids(v) if k.endswith("UID") else v for k, v in m.items()}
                break
        missing.append(m)
    out["Missing"] = missing
    kos = (doc.get("Source") or {}).get("KeyObject")
    for uids in uid_maps:        # the key object the draft came from went into the copy too
        if kos and kos in uids.known:
            out["Source"] = {**doc["Source"], "KeyObject": uids.known[kos]}
            break
    return out


def not_copied(ds: Any) -> bool:
    """What a case's copy leaves out: the hospital's teaching key objects (the case holds what they
    said; an anonymized copy, its content tree emptied, would make a second draft through the TCE
    receiver) and the board's own KOS/GSPS exports (they carry the case's text and point at the
    originals; store-key-objects makes them again on the copy)."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class == KOS_SOP_CLASS:
        _, teaching, made_here = title_of(ds)
        return teaching or made_here
    return sop_class == GSPS_SOP_CLASS and str(ds.get("Manufacturer", "") or "").strip() == MANUFACTURER


async def _change_case(archive: Archive, case_id: str, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """``fn`` applied to the case as stored, then written, in one step under the case's lock
    (``Archive.modify_case``): a teacher's PUT or the TCE receiver meanwhile is not written over."""
    await archive.modify_case(case_id, fn)


def _lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _locks.get(loop)
    if lock is None:
        lock = _locks[loop] = asyncio.Lock()
    return lock


def _instructions(body: Any, case: dict[str, Any]):
    """The anonymization a case's studies get (AnonymizationError, a 400, naming what is wrong)."""
    if not isinstance(body, dict):
        raise AnonymizationError('the request body must be a JSON object: {"Options": [...], "KeepSource": '
                                 'true, "CaseTitle": "..."}, each optional')
    unknown = sorted(str(k)[:64] for k in body if k not in BODY_KEYS)
    if unknown:
        raise AnonymizationError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(BODY_KEYS)}")
    keep = body.get("KeepSource", True)
    if not isinstance(keep, bool):
        raise AnonymizationError('"KeepSource" must be true or false')
    req: dict[str, Any] = {"Deterministic": True, "KeepSource": True}   # the sources go after the move
    if "Options" in body:
        req["Options"] = body["Options"]
    title = body["CaseTitle"] if body.get("CaseTitle") is not None else case_title_of(case)
    if title is not None:
        req["CaseTitle"] = title
    return parse_instructions(req, True), keep


async def _to_deidentify(archive: Archive, studies: list[str]) -> list[str]:
    """The case's studies that are not de-identified (an instance of their patient does not say
    PatientIdentityRemoved YES), in the case's order."""
    bad = await archive.studies_not_deidentified(studies)
    for pub, unread in bad.items():
        if unread:
            raise CaseConflict(f"study {pub} is still being checked for de-identification (it was stored by "
                               "an earlier version, whose files are read again at start-up): try again in a minute")
    return list(bad)


async def anonymize_case(archive: Archive, case_id: str, body: Any, origin: Origin) -> dict[str, Any]:
    """POST /cases/{id}/anonymize: the case's identifiable studies anonymized and the case moved onto
    the copies; the case document, with what was done under "Deidentification" (this answer only).
    Raises NotFound, AnonymizationError (a bad body), CaseConflict (a key image has no copy)."""
    case = await archive.get_case(case_id)
    ins, keep_source = _instructions(body, case)
    async with _lock():
        case = await archive.get_case(case_id)
        todo = await _to_deidentify(archive, case["Studies"])
        report: dict[str, Any] = {"Studies": [], "AlreadyDeidentified": [s for s in case["Studies"] if s not in todo],
                                  "OtherCasesMoved": [], "OtherCasesLeftOnSource": []}
        if not todo:
            return {**case, "Deidentification": report}
        others: list[str] = []
        source_instances: dict[str, set[str]] = {}
        for pub in todo:
            res = await archive.get(Level.STUDY, pub)
            source_instances[pub] = {i.public_id for i in await archive.instances_below(res)}
            for c in await archive.cases_using_study(pub):
                if c["ID"] != case_id and c["ID"] not in others:
                    others.append(c["ID"])
        copies: dict[str, str] = {}
        instances: dict[str, str] = {}
        uid_maps: list[UidMap] = []
        for pub in todo:
            made = await derive_copy(archive, Level.STUDY, pub, ins, True, origin, leave_out=not_copied,
                                     keep_existing=True)
            copies[pub] = made.answer["ID"]
            instances.update(made.instances)
            uid_maps.append(made.uids)
            report["Studies"].append({"Source": pub, "Copy": made.answer["ID"],
                                      "InstancesCount": len(made.instances),
                                      "FailedInstancesCount": len(made.left_out),
                                      "KeyObjectsNotCopied": len(made.not_copied)})
        every_source = set().union(*source_instances.values())

        def move(doc: dict[str, Any]) -> dict[str, Any]:
            return moved_document(doc, copies, instances, every_source, uid_maps)
        try:
            await _change_case(archive, case_id, move)
        except NoCopy as e:
            raise CaseConflict(
                f"the key image on instance {e.instance_id} cannot be moved: its stored file cannot be read, so it "
                f"has no de-identified copy. Take that key image out of the case and try again (the copies made "
                f"are kept: {', '.join(f'/studies/{c}' for c in copies.values())})", [case_id]) from None
        still_used: set[str] = set()     # sources a case stays on
        for other in others:
            try:
                odoc = await archive.get_case(other)
            except NotFound:
                continue
            used = [s for s in odoc["Studies"] if s in copies]
            if keep_source:
                report["OtherCasesLeftOnSource"].append(other)
                continue
            try:
                await _change_case(archive, other, move)
                report["OtherCasesMoved"].append(other)
            except NoCopy as e:
                log.warning("case %s stays on its identifiable studies: its key image on instance %s has no "
                            "de-identified copy (the file cannot be read)", other, e.instance_id)
                report["OtherCasesLeftOnSource"].append(other)
                still_used.update(used)
        for entry in report["Studies"]:
            pub = entry["Source"]
            kept = keep_source or pub in still_used or entry["FailedInstancesCount"] > 0
            if not kept:
                try:
                    await archive.delete(Level.STUDY, pub, "refuse")
                except NotFound:
                    pass
                except CaseConflict as e:        # a case took the source in meanwhile: it stays
                    log.warning("the source study %s is kept: %s", pub, e)
                    kept = True
            entry["SourceKept"] = kept
        log.info("case %s de-identified: %s", case_id,
                 ", ".join(f"study {e['Source']} -> {e['Copy']}" for e in report["Studies"]))
        return {**await archive.get_case(case_id), "Deidentification": report}
