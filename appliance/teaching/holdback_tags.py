"""Unknown cases in a teaching session: the plain functions that keep their answer out of what a
student is given, shared by the web layer (``appliance.web.holdback``) and the DICOM layer
(``appliance.dicom.qr``), which must not import each other.

Which cases, studies and patients are held back now is the archive's snapshot
(``Archive.held_back()``, recomputed after every write that can change it); which DICOM text
gives the answer away is ``HELD_BACK_TAGS`` (``appliance.archive.sessionrules``, the one list: the
study's own attributes and the board's key objects' text).
Here: taking those attributes out of a pydicom Dataset, of DICOM JSON, of query answers; telling
whether a query matches on them (a match is an answer too: "StudyDescription=*pneumothorax*"
would say what the case is by which studies it finds); and which instances a retrieve may send.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydicom.dataset import Dataset

from ..archive import HELD_BACK_TAGS, Archive, Level, Query, Resource, public_ids

# Documents rather than images: structured reports and key objects (1.2.840.10008.5.1.4.1.1.88.x),
# encapsulated PDF, CDA and models (.104.x), presentation states (.11.x: their labels and captions).
# Their content is what they say (a report's text, an SR's coded findings): for a held-back study a
# student is refused it (the web's ``refuse_document``) rather than given a redaction that keeps
# whatever no list names (private elements, a future IOD's text).
# Masks: raw data, segmentations, surfaces and registrations (.66.x) and RT objects (.481.x: structure
# sets, plans, doses) name the finding (a SEG's SegmentLabel "Pneumothorax", an RTSTRUCT's ROIName) and
# their frames or contours show where it is (the tap question's region): refused like documents, and
# their frames, rendered images and previews too (``MASK_CLASS_PREFIXES``; the quiz images are the image
# series, not these).
MASK_CLASS_PREFIXES = ("1.2.840.10008.5.1.4.1.1.66.", "1.2.840.10008.5.1.4.1.1.481.")
DOCUMENT_CLASS_PREFIXES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.104.",
                           "1.2.840.10008.5.1.4.1.1.11.", *MASK_CLASS_PREFIXES)


def is_document_class(sop_class_uid: str) -> bool:
    """Whether a SOP class is a document's (SR, KOS, encapsulated PDF/CDA, presentation state) or a
    mask's (segmentation, RT: ``is_mask_class``)."""
    return str(sop_class_uid or "").strip().startswith(DOCUMENT_CLASS_PREFIXES)


def is_mask_class(sop_class_uid: str) -> bool:
    """Whether a SOP class is a mask's (SEG and the other .66.x, RT .481.x): its pixels show the answer."""
    return str(sop_class_uid or "").strip().startswith(MASK_CLASS_PREFIXES)


STUDY_INSTANCE_UID = 0x0020000D
PATIENT_ID = 0x00100020

# The sentence a refused retrieve says (HTTP 403, README "Unknown cases in a session").
RETRIEVE_REFUSED = ("this study is an unknown case in a teaching session: it can be retrieved after the "
                    "teacher reveals it")
# The same for a DICOM peer: an Error Comment is a LO, at most 64 characters (PS3.5 6.2).
RETRIEVE_REFUSED_DIMSE = "unknown case in a teaching session: retrieve it after the reveal"
assert len(RETRIEVE_REFUSED_DIMSE) <= 64

__all__ = ["DOCUMENT_CLASS_PREFIXES", "MASK_CLASS_PREFIXES", "RETRIEVE_REFUSED", "RETRIEVE_REFUSED_DIMSE",
           "held_answer", "is_document_class", "is_mask_class",
           "matches_on_held_back", "redact_dataset", "redact_dicom_json", "redact_values", "retrieve_plan"]


def redact_dataset(ds: Dataset, tags: frozenset[int] = HELD_BACK_TAGS) -> int:
    """Delete the held-back attributes from ``ds`` and from every item of its sequences, in place (give
    it a data set read for this answer, never a shared one); how many were deleted."""
    gone = 0
    for elem in list(ds):
        tag = int(elem.tag)
        if tag in tags:
            del ds[tag]
            gone += 1
        elif elem.VR == "SQ":
            for item in elem.value or []:
                gone += redact_dataset(item, tags)
    return gone


def redact_dicom_json(obj: Any, tags: frozenset[int] = HELD_BACK_TAGS) -> Any:
    """A copy of DICOM JSON (PS3.18 F.2: an object keyed by 8 hex digits, or a list of them) without
    the held-back attributes, in sequences' items too; other values are shared with ``obj``."""
    if isinstance(obj, list):
        return [redact_dicom_json(x, tags) for x in obj]
    if not isinstance(obj, dict):
        return obj
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if _hex_tag(key) in tags:
            continue
        if isinstance(value, dict) and value.get("vr") == "SQ" and isinstance(value.get("Value"), list):
            value = {**value, "Value": [redact_dicom_json(item, tags) for item in value["Value"]]}
        out[key] = value
    return out


def _hex_tag(key: str) -> int | None:
    if len(key) != 8:
        return None
    try:
        return int(key, 16)
    except ValueError:
        return None


def redact_values(values: Mapping[int, str], tags: frozenset[int] = HELD_BACK_TAGS) -> dict[int, str]:
    """A query answer's values (tag -> text, ``appliance.archive.answers``) without the held-back ones:
    C-FIND then answers them empty (a requested key is always answered), QIDO-RS leaves them out."""
    return {t: v for t, v in values.items() if t not in tags}


def matches_on_held_back(constraints: Iterable[tuple[int, str]], tags: frozenset[int] = HELD_BACK_TAGS) -> bool:
    """Whether a query's (tag, value) constraints match on a held-back attribute (a value that selects:
    not empty, not the universal ``*``). Then the held-back studies are left out of its answers."""
    return any(t in tags and str(v).strip() not in ("", "*") for t, v in constraints)


def held_answer(values: Mapping[int, str], level: Level, held: Any) -> bool:
    """Whether a query answer (the values ``answers`` gave, with PatientID, and StudyInstanceUID below
    the patient level) is about a held-back study or its patient (whose other studies are held back with
    it: the patient's name is the case's title)."""
    pid = values.get(PATIENT_ID)
    if pid is not None and public_ids(pid, "", "", "")[0] in held.patients:
        return True
    return level != Level.PATIENT and values.get(STUDY_INSTANCE_UID) in held.study_uids


async def retrieve_plan(archive: Archive, q: Query) -> tuple[list[tuple[str, str, str]], int]:
    """What a student's C-MOVE or C-GET sends: (file UUID, SOP class, transfer syntax) of the instances
    below the matches of ``q`` (as ``Archive.instance_files``) less those of studies students may not
    retrieve now (``HeldBack.no_retrieve``), and how many were left out. For a teacher's query, or when
    nothing is held back, exactly ``instance_files`` (one more call to the snapshot, nothing else)."""
    held = archive.held_back()
    if not q.students or not held or not held.no_retrieve:
        return await archive.instance_files(q), 0
    found: list[Resource] = await archive.index.resources_by_ids(await archive.find(q))
    if q.level == Level.PATIENT:
        found = await archive.narrowed_for_students(found)     # its published studies
    keep: list[int] = []
    dropped: list[int] = []
    for res in found:
        study = await archive.held_back_study_of(res.level, res.public_id)
        (dropped if study is not None and study in held.no_retrieve else keep).append(res.id)
    files = await archive.index.stored_files_below(keep) if keep else []
    left_out = len(await archive.index.stored_files_below(dropped)) if dropped else 0
    return files, left_out
