"""Teaching-file routes, in Orthanc's shapes: anonymize, modify, archive and media downloads,
labels, user metadata."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web
from pydicom.uid import UID

from ..archive import Archive, Level, NotFound, Resource, label_problem
from ..teaching.anonymize import AnonymizationError, parse_instructions
from ..teaching.casedeid import anonymize_case
from ..teaching.deid_options import OptionError
from ..teaching.derive import (
    SourceUnreadable,
    deidentification_defaults,
    derive_instance_file,
    derive_resource,
    set_deidentification_defaults,
)
from ..teaching.downloads import (
    Cancelled,
    ZipEntry,
    archive_layout,
    download_filename,
    media_layout,
    write_zip,
)
from . import holdback
from .access import is_student
from .errors import PARAMETER_OUT_OF_RANGE, BadRequestBody, ItemNotFound, StoredFileUnreadable
from .keys import ARCHIVE
from .resources import body_text, flag, http_origin, json_body, json_response, level_of

routes = web.RouteTableDef()
log = logging.getLogger("pipacs.web")

METADATA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Metadata the appliance itself records: read-only through the API.
SYSTEM_METADATA = {"ReceptionDate", "Origin", "RemoteAET", "RemoteIP", "CalledAET", "HttpUsername",
                   "TransferSyntax", "SopClassUid", "IndexInSeries", "PixelDataOffset", "AnonymizedFrom",
                   "ModifiedFrom", "LastUpdate"}


# ------------------------------------------------------------------ anonymize / modify

@routes.post(r"/{level:patients|studies|series}/{id}/{action:anonymize|modify}")
async def derive(request: web.Request) -> web.Response:
    """Orthanc's; with "KeepSource": false, a source that teaching cases use is refused (409 naming
    them, as DELETE) unless ``?force``, which takes it and its key images out of them."""
    level = level_of(request)
    anonymize = request.match_info["action"] == "anonymize"
    ins = parse_instructions(await json_body(request, empty={}, want=dict), anonymize)
    if not anonymize and level == Level.PATIENT and 0x00100020 not in ins.replace:
        raise AnonymizationError('modifying a patient needs its new PatientID in "Replace" (and "Force": true)')
    try:   # an unreadable instance is left out and named in the answer; this: all of them were
        answer = await derive_resource(request.app[ARCHIVE], level, request.match_info["id"], ins, anonymize,
                                       http_origin(request), "detach" if flag(request, "force") else "refuse")
    except SourceUnreadable as e:
        raise StoredFileUnreadable(e.instance_id) from None
    return json_response(answer)


@routes.post(r"/instances/{id}/{action:anonymize|modify}")
async def derive_instance(request: web.Request) -> web.Response:
    """Orthanc answers the changed file without storing it (POST it to /instances to keep it)."""
    anonymize = request.match_info["action"] == "anonymize"
    ins = parse_instructions(await json_body(request, empty={}, want=dict), anonymize)
    try:   # not a copy that carries an element pydicom could not decode (modify wrote it back raw)
        data = await derive_instance_file(request.app[ARCHIVE], request.match_info["id"], ins, anonymize)
    except SourceUnreadable as e:
        log.warning("/instances/%s/%s refused: %s", e.instance_id, request.match_info["action"], e)
        raise StoredFileUnreadable(e.instance_id) from None
    return web.Response(body=data, content_type="application/dicom",
                        headers={"Content-Disposition": f'attachment; filename="{request.match_info["id"]}.dcm"'})


@routes.post("/cases/{id}/anonymize")
async def anonymize_a_case(request: web.Request) -> web.Response:
    """De-identify a case's studies and move the case onto the copies (``teaching.casedeid``)."""
    try:
        answer = await anonymize_case(request.app[ARCHIVE], request.match_info["id"],
                                      await json_body(request, empty={}, want=dict), http_origin(request))
    except SourceUnreadable as e:        # every file of a study unreadable: no copy at all
        raise StoredFileUnreadable(e.instance_id) from None
    return json_response(answer)


@routes.get("/pipacs/deidentification")
async def get_deidentification(request: web.Request) -> web.Response:
    """The teacher's de-identification defaults: the Annex E options an anonymization applies
    when its request names none (AnonymizeOnIngest too)."""
    return json_response(deidentification_defaults(request.app[ARCHIVE]))


@routes.put("/pipacs/deidentification")
async def put_deidentification(request: web.Request) -> web.Response:
    try:
        stored = await set_deidentification_defaults(request.app[ARCHIVE], await json_body(request, want=dict))
    except OptionError as e:
        raise BadRequestBody(str(e)) from None
    return json_response(stored)


# ------------------------------------------------------------------ downloads

async def _stream(request: web.Request, make_entries: Callable[[threading.Event], list[ZipEntry]],
                  filename: str, deflate: bool = True) -> web.StreamResponse:
    """Build the entry list off the loop, then stream the ZIP through a bounded queue
    (``deflate``: members compressed at level 1; False: stored, as a case bundle's are)."""
    stop = threading.Event()
    entries = await asyncio.to_thread(make_entries, stop)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(maxsize=8)
    done = object()

    def push(chunk: bytes) -> None:
        if stop.is_set():
            raise Cancelled()
        asyncio.run_coroutine_threadsafe(queue.put(chunk), loop).result()

    def produce() -> None:
        outcome: Any = done
        try:
            write_zip(entries, push, stop, deflate)
        except Cancelled:
            pass
        except Exception as e:   # noqa: BLE001 - reported after the headers went out
            outcome = e
        asyncio.run_coroutine_threadsafe(queue.put(outcome), loop).result()

    resp = web.StreamResponse(headers={"Content-Type": "application/zip",
                                       "Content-Disposition": f'attachment; filename="{filename}"'})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    worker = loop.run_in_executor(None, produce)
    failed: Exception | None = None
    try:
        while True:
            item = await queue.get()
            if item is done:
                break
            if isinstance(item, Exception):
                failed = item
                break
            await resp.write(item)
    except (ConnectionResetError, asyncio.CancelledError):
        stop.set()
        log.info("download of %s stopped: the client went away", filename)
        while True:   # let the worker finish its last put, then end
            item = await queue.get()
            if item is done or isinstance(item, Exception):
                break
        await worker
        raise
    await worker
    if failed is not None:
        log.error("download of %s failed: %s", filename, failed)
        raise ConnectionResetError(f"the ZIP could not be completed: {failed}")   # truncated on purpose
    await resp.write_eof()
    return resp


async def _resources(archive: Archive, ids: list[str]) -> list[Resource]:
    out = []
    for pid in ids:
        res = await archive.index.resource(str(pid))
        if res is None:
            raise NotFound(f"unknown resource {pid}")
        out.append(res)
    return out


async def _download(request: web.Request, resources: list[Resource], media: bool, name: str) -> web.StreamResponse:
    archive = request.app[ARCHIVE]
    if is_student(request):     # only what the teacher published, named as if the rest did not exist
        for r in resources:
            if not await archive.visible_to_students(r):
                raise NotFound(f"unknown resource {r.public_id}")
        resources = await archive.narrowed_for_students(resources)
        await holdback.refuse_retrieve_of(request, resources)   # unknown cases of a teaching session
    rows = await archive.instance_paths_below(resources) if resources else []
    if not rows and resources:
        raise NotFound("nothing to download: no instances")
    scratch = archive.scratch_dir()
    name = download_filename(rows, media, fallback=name,
                             of_series=len(resources) == 1 and resources[0].level.name == "SERIES")
    if media:
        return await _stream(request, lambda stop: media_layout(rows, scratch, stop.is_set), name)
    return await _stream(request, lambda stop: archive_layout(rows), name)


def _refuse_transcode(ts: str) -> None:
    """``?transcode=`` of a download: Orthanc refuses a missing or unknown transfer syntax (400, its
    code 3); pipacs sends the files as stored, so it refuses a known one too rather than ignore it."""
    if not UID(ts).is_transfer_syntax:
        raise BadRequestBody(f"transcode: unknown transfer syntax {ts!r} (give its UID, e.g. 1.2.840.10008.1.2.1)",
                             PARAMETER_OUT_OF_RANGE)
    raise BadRequestBody(f"transcode: downloads are sent in the transfer syntax each file was stored in; "
                         f"{ts} ({UID(ts).name}) is not offered here. Make a transcoded copy with "
                         'POST /{level}/{id}/modify {"Transcode": ...} and download that', PARAMETER_OUT_OF_RANGE)


@routes.get(r"/{level:patients|studies|series}/{id}/{kind:archive|media}")
@routes.post(r"/{level:patients|studies|series}/{id}/{kind:archive|media}")
async def download_resource(request: web.Request) -> web.StreamResponse:
    level = level_of(request)
    if "transcode" in request.query:
        _refuse_transcode(request.query["transcode"])
    if request.method == "POST":   # Orthanc's options {"Transcode": ..., "Asynchronous": ...}; not JSON: refused
        options = await json_body(request, empty={})
        if isinstance(options, dict) and "Transcode" in options:
            _refuse_transcode(str(options["Transcode"] or ""))
        if isinstance(options, dict) and options.get("Asynchronous"):
            raise AnonymizationError("Asynchronous jobs are not offered: send the request without it")
    rid = request.match_info["id"]
    res = await request.app[ARCHIVE].get(level, rid)
    return await _download(request, [res], request.match_info["kind"] == "media", rid)


@routes.post(r"/tools/{kind:create-archive|create-media|create-media-extended}")
async def download_many(request: web.Request) -> web.StreamResponse:
    body = await json_body(request, empty={}, want=(dict, list))
    ids = body.get("Resources") if isinstance(body, dict) else body if isinstance(body, list) else None
    if not isinstance(ids, list):     # an empty list is an empty archive, as Orthanc answers it
        raise BadRequestBody('expected {"Resources": ["<patient, study, series or instance ID>", ...]}')
    if isinstance(body, dict) and body.get("Asynchronous"):
        raise AnonymizationError("Asynchronous jobs are not offered: send the request without it")
    if isinstance(body, dict) and "Transcode" in body:
        _refuse_transcode(str(body["Transcode"] or ""))
    resources = await _resources(request.app[ARCHIVE], ids)
    return await _download(request, resources, request.match_info["kind"] != "create-archive", "Archive")


# ------------------------------------------------------------------ labels

def label_param(request: web.Request) -> str:
    """The label of the path, or a 400 saying what is wrong with it and what a label is (Orthanc's rule)."""
    label = request.match_info["label"]
    problem = label_problem(label)
    if problem is not None:
        raise AnonymizationError(f"invalid label {label!r}: {problem}")
    return label


@routes.get(r"/{level:patients|studies|series|instances}/{id}/labels")
async def get_labels(request: web.Request) -> web.Response:
    archive = request.app[ARCHIVE]
    res = await archive.get(level_of(request), request.match_info["id"])
    if await holdback.held_resources(request, [res]):   # a label may name the answer: none while unknown
        return json_response([])
    return json_response(await archive.index.labels(res.id))


@routes.get(r"/{level:patients|studies|series|instances}/{id}/labels/{label}")
async def has_label(request: web.Request) -> web.Response:
    archive = request.app[ARCHIVE]
    res = await archive.get(level_of(request), request.match_info["id"])
    label = label_param(request)
    if label not in await archive.index.labels(res.id) or await holdback.held_resources(request, [res]):
        raise NotFound(f"no label {label!r} on this {res.level.title.lower()}")
    return web.Response(text="", content_type="text/plain")


@routes.put(r"/{level:patients|studies|series|instances}/{id}/labels/{label}")
async def put_label(request: web.Request) -> web.Response:
    await request.app[ARCHIVE].set_label(level_of(request), request.match_info["id"], label_param(request), True)
    return web.Response(text="", content_type="text/plain")


@routes.delete(r"/{level:patients|studies|series|instances}/{id}/labels/{label}")
async def delete_label(request: web.Request) -> web.Response:
    await request.app[ARCHIVE].set_label(level_of(request), request.match_info["id"], label_param(request), False)
    return web.Response(text="", content_type="text/plain")


@routes.get("/tools/labels")
async def all_labels(request: web.Request) -> web.Response:
    archive = request.app[ARCHIVE]
    if is_student(request):    # less those found on unknown cases of a teaching session (may name the answer)
        hidden = await holdback.held_labels(request)
        return json_response([x for x in await archive.labels_students_see() if x not in hidden])
    return json_response(await archive.index.all_labels())


# ------------------------------------------------------------------ user metadata (case notes)

def _metadata_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if name in SYSTEM_METADATA:
        raise web.HTTPForbidden(text=f"metadata {name!r} is recorded by the appliance and cannot be changed")
    if not METADATA_NAME.fullmatch(name):
        raise AnonymizationError(f"invalid metadata name {name!r}: use 1 to 64 letters, digits, '-' or '_'")
    return name


@routes.put(r"/{level:patients|studies|series|instances}/{id}/metadata/{name}")
async def put_metadata(request: web.Request) -> web.Response:
    name = _metadata_name(request)
    value = await body_text(request)
    if len(value) > 65536:
        raise AnonymizationError("a metadata value is limited to 64 KB")
    await request.app[ARCHIVE].set_metadata(level_of(request), request.match_info["id"], name, value)
    return web.Response(text="", content_type="text/plain")


@routes.delete(r"/{level:patients|studies|series|instances}/{id}/metadata/{name}")
async def delete_metadata(request: web.Request) -> web.Response:
    name = _metadata_name(request)
    if not await request.app[ARCHIVE].set_metadata(level_of(request), request.match_info["id"], name, None):
        raise ItemNotFound(f"no metadata {name!r} here")
    return web.Response(text="", content_type="text/plain")
