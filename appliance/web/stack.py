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
from pathlib import Path

import pydicom
from aiohttp import web
from pydicom.dataset import Dataset

from ..archive import Archive, Level, NotFound, Resource
from ..imaging import framecodec
from ..imaging.render import load
from ..imaging.stack import build_stack
from .access import is_student
from .classcache import CLASS_CACHE
from .keys import ARCHIVE

routes = web.RouteTableDef()

STACK_VERSION = 1      # in the cache keys: a change of the document's shape or of the codec is a new key
PIXELS_VERSION = 1


# ------------------------------------------------------------------ visibility

async def visible(request: web.Request, level: Level, public_id: str) -> Resource:
    """The resource, when the caller may see it; the 404 of an unknown one otherwise. The access
    middleware checks /{level}/{id} routes; these /pipacs/ routes check here."""
    archive: Archive = request.app[ARCHIVE]
    if is_student(request) and not await archive.student_may_see(level, public_id):
        raise NotFound(f"no {level.title.lower()} {public_id}")
    return await archive.get(level, public_id)


async def series_instances(archive: Archive, series: Resource, student: bool) -> list[Resource]:
    instances = await archive.instances_below(series)
    if student:
        instances = await archive.only_visible_to_students(instances)
    return instances


def _etag(key: str) -> str:
    return '"' + hashlib.sha1(key.encode()).hexdigest()[:20] + '"'


def _not_modified(request: web.Request, etag: str) -> bool:
    inm = request.headers.get("If-None-Match", "")
    return etag in [t.strip() for t in inm.split(",")] or inm.strip() == "*"


# ------------------------------------------------------------------ the stack document

def _read_headers(paths: list[tuple[str, Path | None]]) -> list[tuple[str, Dataset]]:
    """Each instance's header without its pixel data (blocking: run in a thread). A file that
    cannot be read counts as an instance without an image."""
    out = []
    for public_id, path in paths:
        try:
            if path is None:
                raise FileNotFoundError(public_id)
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - an unreadable file is listed as not an image
            ds = Dataset()
        out.append((public_id, ds))
    return out


async def stack_document(archive: Archive, series: Resource, instances: list[Resource], revision: str) -> bytes:
    """The stack document as deflated JSON (what the cache keeps: a 100-slice CT's 71 kB are 2.3 kB on
    a classroom's shared air, before the first image)."""
    files = await archive.index.files([r.id for r in instances])
    paths = [(r.public_id, archive.stored_path(files[r.id][0]) if r.id in files else None) for r in instances]
    headers = await asyncio.to_thread(_read_headers, paths)
    doc = await asyncio.to_thread(build_stack, headers)
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
    etag = _etag(key)
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if _not_modified(request, etag):
        return web.Response(status=304, headers=headers)
    body = await request.app[CLASS_CACHE].get_or_make(
        key, lambda: stack_document(archive, series, instances, revision),
        owners=await archive.content_files(instances))
    return deflated_response(request, body, "application/json", headers)


# ------------------------------------------------------------------ frame pixels

def _frame_number(request: web.Request) -> int:
    n = request.match_info["frame"]
    if not (n.isascii() and n.isdigit()) or len(n) > 9:
        raise web.HTTPBadRequest(text=f"frame number {n!r} is not a whole number")
    return int(n)


def pixels_key(file_uuid: str, frame: int) -> str:
    return f"pixels/{PIXELS_VERSION}/{file_uuid}/{frame}"


async def _file_of(archive: Archive, instance: Resource) -> tuple[str, int]:
    """(file UUID, size) of an instance's file."""
    f = (await archive.index.files([instance.id])).get(instance.id)
    if f is None:
        raise NotFound(f"no file for instance {instance.public_id}")
    return f[0], f[1]


OPEN_MIN_BYTES = 4 * 2**20      # a file this big or bigger is read once for all its frames (below) ...
OPEN_MAX_BYTES = 256 * 2**20    # ... up to this size, and no more than the class cache's memory budget
OPEN_IDLE_SECONDS = 60          # let go of it after this long unused


def _loaded(data: bytes) -> Dataset:
    ds = load(data)
    for _ in ds:        # every top-level element parsed now: worker threads then only read the dataset
        pass
    return ds


class OpenInstance:
    """The big instance a class is going through (an enhanced CT, a cine), read and parsed once for
    all its frames instead of once per frame: 300 frames of a 150 MB file would otherwise read 45 GB
    from the card. One at a time; a request for another replaces it; dropped after a minute unused."""

    def __init__(self) -> None:
        self.file_uuid: str | None = None
        self.task: asyncio.Future | None = None
        self.timer: asyncio.TimerHandle | None = None

    def forget(self) -> None:
        self.file_uuid, self.task = None, None

    async def dataset(self, archive: Archive, instance: Resource, file_uuid: str) -> Dataset:
        if self.file_uuid != file_uuid or self.task is None:
            self.file_uuid = file_uuid
            self.task = asyncio.ensure_future(self._read(archive, instance))
        task = self.task
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(OPEN_IDLE_SECONDS, self.forget)
        try:
            return await asyncio.shield(task)
        except Exception:
            if self.task is task:
                self.forget()
            raise

    @staticmethod
    async def _read(archive: Archive, instance: Resource) -> Dataset:
        return await asyncio.to_thread(_loaded, await archive.read_file(instance))


OPEN_INSTANCE = web.AppKey("open_instance", OpenInstance)


def _make_pixels(app: web.Application, instance: Resource, file: tuple[str, int],
                 frame: int) -> Callable[[], Awaitable[bytes]]:
    archive: Archive = app[ARCHIVE]
    limit = min(OPEN_MAX_BYTES, app[CLASS_CACHE].memory_budget)

    async def make() -> bytes:
        if OPEN_MIN_BYTES <= file[1] <= limit and OPEN_INSTANCE in app:
            ds = await app[OPEN_INSTANCE].dataset(archive, instance, file[0])
            return await asyncio.to_thread(framecodec.frame_body, ds, frame)
        data = await archive.read_file(instance)
        return await asyncio.to_thread(framecodec.stored_frame_body, data, frame)
    return make


def _accepts_deflate(request: web.Request) -> bool:
    for part in request.headers.get("Accept-Encoding", "").lower().split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip() in ("deflate", "*") and params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00"):
            return True
    return False


def deflated_response(request: web.Request, body: bytes, content_type: str, headers: dict[str, str]
                      ) -> web.Response:
    """A zlib body as the client takes it: as it is with Content-Encoding: deflate (every browser), or
    inflated for a client that does not accept deflate."""
    headers = {**headers, "Vary": "Accept-Encoding"}
    if _accepts_deflate(request):
        headers["Content-Encoding"] = "deflate"
    else:
        body = zlib.decompress(body)
    return web.Response(body=body, content_type=content_type, headers=headers)


def pixels_response(request: web.Request, cached: bytes, headers: dict[str, str]) -> web.Response:
    """A cached frame body: PXF1 (deflated) or a stored JPEG, sent as it is."""
    kind, body = cached[:1], cached[1:]
    if kind == framecodec.KIND_PXF:
        return deflated_response(request, body, framecodec.CONTENT_TYPE[kind], headers)
    return web.Response(body=body, content_type=framecodec.CONTENT_TYPE[kind],
                        headers={**headers, "Vary": "Accept-Encoding"})


@routes.get("/pipacs/instances/{id}/frames/{frame}/pixels")
async def frame_pixels(request: web.Request) -> web.StreamResponse:
    archive: Archive = request.app[ARCHIVE]
    instance = await visible(request, Level.INSTANCE, request.match_info["id"])
    frame = _frame_number(request)
    file = await _file_of(archive, instance)
    key = pixels_key(file[0], frame)
    etag = _etag(key)
    headers = {"ETag": etag, "Cache-Control": "private, max-age=3600"}
    if _not_modified(request, etag):
        return web.Response(status=304, headers=headers)
    cached = await request.app[CLASS_CACHE].get_or_make(key, _make_pixels(request.app, instance, file, frame),
                                                         owners=(file[0],))
    return pixels_response(request, cached, headers)


# ------------------------------------------------------------------ before class

async def warm_series(app: web.Application, series: Resource) -> int:
    """The stack document and every frame's pixels of a series made into the class cache exactly
    as the routes make them (the teacher's view: every instance); the bytes they take."""
    archive: Archive = app[ARCHIVE]
    cache = app[CLASS_CACHE]
    instances = await series_instances(archive, series, student=False)
    revision = await archive.content_revision(instances)
    doc = await cache.get_or_make(stack_key(series, revision),
                                  lambda: stack_document(archive, series, instances, revision),
                                  owners=await archive.content_files(instances))
    total = len(doc)
    by_id = {r.public_id: r for r in instances}
    for fr in json.loads(zlib.decompress(doc))["Frames"]:
        instance = by_id.get(fr["Instance"])
        if instance is None:
            continue
        file = await _file_of(archive, instance)
        try:
            total += len(await cache.get_or_make(pixels_key(file[0], fr["Frame"]),
                                                 _make_pixels(app, instance, file, fr["Frame"]),
                                                 owners=(file[0],)))
        except (framecodec.DecodeError, LookupError):
            continue      # a frame that cannot be decoded is said so when asked for; others go on
    return total


__all__ = ["routes", "warm_series", "visible", "stack_key", "pixels_key", "OpenInstance", "OPEN_INSTANCE"]
