"""The viewer's two requests: a series' stack document and a frame's pixels, both made once per
content and kept in the class cache, so thirty students opening a case cost one computation.

``GET /pipacs/series/{id}/stack``: the frames in display order with what the viewer needs of each
(appliance.imaging.stack.build_stack over headers read without pixel data).
``GET /pipacs/instances/{id}/frames/{frame}/pixels``: the frame's stored values, lossless, in the
PXF1 wire format (appliance.imaging.framecodec; pixels.js decodes it) or the stored baseline JPEG.

Visibility first: a student asking for what the teacher did not publish gets the 404 of an
unknown resource before any cache is looked at. Keys are per content (the revision of the
series' instances and files; a frame's file UUID), so a replaced instance is never served stale.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import zlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..archive import Archive, Level, NotFound, Resource, tag_key
from ..imaging import framecodec
from ..imaging.render import DecodeError, FrameNotFound
from ..imaging.stack import VERSION_CHARS, build_stack
from . import holdback
from .access import is_student
from .classcache import CLASS_CACHE
from .errors import StoredFileIOError
from .images import warm_preview
from .keys import ARCHIVE

routes = web.RouteTableDef()

STACK_VERSION = 2      # in the cache keys: a change of the document's shape or of the codec is a new key
PIXELS_VERSION = 2      # 2: PALETTE COLOR served as RGB


# ------------------------------------------------------------------ visibility

async def visible(request: web.Request, level: Level, public_id: str) -> Resource:
    """The resource (NotFound when unknown). Whether a student may see it was checked before the
    handler, by the access middleware (visibility._named understands /pipacs/{level}/{id}/...)."""
    return await request.app[ARCHIVE].get(level, public_id)


async def series_instances(archive: Archive, series: Resource, student: bool) -> list[Resource]:
    instances = await archive.instances_below(series)
    if student:
        instances = await archive.only_visible_to_students(instances)
    return instances


def _etag(key: str) -> str:
    return '"' + hashlib.sha1(key.encode()).hexdigest()[:20] + '"'


def _representation_etag(etag: str, deflated: bool) -> str:
    """RFC 9110: the deflated and the identity bodies are two representations, two validators."""
    return etag[:-1] + '-d"' if deflated else etag


def _not_modified(request: web.Request, etag: str) -> bool:
    inm = request.headers.get("If-None-Match", "")
    tags = [t.strip().removeprefix("W/") for t in inm.split(",")]
    return etag in tags or inm.strip() == "*"


def _not_modified_response(request: web.Request, etag: str, headers: dict[str, str], deflatable: bool
                           ) -> web.Response | None:
    """A 304 when the client holds this representation (the ETag it would get now)."""
    tag = _representation_etag(etag, deflatable and _accepts_deflate(request))
    if not _not_modified(request, tag):
        return None
    return web.Response(status=304, headers={**headers, "ETag": tag, "Vary": "Accept-Encoding"})


# ------------------------------------------------------------------ the stack document

async def stack_document(archive: Archive, series: Resource, instances: list[Resource], revision: str) -> bytes:
    """The stack document as deflated JSON (what the cache keeps: a 100-slice CT's 71 kB are 2.3 kB on
    a classroom's shared air, before the first image). Each Pixels URL carries its file's UUID."""
    headers = await archive.read_headers(instances)
    files = await archive.index.files([r.id for r in instances])
    versions = {r.public_id: files[r.id][0] for r in instances if r.id in files}
    doc = await asyncio.to_thread(build_stack, headers, versions)
    study = await archive.index.resource_by_id(series.parent_id) if series.parent_id is not None else None
    patient = await archive.index.resource_by_id(study.parent_id) \
        if study is not None and study.parent_id is not None else None
    head = {"Series": series.public_id, "Study": study.public_id if study else None,
            "Patient": patient.public_id if patient else None, "Revision": revision}
    return await asyncio.to_thread(lambda: zlib.compress(json.dumps({**head, **doc}, ensure_ascii=False).encode(), 6))


def stack_key(series: Resource, revision: str) -> str:
    return f"stack/{STACK_VERSION}/{series.public_id}/{revision}"


@routes.get("/pipacs/series/{id}/stack")
async def series_stack(request: web.Request) -> web.StreamResponse:
    archive: Archive = request.app[ARCHIVE]
    series = await visible(request, Level.SERIES, request.match_info["id"])
    instances = await series_instances(archive, series, is_student(request))
    revision = await archive.content_revision(instances)
    key = stack_key(series, revision)
    held = await holdback.resource_held(request, series)
    etag = _etag(f"held-back/{holdback.TAGS_VERSION}/{key}" if held else key)   # two documents, two validators
    headers = {"Cache-Control": "private, no-cache"}
    not_modified = _not_modified_response(request, etag, headers, deflatable=True)
    if not_modified is not None:
        return not_modified
    cache = request.app[CLASS_CACHE]
    owners = await archive.content_files(instances)

    def full() -> Awaitable[bytes]:
        return cache.get_or_make(key, lambda: stack_document(archive, series, instances, revision), owners=owners)
    # a student's while the series is an unknown case: a redacted copy (the full one stays cached as it is)
    body = await (holdback.redacted_cached(request, key, full, holdback.redact_stack_body, owners) if held
                  else full())
    return deflated_response(request, body, "application/json", headers, etag)


# ------------------------------------------------------------------ frame pixels

def _frame_number(request: web.Request) -> int:
    n = request.match_info["frame"]
    if not (n.isascii() and n.isdigit()) or len(n) > 9:
        raise web.HTTPBadRequest(text=f"frame number {n!r} is not a whole number")
    return int(n)


def pixels_key(file_uuid: str, frame: int) -> str:
    return f"pixels/{PIXELS_VERSION}/{file_uuid}/{frame}"


NUMBER_OF_FRAMES = tag_key(0x00280008)      # the index's key of the instance's NumberOfFrames


def version_of(file_uuid: str) -> str:
    """What a Pixels URL's ``v`` is for this file (see imaging.stack.pixels_url)."""
    return file_uuid.replace("-", "")[:VERSION_CHARS]


async def _file_of(archive: Archive, instance: Resource) -> tuple[str, int]:
    """(file UUID, number of frames) of an instance, from the index: no file is read."""
    f = (await archive.index.files([instance.id])).get(instance.id)
    if f is None:
        raise NotFound(f"no file for instance {instance.public_id}")
    tags = (await archive.index.main_tags([instance.id])).get(instance.id, {})
    try:
        frames = max(1, int(str(tags.get(NUMBER_OF_FRAMES) or 1).strip() or 1))
    except ValueError:
        frames = 1
    return f[0], frames


def _check_frame(instance: Resource, frame: int, frames: int) -> None:
    if frame >= frames:
        raise FrameNotFound(f"frame {frame} does not exist: instance {instance.public_id} has {frames} frame(s), "
                            "numbered from 0")


def _make_pixels(app: web.Application, instance: Resource, frame: int,
                 file_uuid: str) -> Callable[[], Awaitable[bytes]]:
    archive: Archive = app[ARCHIVE]

    async def make() -> bytes:
        failed = archive.frame_failed(file_uuid, frame)     # N5: a damaged frame is not read again soon
        if failed is not None:
            raise DecodeError(failed)
        try:
            ds, index = await archive.read_frame(instance, frame)     # only that frame is read (by offset)
            return await asyncio.to_thread(framecodec.frame_body, ds, index)
        except (NotFound, FrameNotFound):
            raise
        except OSError:     # N9: the storage failed (EIO): a clear error, not a 500
            raise StoredFileIOError(instance.public_id) from None
        except DecodeError as e:
            archive.remember_failure(file_uuid, frame, str(e))
            raise
        except Exception:  # noqa: BLE001 - a damaged stored file: a reason, not the parser's words
            reason = f"the stored file of instance {instance.public_id} cannot be read as DICOM"
            archive.remember_failure(file_uuid, frame, reason)
            raise DecodeError(reason) from None
    return make


def _accepts_deflate(request: web.Request) -> bool:
    for part in request.headers.get("Accept-Encoding", "").lower().split(","):
        coding, *params = [p.strip() for p in part.split(";")]
        if coding not in ("deflate", "*"):
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False


def deflated_response(request: web.Request, body: bytes, content_type: str, headers: dict[str, str],
                      etag: str) -> web.Response:
    """A zlib body as the client takes it: as it is with Content-Encoding: deflate (every browser), or
    inflated for a client that does not accept deflate; each with its own ETag."""
    headers = {**headers, "Vary": "Accept-Encoding"}
    if _accepts_deflate(request):
        headers["Content-Encoding"] = "deflate"
        headers["ETag"] = _representation_etag(etag, True)
    else:
        body = zlib.decompress(body)
        headers["ETag"] = etag
    return web.Response(body=body, content_type=content_type, headers=headers)


def pixels_response(request: web.Request, cached: bytes, headers: dict[str, str], etag: str) -> web.Response:
    """A cached frame body: PXF1 (deflated) or a stored JPEG, sent as it is."""
    kind, body = cached[:1], cached[1:]
    if kind == framecodec.KIND_PXF:
        return deflated_response(request, body, framecodec.CONTENT_TYPE[kind], headers, etag)
    return web.Response(body=body, content_type=framecodec.CONTENT_TYPE[kind],
                        headers={**headers, "ETag": etag, "Vary": "Accept-Encoding"})


IMMUTABLE = "private, max-age=31536000, immutable"


@routes.get("/pipacs/instances/{id}/frames/{frame}/pixels")
async def frame_pixels(request: web.Request) -> web.StreamResponse:
    archive: Archive = request.app[ARCHIVE]
    instance = await visible(request, Level.INSTANCE, request.match_info["id"])
    await holdback.refuse_mask(request, instance)  # before any cache look-up: the mask shows where to tap
    frame = _frame_number(request)
    file_uuid, frames = await _file_of(archive, instance)
    _check_frame(instance, frame, frames)          # before make: a frame past the end reads no file
    key = pixels_key(file_uuid, frame)
    etag = _etag(key)
    # the URL names this content (its v): the browser keeps it for good; any other URL is revalidated
    current = request.query.get("v") == version_of(file_uuid)
    headers = {"Cache-Control": IMMUTABLE if current else "private, no-cache"}
    # a stored JPEG goes out as it is whatever the client takes; its ETag is the identity one
    not_modified = _not_modified_response(request, etag, headers, deflatable=True) \
        or _not_modified_response(request, etag, headers, deflatable=False)
    if not_modified is not None:
        return not_modified
    cached = await request.app[CLASS_CACHE].get_or_make(key, _make_pixels(request.app, instance, frame, file_uuid),
                                                         owners=(file_uuid,))
    return pixels_response(request, cached, headers, etag)


# ------------------------------------------------------------------ before class

async def warm_series(app: web.Application, series: Resource,
                      on_frame: Callable[[int], None] | None = None) -> int:
    """The stack document and every frame's pixels of a series made into the class cache exactly
    as the routes make them (the teacher's view: every instance); the bytes they take.
    ``on_frame(bytes)`` is called once per frame made or found in the cache (the job's progress).
    The series' thumbnail (``/instances/{id}/preview`` of its middle instance) is made too."""
    archive: Archive = app[ARCHIVE]
    cache = app[CLASS_CACHE]
    instances = await series_instances(archive, series, student=False)
    revision = await archive.content_revision(instances)
    doc = await cache.get_or_make(stack_key(series, revision),
                                  lambda: stack_document(archive, series, instances, revision),
                                  owners=await archive.content_files(instances))
    total = len(doc)
    by_id = {r.public_id: r for r in instances}
    for fr in json.loads(await asyncio.to_thread(zlib.decompress, doc))["Frames"]:
        instance = by_id.get(fr["Instance"])
        if instance is None:
            continue
        try:
            file_uuid, frames = await _file_of(archive, instance)
            _check_frame(instance, fr["Frame"], frames)
            made = len(await cache.get_or_make(pixels_key(file_uuid, fr["Frame"]),
                                               _make_pixels(app, instance, fr["Frame"], file_uuid),
                                               owners=(file_uuid,)))
        except (framecodec.DecodeError, LookupError, OSError, StoredFileIOError):
            made = 0      # a frame that cannot be decoded is said so when asked for; others go on
        total += made
        if on_frame is not None:
            on_frame(made)
    if instances:       # the series switcher's thumbnail: the middle instance's /preview, as viewer.js asks
        middle = instances[len(instances) // 2]
        try:
            file_uuid, _ = await _file_of(archive, middle)
            total += await warm_preview(app, middle, file_uuid)
        except (framecodec.DecodeError, LookupError, OSError):
            pass          # no thumbnail: the switcher shows the series without one
    return total


__all__ = ["routes", "warm_series", "visible", "stack_key", "pixels_key", "version_of", "IMMUTABLE"]
