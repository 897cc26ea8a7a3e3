"""Unknown cases in a teaching session, enforced for students on every web answer (README
"Unknown cases in a session").

While a session that is not ended holds a case unrevealed (``Archive.held_back()``), a STUDENT is
not told its answer: the case document is ``held_back_case(doc)``; the DICOM text that gives the
answer away (``HELD_BACK_TAGS``, the one list: the study's own attributes and the text of the board's
stored key objects) is out of every answer about its studies (REST JSON, tag routes, DICOMweb, the
stack document); the content of its documents (SR, encapsulated PDF/CDA, presentation states) is
refused (403: ``refuse_document``); labels found on it are out of ``/tools/labels``; and files of its
studies are refused (403) unless the teacher allowed retrieving (``HeldBack.no_retrieve``). Pixels,
frames and previews stay: they are the quiz.

The handlers call these functions; each begins with ``held_for``: a teacher, or no session holding
anything, returns at once (one dict look-up and one attribute read), so the ordinary path costs
nothing. Cached answers are redacted as a copy after the look-up (the caches keep the full answer,
and the redacted copy under a key of its own), so one caller's answer is never another's.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydicom.dataset import Dataset

from ..archive import HELD_BACK_TAGS, MAIN_TAGS, Archive, HeldBack, Level, Resource, held_back_case
from ..teaching.holdback_tags import (
    RETRIEVE_REFUSED,
    held_answer,
    is_document_class,
    is_mask_class,
    matches_on_held_back,
    redact_dataset,
    redact_dicom_json,
    redact_values,
)
from .access import is_student
from .classcache import CLASS_CACHE
from .keys import ARCHIVE

__all__ = ["CASE_REFUSED", "DOCUMENT_REFUSED", "RETRIEVE_REFUSED", "held_answer", "held_for", "held_labels",
           "held_resources", "instance_held", "MASK_REFUSED", "refuse_document", "refuse_mask",
           "resource_held", "main_tags_json", "matches_on_held_back", "redact_dataset", "redact_dataset_of", "redact_dicom_json",
           "redact_expanded", "redact_metadata_body", "redact_stack_body", "redact_values", "redacted_cached",
           "refuse_case", "refuse_retrieve", "refuse_retrieve_of", "student_case"]

CASE_REFUSED = ("case {id} is an unknown case in a teaching session: its {what} can be downloaded after the "
                "teacher reveals it")
DOCUMENT_REFUSED = ("this document is in an unknown case of a teaching session: its content can be read after the "
                    "teacher reveals it")
MASK_REFUSED = ("this segmentation or RT object is in an unknown case of a teaching session: it can be seen after "
                "the teacher reveals it")
# in cache keys of redacted copies: a change of the list is a new key
TAGS_VERSION = format(zlib.crc32(",".join(f"{t:08x}" for t in sorted(HELD_BACK_TAGS)).encode()), "08x")
# MainDicomTags keywords that are held back (Orthanc's keys are kept, their values "")
HELD_MAIN_KEYWORDS = frozenset(kw for tags in MAIN_TAGS.values() for t, kw in tags if t in HELD_BACK_TAGS)
# the stack document's fields that are held back (appliance.imaging.stack.build_stack)
STACK_FIELDS = ("StudyDescription", "SeriesDescription", "PatientName")
_MEMO = "pipacs.holdback.memo"       # request key: resource internal id -> held back (resource_held)


def held_for(request: web.Request) -> HeldBack | None:
    """The held-back snapshot when the caller is a student and a session holds something back; else
    None (the teacher, or no session: every check below then returns at once)."""
    if not is_student(request):
        return None
    held = request.app[ARCHIVE].held_back()
    return held if held else None


# ------------------------------------------------------------------ files

async def refuse_retrieve(request: web.Request, level: Level, public_id: str) -> None:
    """403 (RETRIEVE_REFUSED) when a student asks for a file of a study that may not be retrieved now."""
    held = held_for(request)
    if held is None or not held.no_retrieve:
        return
    study = await request.app[ARCHIVE].held_back_study_of(level, public_id)
    if study is not None and study in held.no_retrieve:
        raise web.HTTPForbidden(text=RETRIEVE_REFUSED)


async def refuse_retrieve_of(request: web.Request, resources: list[Resource]) -> None:
    """refuse_retrieve for a download of several resources (a patient: each of its published studies)."""
    held = held_for(request)
    if held is None or not held.no_retrieve:
        return
    archive: Archive = request.app[ARCHIVE]
    for res in resources:
        tops = await archive.narrowed_for_students([res]) if res.level == Level.PATIENT else [res]
        for top in tops:
            study = await archive.held_back_study_of(top.level, top.public_id)
            if study is not None and study in held.no_retrieve:
                raise web.HTTPForbidden(text=RETRIEVE_REFUSED)


# ------------------------------------------------------------------ cases

def student_case(request: web.Request, doc: dict[str, Any]) -> dict[str, Any]:
    """The case as this caller may read it: a held-back case is ``held_back_case(doc)`` for a student."""
    held = held_for(request)
    if held is None or doc.get("ID") not in held.cases:
        return doc
    return held_back_case(doc)


def refuse_case(request: web.Request, docs: list[dict[str, Any]], what: str) -> None:
    """403 when a student asks for a download (``what``) of a case that is held back, or of a case whose
    studies may not be retrieved now (a bundle carries its studies' files)."""
    held = held_for(request)
    if held is None:
        return
    for doc in docs:
        if doc.get("ID") in held.cases or any(s in held.no_retrieve for s in doc.get("Studies") or []):
            raise web.HTTPForbidden(text=CASE_REFUSED.format(id=doc.get("ID"), what=what))


# ------------------------------------------------------------------ DICOM text

async def resource_held(request: web.Request, res: Resource) -> bool:
    """Whether a resource's answers are held back for this student: it is under the patient of a
    held-back study (every held-back study's patient is in ``HeldBack.patients``; another study of that
    patient is held back with it, since its patient's name, the case's title, and its own descriptions
    may say the answer). Walks up the index once per series and request (remembered in the request:
    the tags of a study's 500 instances cost one walk per series)."""
    held = held_for(request)
    if held is None:
        return False
    if res.level == Level.PATIENT:
        return res.public_id in held.patients
    archive: Archive = request.app[ARCHIVE]
    memo: dict[int, bool] = request.setdefault(_MEMO, {})
    path: list[int] = []
    node: Resource | None = res
    result = False
    while node is not None:
        if node.id in memo:
            result = memo[node.id]
            break
        path.append(node.id)
        if node.level == Level.PATIENT:
            result = node.public_id in held.patients
            break
        if node.parent_id is None:
            break
        if node.parent_id in memo:
            result = memo[node.parent_id]
            break
        node = await archive.index.resource_by_id(node.parent_id)
    for rid in path:
        memo[rid] = result
    return result


async def instance_held(request: web.Request, inst: Resource) -> bool:
    """``resource_held`` of an instance (the name the tag routes read best with)."""
    return await resource_held(request, inst)


async def redact_dataset_of(request: web.Request, inst: Resource, ds: Dataset) -> Dataset:
    """``ds`` (read for this answer) without the held-back attributes when ``inst`` is held back for
    this student; as it is otherwise."""
    if await instance_held(request, inst):
        redact_dataset(ds)
    return ds


async def refuse_document(request: web.Request, inst: Resource, ds: Dataset) -> None:
    """403 (DOCUMENT_REFUSED) when a student asks for the content of a document (SR, KOS, encapsulated
    PDF/CDA, presentation state: ``is_document_class``) in a held-back study: what a report says cannot
    be redacted safely (a private element, an IOD no list names), so it waits for the reveal. ``ds``: the
    instance's data set (its SOPClassUID is never redacted)."""
    if is_document_class(ds.get("SOPClassUID", "")) and await instance_held(request, inst):
        raise web.HTTPForbidden(text=DOCUMENT_REFUSED)


async def refuse_mask(request: web.Request, inst: Resource) -> None:
    """403 (MASK_REFUSED) when a student asks for the frames, a rendered image or a preview of a mask
    (segmentation, RT object: ``is_mask_class``) in a held-back study: the mask shows where to tap. The
    SOP class is the index's (``SopClassUid`` metadata), read only for a student while something is held
    back, after the instance is known to be held (one walk a series, remembered in the request)."""
    if held_for(request) is None or not await instance_held(request, inst):
        return
    if is_mask_class((await request.app[ARCHIVE].metadata(inst)).get("SopClassUid", "")):
        raise web.HTTPForbidden(text=MASK_REFUSED)


async def held_labels(request: web.Request) -> frozenset[str]:
    """Labels found on anything held back for this student (``Archive.held_back_labels``: the held-back
    studies' patients, their studies, series and instances, computed once per snapshot): left out of
    ``/tools/labels`` while held back, since a label may name the answer ("pneumothorax"), even one that
    is on a visible study too (the safer rule). Empty at once for a teacher or when nothing is held back."""
    if held_for(request) is None:
        return frozenset()
    return await request.app[ARCHIVE].held_back_labels()


async def held_resources(request: web.Request, resources: list[Resource]) -> set[int]:
    """Internal IDs of the resources whose answers are held back for this student (``resource_held``)."""
    if held_for(request) is None:
        return set()
    return {r.id for r in resources if await resource_held(request, r)}


def main_tags_json(tags: dict[str, str]) -> dict[str, str]:
    """MainDicomTags (keyword -> value) with the held-back ones "" (Orthanc's keys kept, so that a
    script reading them finds them)."""
    return {k: ("" if k in HELD_MAIN_KEYWORDS else v) for k, v in tags.items()}


async def redact_expanded(request: web.Request, resources: list[Resource], out: list[dict[str, Any]]) -> None:
    """Orthanc's JSON of ``resources`` (``resources.expand``, in the same order), redacted in place for
    a student where it is about a held-back study: held-back main tags "", no labels."""
    held = await held_resources(request, resources)
    for r, d in zip(resources, out, strict=True):
        if r.id in held:
            for key in ("MainDicomTags", "PatientMainDicomTags"):
                if key in d:
                    d[key] = main_tags_json(d[key])
            d["Labels"] = []      # a label may name the answer, as a case's collections may


# ------------------------------------------------------------------ cached answers

async def redacted_cached(request: web.Request, key: str, full: Callable[[], Awaitable[bytes]],
                          redact: Callable[[bytes], bytes], owners: Any) -> bytes:
    """The redacted copy of a cached answer: made once per content from the full answer (looked up or
    made by ``full``), and kept under a key of its own, so thirty students cost one redaction. The full
    answer is had first, outside the copy's make: a make holds one of the cache's few worker slots, and
    one waiting there for another make's slot could wait for ever."""
    cache = request.app[CLASS_CACHE]
    body = await full()
    return await cache.get_or_make(f"held-back/{TAGS_VERSION}/{key}", lambda: asyncio.to_thread(redact, body),
                                   owners=owners)


def redact_stack_body(body: bytes) -> bytes:
    """A stack document (deflated JSON, as the class cache keeps it) with StudyDescription,
    SeriesDescription and PatientName "" (blocking: run off the loop)."""
    doc = json.loads(zlib.decompress(body))
    for name in STACK_FIELDS:
        if name in doc:
            doc[name] = ""
    return zlib.compress(json.dumps(doc, ensure_ascii=False).encode(), 6)


def redact_metadata_body(body: bytes) -> bytes:
    """WADO-RS metadata (JSON bytes, as the class cache keeps it) without the held-back attributes."""
    return json.dumps(redact_dicom_json(json.loads(body))).encode()
