"""New resources made from stored ones: Orthanc's /anonymize and /modify at every level.

Each source instance is read, changed off the event loop, and stored through the
archive like any other upload. If the source vanishes half-way (deleted meanwhile),
what was already made is deleted again: nothing half-made stays behind. A stored file
that pydicom cannot read back (stored by an earlier version, whose ingest accepted an
unknown VR) is left out of a patient, study or series with a warning and named in the
answer; the instance-level routes refuse it (SourceUnreadable).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from .. import charsets
from ..archive import (
    Archive,
    CaseConflict,
    Level,
    NotFound,
    Origin,
    Resource,
    decode_every_element,
    public_ids,
    read_dataset,
)
from ..imaging.transcode import transcode
from .anonymize import (
    AnonymizationError,
    Instructions,
    UidMap,
    anonymize_dataset,
    dataset_bytes,
    modify_dataset,
    with_defaults,
)
from .deid_options import DEFAULTS, OptionError, parse_defaults

__all__ = ["SourceUnreadable", "Derived", "derive_resource", "derive_copy", "cases_losing", "derive_instance_file", "uid_map_for", "default_options",
           "deidentification_defaults", "set_deidentification_defaults", "ingest_anonymizer"]

# the archive setting that holds the teacher's de-identification defaults (JSON)
DEFAULTS_SETTING = "deidentification"

log = logging.getLogger("pipacs.teaching")

# The UIDs a modification at each level renews (Orthanc 1.10, measured: the modified level and those
# below; a patient's studies get new UIDs too, an instance a new SOP Instance UID even when only transcoded).
_NEW_UIDS = {
    Level.PATIENT: (0x0020000D, 0x0020000E, 0x00080018),
    Level.STUDY: (0x0020000D, 0x0020000E, 0x00080018),
    Level.SERIES: (0x0020000E, 0x00080018),
    Level.INSTANCE: (0x00080018,),
}


class SourceUnreadable(Exception):
    """A stored file that pydicom cannot read whole: what it would make is no faithful copy (an
    element it cannot decode is copied raw, or the change fails half-way)."""

    def __init__(self, instance_id: str, reason: str):
        super().__init__(f"the stored file of instance {instance_id} cannot be read: {reason}")
        self.instance_id = instance_id
        self.reason = reason


def _read_whole(data: bytes, instance_id: str) -> Dataset:
    """The stored file with every element decoded, into sequences (pydicom reads lazily: an
    unknown VR such as XX fails only when reached, or is written back raw), or SourceUnreadable."""
    try:
        ds = read_dataset(data)
        decode_every_element(ds)
    except Exception as e:  # noqa: BLE001 - pydicom raises many types on a file it cannot read
        reason = (str(e).splitlines()[0][:200] if str(e) else "") or type(e).__name__
        raise SourceUnreadable(instance_id, reason) from None
    return ds


def name_character_set(ds: Dataset) -> None:
    """A source without Specific Character Set was read with the DefaultEncoding; pydicom would
    write its text back in Latin-1 (losing what Latin-1 cannot hold), so the copy names the set
    its text is in. (Orthanc writes such a copy in the DefaultEncoding without naming it; a
    reader with another default then misreads it.)"""
    term = charsets.written_term() if "SpecificCharacterSet" not in ds else None
    if term:
        ds.SpecificCharacterSet = term.split("\\") if "\\" in term else term


def deidentification_defaults(archive: Archive) -> dict[str, Any]:
    """The teacher's defaults ({"Options": [...]}), as stored; the built-in ones when never set
    (or when what is stored no longer reads, which is logged)."""
    raw = archive.setting(DEFAULTS_SETTING)
    if raw is None:
        return dict(DEFAULTS)
    try:
        return parse_defaults(json.loads(raw))
    except (ValueError, OptionError) as e:
        log.warning("the stored de-identification defaults do not read (%s): none are applied", e)
        return dict(DEFAULTS)


def default_options(archive: Archive) -> frozenset[str]:
    """The options an anonymization applies when its request names none (AnonymizeOnIngest too)."""
    return frozenset(deidentification_defaults(archive)["Options"])


async def set_deidentification_defaults(archive: Archive, body: Any) -> dict[str, Any]:
    """Check and store the teacher's defaults (OptionError names what is wrong); what is stored."""
    defaults = parse_defaults(body)
    await archive.put_setting(DEFAULTS_SETTING, json.dumps(defaults))
    return defaults


async def with_options(archive: Archive, ins: Instructions) -> Instructions:
    """An anonymization's options: the request's, or the teacher's defaults; the board's key when
    dates are to be shifted."""
    ins = with_defaults(ins, default_options(archive), None)
    if ins.options and "RetainLongitudinalModifiedDates" in ins.options:
        ins.date_key = await archive.secret("anonymization")
    return ins


async def uid_map_for(archive: Archive, ins: Instructions, anonymize: bool) -> UidMap:
    if anonymize and ins.deterministic:
        return UidMap(await archive.secret("anonymization"))
    return UidMap()


def _derived_bytes(data: bytes, ins: Instructions, uids: UidMap, anonymize: bool,
                   level: Level, instance_id: str, leave_out: Callable[[Dataset], bool] | None = None,
                   ) -> tuple[bytes | None, tuple[str, str, str, str], tuple[str, str, str, str]]:
    """The changed file, the public IDs of its source and of the copy (blocking: runs in a worker
    thread); None for an instance ``leave_out`` says is not to be copied (its UID still mapped, as
    its copy's would be, so that what names it can follow)."""
    ds = _read_whole(data, instance_id)
    source = public_ids(str(ds.get("PatientID", "")), str(ds.get("StudyInstanceUID", "")),
                        str(ds.get("SeriesInstanceUID", "")), str(ds.get("SOPInstanceUID", "")))
    if leave_out is not None and leave_out(ds):
        uids(str(ds.get("SOPInstanceUID", "")))
        return None, source, source
    if anonymize:
        anonymize_dataset(ds, ins, uids)
    else:
        modify_dataset(ds, ins, uids, _NEW_UIDS[level])
    name_character_set(ds)
    made = public_ids(str(ds.get("PatientID", "")), str(ds.get("StudyInstanceUID", "")),
                      str(ds.get("SeriesInstanceUID", "")), str(ds.get("SOPInstanceUID", "")))
    out = dataset_bytes(ds)
    if ins.transcode:
        out = transcode(out, ins.transcode)
    return out, source, made


async def derive_instance_file(archive: Archive, public_id: str, ins: Instructions, anonymize: bool) -> bytes:
    """Orthanc's instance-level /anonymize and /modify answer the new file without storing it."""
    inst = await archive.get(Level.INSTANCE, public_id)
    data = await archive.read_file(inst)
    if anonymize:
        ins = await with_options(archive, ins)
    uids = await uid_map_for(archive, ins, anonymize)
    out, _, _ = await asyncio.to_thread(_derived_bytes, data, ins, uids, anonymize, Level.INSTANCE, public_id)
    return out or b""


@dataclass
class Derived:
    """What ``derive_copy`` made: Orthanc's answer, and what a caller moving teaching cases onto the
    copy needs (the source's instance IDs -> the copies', the UIDs the copy was given)."""
    answer: dict[str, Any]
    instances: dict[str, str] = field(default_factory=dict)
    uids: UidMap = field(default_factory=UidMap)
    left_out: list[SourceUnreadable] = field(default_factory=list)
    not_copied: list[str] = field(default_factory=list)    # instance IDs ``leave_out`` chose


async def cases_losing(archive: Archive, res: Resource) -> list[str]:
    """IDs of the teaching cases a delete of ``res`` would take something from: those using a study
    at or below it (a patient, a study), or holding a key image below it (a series)."""
    if res.level == Level.INSTANCE:
        return []
    if res.level == Level.SERIES:
        study = await archive.index.resource_by_id(res.parent_id) if res.parent_id else None
        if study is None:
            return []
        below = {i.public_id for i in await archive.instances_below(res)}
        out = []
        for summary in await archive.cases_using_study(study.public_id):
            try:
                doc = await archive.get_case(summary["ID"])
            except NotFound:
                continue
            if any(k["Instance"] in below for k in doc.get("KeyImages", [])):
                out.append(summary["ID"])
        return out
    studies = [res] if res.level == Level.STUDY else await archive.index.children(res.id)
    found: list[str] = []
    for study in studies:
        found += [c["ID"] for c in await archive.cases_using_study(study.public_id) if c["ID"] not in found]
    return found


def refuse_for_cases(cases: list[str], level: Level, public_id: str, action: str) -> None:
    """KeepSource false deletes the source: not while teaching cases use it (as DELETE refuses)."""
    if cases:
        name = level.title.lower()
        raise CaseConflict(f"the {name} {public_id} is used by case(s) {', '.join(cases)}: {action} with "
                           f"\"KeepSource\": false would delete it and take it out of them. Keep the source, or "
                           "POST /cases/{id}/anonymize to move a case onto its de-identified copy, or add ?force "
                           f"to take the {name} and its key images out of those cases", cases)


async def derive_resource(archive: Archive, level: Level, public_id: str, ins: Instructions,
                          anonymize: bool, origin: Origin, in_cases: str = "refuse") -> dict[str, Any]:
    """Anonymize or modify a patient, study or series into a new one; Orthanc's answer.
    With KeepSource false, a source that teaching cases use is refused (CaseConflict naming
    them) unless ``in_cases="detach"`` (?force): then it leaves those cases."""
    return (await derive_copy(archive, level, public_id, ins, anonymize, origin, in_cases)).answer


async def derive_copy(archive: Archive, level: Level, public_id: str, ins: Instructions,
                      anonymize: bool, origin: Origin, in_cases: str = "refuse",
                      leave_out: Callable[[Dataset], bool] | None = None, keep_existing: bool = False) -> Derived:
    """``derive_resource``, with the mapping of the source's instances to the copies; the instances
    ``leave_out`` (given the source dataset, in a worker thread) says are not copied.
    ``keep_existing``: a copy already stored (a deterministic one made before) is used as it is, never
    stored again (with OverwriteInstances a store again would replace it, and cases' key images on it)."""
    res = await archive.get(level, public_id)
    instances = await archive.instances_below(res)
    if not instances:
        raise NotFound(f"{level.title.lower()} {public_id} holds no instances")
    if 0x00080018 in ins.replace and len(instances) > 1:
        # every instance would take the one UID, each copy replacing the one before (Orthanc fails
        # half-way, with a 500, after storing the first)
        raise AnonymizationError(f"replacing SOPInstanceUID would give the {len(instances)} instances of this "
                                 f"{level.title.lower()} one UID: replace it instance by instance")
    action = "anonymized" if anonymize else "modified"
    if not ins.keep_source and in_cases == "refuse":     # before any work: nothing made for nothing
        refuse_for_cases(await cases_losing(archive, res), level, public_id,
                         "anonymize" if anonymize else "modify")
    if anonymize:
        ins = await with_options(archive, ins)
    uids = await uid_map_for(archive, ins, anonymize)
    key = "AnonymizedFrom" if anonymize else "ModifiedFrom"
    made: list[str] = []
    mapping: dict[str, str] = {}
    left_out: list[SourceUnreadable] = []
    not_copied: list[str] = []
    new_ids: tuple[str, str, str, str] | None = None
    try:
        for inst in instances:
            data = await archive.read_file(inst)
            try:
                out, source, copy_ids = await asyncio.to_thread(_derived_bytes, data, ins, uids, anonymize,
                                                                level, inst.public_id, leave_out)
            except SourceUnreadable as e:
                log.warning("%s %s: %s; left out of the %s copy", level.title.lower(), public_id, e, action)
                left_out.append(e)
                continue
            if out is None:
                not_copied.append(inst.public_id)
                continue
            if keep_existing and await archive.index.resource(copy_ids[3], Level.INSTANCE) is not None:
                mapping[inst.public_id] = copy_ids[3]
                new_ids = copy_ids
                continue
            # every level: the archive records it on the resources this instance creates (as Orthanc:
            # a study anonymized makes a new patient, marked too; a series modified keeps its study)
            meta = {int(lvl): {key: source[lvl]} for lvl in Level}
            result = await archive.ingest_bytes(out, origin, extra_metadata=meta, already_deidentified=anonymize)
            if result.status == "Success":
                made.append(result.ids[3])
            if result.status in ("Success", "AlreadyStored"):
                mapping[inst.public_id] = result.ids[3]
            new_ids = result.ids
    except NotFound:
        log.warning("%s %s changed while it was being %s; removing the %d instance(s) already made",
                    level.title.lower(), public_id, action, len(made))
        for iid in made:
            try:
                await archive.delete(Level.INSTANCE, iid)
            except NotFound:
                pass
        raise NotFound(f"{level.title.lower()} {public_id} was deleted while it was being processed") from None
    if new_ids is None:      # every stored file was unreadable (or left out): nothing to answer with
        if left_out:
            raise left_out[0]
        raise NotFound(f"{level.title.lower()} {public_id} holds nothing to copy")
    kept_for_them = bool(left_out) and not ins.keep_source
    if kept_for_them:
        log.warning("%s %s kept although KeepSource is false: %d of its instances could not be %s",
                    level.title.lower(), public_id, len(left_out), action)
    elif not ins.keep_source:
        # "refuse" again here: a case that took the source in meanwhile keeps it (the copy stays made)
        await archive.delete(level, public_id, in_cases)
    new_id = new_ids[level]
    answer: dict[str, Any] = {
        "Description": "REST API", "FailedInstancesCount": len(left_out), "ID": new_id,
        "InstancesCount": len(instances), "IsAnonymization": anonymize, "Path": f"/{level.plural}/{new_id}",
        "PatientID": new_ids[0], "Type": level.title}
    if left_out:
        # Orthanc's answer has the count only; which instances and why, in a key of ours
        answer["FailedInstances"] = [
            {"ID": e.instance_id,
             "Message": f"{e}; left out of the {action} copy, its bytes are still served by "
                        f"/instances/{e.instance_id}/file" + ("; the source was kept for it" if kept_for_them else "")}
            for e in left_out]
    return Derived(answer, mapping, uids, left_out, not_copied)


def ingest_anonymizer(salt: bytes, defaults: Callable[[], frozenset[str]] = frozenset):
    """The AnonymizeOnIngest transform: bytes in, de-identified bytes out, the same UIDs and
    anonymized patient for the same source every time (so a study sent in parts stays one).
    ``defaults()`` gives the teacher's options as they are when each instance comes in."""
    from ..archive import InvalidDicom, StoreRefused
    from .anonymize import AnonymizationError

    def transform(data: bytes) -> bytes:
        try:
            ds = read_dataset(data)
            if "SOPInstanceUID" not in ds:
                return data   # let the normal checks refuse it with their message
            ins = Instructions(deterministic=True, options=defaults(), date_key=salt)
            anonymize_dataset(ds, ins, UidMap(salt))
            name_character_set(ds)
            return dataset_bytes(ds)
        except AnonymizationError as e:
            raise StoreRefused(f"refused by AnonymizeOnIngest: {e}") from None
        except StoreRefused:
            raise
        except Exception as e:  # noqa: BLE001 - the anonymizer's failures are the sender's bad data
            raise InvalidDicom(f"cannot be de-identified: {e}") from None
    return transform
