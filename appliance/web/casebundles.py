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
from ..archive import NotFound, OverBudget, label_problem
from ..teaching.bundles import SCHEMA_VERSION, BundleRefused, bundle_entries, import_bundle
from ..teaching.casereading import TooManyCases, case_part, collection_cases, readable_case, readable_key_image
from ..teaching.keyimage_render import FORMATS, render_key_image
from . import holdback
from .access import is_student
from .casework import _stream
from .errors import PARAMETER_OUT_OF_RANGE, BadRequestBody
from .keys import ARCHIVE, SETTINGS
from .resources import content_encoded, flag, http_origin, json_response, too_large, upload_anonymizer

routes = web.RouteTableDef()


# ------------------------------------------------------------------ key images for slides

@routes.get("/cases/{id}/key-images/{n}/rendered")
async def key_image_rendered(request: web.Request) -> web.Response:
    fmt = request.query.get("format", "png").strip().lower()
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in FORMATS:
        raise BadRequestBody(f"format must be png or jpeg, not {request.query['format'][:40]!r}", PARAMETER_OUT_OF_RANGE)
    archive = request.app[ARCHIVE]
    student = is_student(request)
    # an unknown case in a teaching session: its key image without annotations for a student
    doc = holdback.student_case(request, await readable_case(archive, request.match_info["id"], student))
    n = request.match_info["n"]
    ki = await readable_key_image(archive, doc, n, student)
    path, _ = await archive.instance_file(ki["Instance"])
    body = await asyncio.to_thread(lambda: render_key_image(path.read_bytes(), ki, fmt))
    filename = f"{doc['ID']}-key-image-{n}.{'jpg' if fmt == 'jpeg' else 'png'}"
    return web.Response(body=body, content_type=FORMATS[fmt],
                        headers={"Content-Disposition": f'inline; filename="{filename}"',
                                 "Cache-Control": "private, no-cache"})


# ------------------------------------------------------------------ bundles out

def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def _send_bundle(request: web.Request, docs: list[dict[str, Any]], filename: str) -> web.StreamResponse:
    student = is_student(request)
    parts = [await case_part(request.app[ARCHIVE], d, student) for d in docs]
    generator = f"pipacs {__version__}"
    created = _now()
    # DICOM members stored, not deflated: the files are mostly pixels (or compressed already), and
    # a Pi's CPU is then not what bounds the download
    return await _stream(request, lambda stop: bundle_entries(parts, generator, created), filename, deflate=False)


@routes.get("/cases/{id}/bundle")
async def case_bundle(request: web.Request) -> web.StreamResponse:
    doc = await readable_case(request.app[ARCHIVE], request.match_info["id"], is_student(request))
    holdback.refuse_case(request, [doc], "bundle")
    return await _send_bundle(request, [doc], f"case-{doc['ID']}.zip")


@routes.get("/collections/{label}/bundle")
async def collection_bundle(request: web.Request) -> web.StreamResponse:
    label = request.match_info["label"]
    problem = label_problem(label)
    if problem is not None:
        raise BadRequestBody(f"invalid collection {label!r}: {problem}", PARAMETER_OUT_OF_RANGE)
    try:
        docs = await collection_cases(request.app[ARCHIVE], label, is_student(request),
                                      request.app[SETTINGS]["MaximumBundleCases"])
    except TooManyCases as e:
        raise BadRequestBody(str(e), PARAMETER_OUT_OF_RANGE) from None
    if not docs:
        raise NotFound(f"no case in collection {label!r}")
    holdback.refuse_case(request, docs, "collection's bundle")
    return await _send_bundle(request, docs, f"collection-{label}.zip")


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
