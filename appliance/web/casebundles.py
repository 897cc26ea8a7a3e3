"""Case bundles and key-image pictures: the routes (the work is in teaching.bundles and
teaching.keyimage_render).

GET /cases/{id}/key-images/{n}/rendered?format=png|jpeg   a key image for slides (STUDENT)
GET /cases/{id}/bundle, GET /collections/{label}/bundle   a bundle ZIP (DOWNLOAD)
POST /cases/import                                        a bundle ZIP in, a report out (TEACHER)
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from .. import __version__
from ..archive import CaseQuery, Level, NotFound, OverBudget, Resource
from ..teaching.bundles import (
    SCHEMA_VERSION,
    BundleRefused,
    CasePart,
    bundle_entries,
    dicom_objects,
    import_bundle,
)
from ..teaching.keyimage_render import FORMATS, render_key_image
from .access import is_student
from .casework import LABEL, _stream
from .errors import PARAMETER_OUT_OF_RANGE, BadRequestBody
from .keys import ARCHIVE, SETTINGS
from .resources import content_encoded, flag, http_origin, json_response, too_large, upload_anonymizer

routes = web.RouteTableDef()


async def visible_case(request: web.Request, case_id: str) -> dict[str, Any]:
    """The case, or 404 (NotFound) when it does not exist or is a draft and the caller a student."""
    doc = await request.app[ARCHIVE].get_case(case_id)
    if is_student(request) and doc.get("State") != "published":
        raise NotFound(f"no case {case_id}")
    return doc


# ------------------------------------------------------------------ key images for slides

@routes.get("/cases/{id}/key-images/{n}/rendered")
async def key_image_rendered(request: web.Request) -> web.Response:
    fmt = request.query.get("format", "png").strip().lower()
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in FORMATS:
        raise BadRequestBody(f"format must be png or jpeg, not {request.query['format'][:40]!r}", PARAMETER_OUT_OF_RANGE)
    doc = await visible_case(request, request.match_info["id"])
    n = request.match_info["n"]
    keys = doc.get("KeyImages") or []
    if not (n.isascii() and n.isdigit()) or int(n) >= len(keys):
        raise NotFound(f"case {doc['ID']} has no key image {n}: it has {len(keys)}, numbered from 0")
    ki = keys[int(n)]
    archive = request.app[ARCHIVE]
    if is_student(request) and not await archive.student_may_see(Level.INSTANCE, ki["Instance"]):
        raise NotFound(f"case {doc['ID']} has no key image {n} a student may see")
    path, _ = await archive.instance_file(ki["Instance"])
    body = await asyncio.to_thread(lambda: render_key_image(path.read_bytes(), ki, fmt))
    filename = f"{doc['ID']}-key-image-{n}.{'jpg' if fmt == 'jpeg' else 'png'}"
    return web.Response(body=body, content_type=FORMATS[fmt],
                        headers={"Content-Disposition": f'inline; filename="{filename}"',
                                 "Cache-Control": "private, no-cache"})


# ------------------------------------------------------------------ bundles out

async def case_part(request: web.Request, doc: dict[str, Any]) -> CasePart:
    """What a bundle carries of one case: the stored files of its studies (for a student only
    the studies students may see), its KOS/GSPS files, the file of each key image."""
    archive = request.app[ARCHIVE]
    student = is_student(request)
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
    visible = {r["instance"] for r in part.rows}
    for ki in doc.get("KeyImages") or []:
        if student and ki.get("Instance") not in visible:
            part.key_image_files.append(None)
            continue
        try:
            part.key_image_files.append((await archive.instance_file(ki["Instance"]))[0])
        except NotFound:
            part.key_image_files.append(None)
    part.dicom_extras = await asyncio.to_thread(dicom_objects, doc, part.key_image_files)
    return part


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def _send_bundle(request: web.Request, docs: list[dict[str, Any]], filename: str) -> web.StreamResponse:
    parts = [await case_part(request, d) for d in docs]
    generator = f"pipacs {__version__}"
    created = _now()
    # DICOM members stored, not deflated: the files are mostly pixels (or compressed already), and
    # a Pi's CPU is then not what bounds the download
    return await _stream(request, lambda stop: bundle_entries(parts, generator, created), filename, deflate=False)


@routes.get("/cases/{id}/bundle")
async def case_bundle(request: web.Request) -> web.StreamResponse:
    doc = await visible_case(request, request.match_info["id"])
    return await _send_bundle(request, [doc], f"case-{doc['ID']}.zip")


@routes.get("/collections/{label}/bundle")
async def collection_bundle(request: web.Request) -> web.StreamResponse:
    label = request.match_info["label"]
    if not LABEL.fullmatch(label):
        raise BadRequestBody(f"invalid collection {label!r}: 1 to 64 letters, digits, '-' or '_'",
                             PARAMETER_OUT_OF_RANGE)
    docs = await collection_cases(request, label)
    if not docs:
        raise NotFound(f"no case in collection {label!r}")
    return await _send_bundle(request, docs, f"collection-{label}.zip")


async def collection_cases(request: web.Request, label: str) -> list[dict[str, Any]]:
    """Every case of a collection a caller may take: a teacher any state, a student published."""
    archive = request.app[ARCHIVE]
    student = is_student(request)
    most = request.app[SETTINGS]["MaximumBundleCases"]
    summaries, total = await archive.list_cases(CaseQuery(collection=label, students=student, limit=most))
    if total > most:
        raise BadRequestBody(f"collection {label!r} has {total} cases, more than the {most} of MaximumBundleCases "
                             "one bundle takes: bundle it in parts (smaller collections, or case by case)",
                             PARAMETER_OUT_OF_RANGE)
    docs = []
    for s in summaries:
        try:
            doc = await archive.get_case(s["ID"])
        except NotFound:      # deleted meanwhile
            continue
        if not student or doc.get("State") == "published":
            docs.append(doc)
    return docs


# ------------------------------------------------------------------ bundles in

@routes.post("/cases/import")
async def import_cases(request: web.Request) -> web.Response:
    """A bundle ZIP as the body, spooled to the storage disk as uploads are (within their budgets)."""
    archive = request.app[ARCHIVE]
    try:
        spool = await archive.spool_request_body(request.content, request.content_length,
                                                 encoded=content_encoded(request))
    except OverBudget as e:
        raise too_large(e) from None
    try:
        if await asyncio.to_thread(spool.peek, 4) != b"PK\x03\x04":
            raise BadRequestBody("the body is not a ZIP: send a case bundle (GET /cases/{id}/bundle makes one)")
        anonymize = await upload_anonymizer(request) if flag(request, "anonymize") else None
        report = await import_bundle(archive, spool.file, http_origin(request), anonymize)
    except BundleRefused as e:
        raise BadRequestBody(str(e)) from None
    except OverBudget as e:
        raise too_large(e) from None
    finally:
        await asyncio.to_thread(spool.close)
    report["SchemaVersion"] = SCHEMA_VERSION
    return json_response(report)
