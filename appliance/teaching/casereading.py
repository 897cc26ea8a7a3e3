"""What a caller may read of a teaching case, in one place for every route that hands a case out
(GET /cases/{id}, the key object and presentation states, the key-image pictures, bundles).

The rule: a draft is not found for a student (404, its existence is not told), and a key image is
a student's only when its instance is one students may see (``Archive.student_may_see``: a
published case whose patient later gets an identifiable instance keeps that instance to the
teacher). A teacher reads every case and key image.

Plain functions on the archive (no request): the web handlers call them, and so do the tests.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from ..archive import Archive, CaseQuery, Level, NotFound, Resource
from .bundles import CasePart, dicom_objects
from .keyobjects import build_export

__all__ = ["MAX_INDEX_DIGITS", "TooManyCases", "readable_case", "visible_key_images", "readable_key_image",
           "key_image_headers", "case_export", "case_part", "collection_cases"]

MAX_INDEX_DIGITS = 6          # a key image's number in a URL (a case has at most 500): more digits is no key image


class TooManyCases(ValueError):
    """A collection with more cases than one bundle takes; the message says what to do."""


async def readable_case(archive: Archive, case_id: str, student: bool) -> dict[str, Any]:
    """The case; NotFound when there is none, or it is a draft and the caller a student."""
    doc = await archive.get_case(case_id)
    if student and doc.get("State") != "published":
        raise NotFound(f"no case {case_id}")
    return doc


async def visible_key_images(archive: Archive, doc: dict[str, Any], student: bool) -> list[bool]:
    """For each key image of ``doc``: may the caller see its instance (always, for a teacher)."""
    keys = doc.get("KeyImages") or []
    if not student:
        return [True] * len(keys)
    seen: dict[str, bool] = {}
    for ki in keys:
        iid = str(ki.get("Instance"))
        if iid not in seen:
            seen[iid] = await archive.student_may_see(Level.INSTANCE, iid)
    return [seen[str(ki.get("Instance"))] for ki in keys]


async def readable_key_image(archive: Archive, doc: dict[str, Any], n: str, student: bool) -> dict[str, Any]:
    """Key image number ``n`` (the URL's text, from 0) of a readable case; NotFound for a number
    that is not one of them (over-long, negative, not digits) or an instance the caller may not see."""
    keys = doc.get("KeyImages") or []
    if not (len(n) <= MAX_INDEX_DIGITS and n.isascii() and n.isdigit()) or int(n) >= len(keys):
        raise NotFound(f"case {doc['ID']} has no key image {n[:20]}: it has {len(keys)}, numbered from 0")
    ki = keys[int(n)]
    if student and not await archive.student_may_see(Level.INSTANCE, ki["Instance"]):
        raise NotFound(f"case {doc['ID']} has no key image {n} a student may see")
    return ki


async def key_image_headers(archive: Archive, doc: dict[str, Any]) -> dict[str, Dataset]:
    """Instance ID -> header of each key image's instance, read from its stored file without the
    pixels (a multi-frame key image's header, not its megabytes). NotFound names one that is gone."""
    paths = {}
    for ki in doc.get("KeyImages") or []:
        iid = ki.get("Instance")
        if iid in paths:
            continue
        try:
            paths[iid] = (await archive.instance_file(iid))[0]
        except NotFound:
            raise NotFound(f"key image instance {iid} of case {doc['ID']} is no longer stored") from None

    def read() -> dict[str, Dataset]:
        out = {}
        for iid, path in paths.items():
            try:
                out[iid] = pydicom.dcmread(path, stop_before_pixels=True)
            except FileNotFoundError:
                raise NotFound(f"the file of key image instance {iid} of case {doc['ID']} is missing") from None
        return out

    return await asyncio.to_thread(read)


async def case_export(archive: Archive, doc: dict[str, Any], student: bool) -> tuple[list[Dataset], list[Dataset]]:
    """(KOS per study, GSPS) of a readable case, of the key images the caller may see (a student's
    export leaves out the others, as a bundle does). Raises ExportError (no key images) or NotFound."""
    visible = await visible_key_images(archive, doc, student)
    if not all(visible):
        doc = {**doc, "KeyImages": [ki for ki, ok in zip(doc.get("KeyImages") or [], visible, strict=True) if ok]}
    headers = await key_image_headers(archive, doc)
    return await asyncio.to_thread(build_export, doc, headers)


async def case_part(archive: Archive, doc: dict[str, Any], student: bool) -> CasePart:
    """What a bundle carries of one readable case: the stored files of its studies (for a student
    only the studies students may see), its KOS/GSPS files, the file of each key image the caller
    may see (None for the others and those no longer stored)."""
    part = CasePart(doc)
    studies: list[Resource] = []
    for sid in doc.get("Studies") or []:
        try:
            res = await archive.get(Level.STUDY, sid)
        except NotFound:
            continue
        if student and not await archive.visible_to_students(res):
            continue
        studies.append(res)
    for res in studies:
        rows = await archive.instance_paths_below([res])
        part.rows += rows
        part.study_of_row.update({r["instance"]: res.public_id for r in rows})
    for ki, ok in zip(doc.get("KeyImages") or [], await visible_key_images(archive, doc, student), strict=True):
        if not ok:
            part.key_image_files.append(None)
            continue
        try:
            part.key_image_files.append((await archive.instance_file(ki["Instance"]))[0])
        except NotFound:
            part.key_image_files.append(None)
    part.dicom_extras = await asyncio.to_thread(dicom_objects, doc, part.key_image_files)
    return part


async def collection_cases(archive: Archive, label: str, student: bool, most: int) -> list[dict[str, Any]]:
    """Every case of a collection the caller may read (a teacher's: any state; a student's:
    published). TooManyCases beyond ``most`` (MaximumBundleCases)."""
    summaries, total = await archive.list_cases(CaseQuery(collection=label, students=student, limit=most))
    if total > most:
        raise TooManyCases(f"collection {label!r} has {total} cases, more than the {most} of MaximumBundleCases "
                           "one bundle takes: bundle it in parts (smaller collections, or case by case)")
    docs = []
    for s in summaries:
        try:
            docs.append(await readable_case(archive, s["ID"], student))
        except NotFound:      # deleted (or unpublished) meanwhile
            continue
    return docs
