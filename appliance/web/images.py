"""Orthanc-compatible image routes: /preview, /rendered, /image-uint8, /image-uint16, /frames, /raw, /numpy.

Decoding and rendering run in worker threads. Answers carry an ETag (they change only
if the instance is overwritten) and go through the class cache's ``render`` pool (memory only, its own
RenderCacheSize budget): thirty students opening the viewer's series switcher at once cost one decode
per preview (coalesced), at most ``workers`` decodes run at once, and a slide shown a second time
costs nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
from dataclasses import dataclass

import numpy as np
from aiohttp import web

from ..archive import Archive, Level, NotFound, Resource
from ..imaging.render import (
    DecodeError,
    FrameNotFound,
    RenderRequest,
    encode_image,
    frame_array,
    frame_bytes,
    integer_image,
    load,
    number_of_frames,
    render,
)
from . import holdback
from .classcache import CLASS_CACHE
from .keys import ARCHIVE
from .resources import json_response

routes = web.RouteTableDef()


@dataclass
class Target:
    archive: Archive
    instance: Resource
    file_uuid: str


async def _target(request: web.Request) -> Target:
    archive = request.app[ARCHIVE]
    res = await archive.get(Level.INSTANCE, request.match_info["id"])
    f = (await archive.index.files([res.id])).get(res.id)
    if f is None:
        raise NotFound(f"no file for instance {res.public_id}")
    await holdback.refuse_mask(request, res)       # a segmentation's frames show where the answer is
    return Target(archive, res, f[0])


def _frame(request: web.Request) -> int:
    n = request.match_info.get("frame", "0")
    if not (n.isascii() and n.isdigit()):
        raise web.HTTPBadRequest(text=f"frame number {n!r} is not a whole number")
    return int(n)


def _float(request: web.Request, *names: str) -> float | None:
    for name in names:
        v = request.query.get(name)
        if v not in (None, ""):
            try:
                x = float(v)
            except ValueError:
                raise web.HTTPBadRequest(text=f"{name} must be a number, not {v!r}") from None
            if not math.isfinite(x):
                raise web.HTTPBadRequest(text=f"{name} must be a finite number, not {v!r}")
            return x
    return None


def _quality(request: web.Request) -> int:
    """JPEG quality, 1 to 100 (Orthanc's range); 90 when not given."""
    q = _float(request, "quality")
    if q is None:
        return 90
    if not 1 <= q <= 100:
        raise web.HTTPBadRequest(text=f"quality must be between 1 and 100, not {request.query['quality']!r}")
    return int(q)


def _size(request: web.Request, *names: str) -> int | None:
    v = _float(request, *names)
    if v is None:
        return None
    if v < 1:
        raise web.HTTPBadRequest(text=f"{names[0]} must be at least 1")
    return int(v)


def _smooth(request: web.Request) -> bool:
    """``smooth``: 1/true or 0/false, as Orthanc parses it (lower case); smooth when not given. Any
    other value, a bare ``smooth`` included, is a 400 (Orthanc answers an empty 415)."""
    v = request.query.get("smooth")
    if v is None or v in ("1", "true"):
        return True
    if v in ("0", "false"):
        return False
    raise web.HTTPBadRequest(text=f"smooth must be 0, 1, true or false, not {v!r}")


def wants_jpeg(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "image/jpeg" in accept and "image/png" not in accept.split("image/jpeg")[0]


async def cached_answer(request: web.Request, t: Target, key_parts: tuple, produce, content_type: str
                        ) -> web.StreamResponse:
    """Serve from the class cache's render pool or produce (off the loop, coalesced), with ETag and 304
    on revalidation. ``key_parts`` name every parameter of the answer (the content type follows from them)."""
    key = hashlib.sha1(repr((t.file_uuid,) + key_parts).encode()).hexdigest()
    etag = f'"{key[:20]}"'
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}  # an overwrite is seen; the ETag makes it a 304
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    body = await _rendered(request.app, t, key, produce)
    return web.Response(body=body, content_type=content_type, headers=headers)


async def _rendered(app: web.Application, t: Target, key: str, produce) -> bytes:
    async def make() -> bytes:
        data = await t.archive.read_file(t.instance)
        return await asyncio.to_thread(produce, data)
    return await app[CLASS_CACHE].get_or_make(f"render/{key}", make, owners=(t.file_uuid,), pool="render")


# what a browser's <img src=/instances/{id}/preview> asks for (no Accept: image/jpeg, no parameters)
PREVIEW_KEY = ("preview", 0, None, None, None, None, True, "png", 90)


async def warm_preview(app: web.Application, instance: Resource, file_uuid: str) -> int:
    """/instances/{id}/preview as the viewer's series switcher gets it, made into the render pool
    (prepare for class): the bytes it takes. The key is the route's own (``cached_answer``)."""
    t = Target(app[ARCHIVE], instance, file_uuid)
    key = hashlib.sha1(repr((file_uuid,) + PREVIEW_KEY).encode()).hexdigest()
    req = RenderRequest(frame=0, mode="preview", center=None, width=None, out_width=None, out_height=None,
                        smooth=True)
    return len(await _rendered(app, t, key, lambda data: encode_image(render(load(data), req), "png", 90)))


def _render_route(mode: str):
    async def handler(request: web.Request) -> web.StreamResponse:
        t = await _target(request)
        req = RenderRequest(frame=_frame(request), mode=mode,
                            center=_float(request, "window-center", "windowCenter"),
                            width=_float(request, "window-width", "windowWidth"),
                            out_width=_size(request, "width", "columns"), out_height=_size(request, "height", "rows"),
                            smooth=_smooth(request))
        quality = _quality(request)
        fmt = "jpeg" if wants_jpeg(request) else "png"
        key = (mode, req.frame, req.center, req.width, req.out_width, req.out_height, req.smooth, fmt, quality)
        # (PREVIEW_KEY below is this key for a bare /preview: warm_preview makes the same answer)
        return await cached_answer(request, t, key, lambda data: encode_image(render(load(data), req), fmt, quality),
                                   f"image/{fmt}")
    return handler


for mode in ("preview", "rendered"):
    routes.get(f"/instances/{{id}}/{mode}")(_render_route(mode))
    routes.get(f"/instances/{{id}}/frames/{{frame}}/{mode}")(_render_route(mode))

# what Orthanc 1.10 answers to a bare frame: the routes below it (those pipacs offers)
FRAME_ROUTES = ["image-uint16", "image-uint8", "numpy", "preview", "raw", "rendered"]


@routes.get("/instances/{id}/frames/{frame}")
async def frame_routes(request: web.Request) -> web.Response:
    """The routes below a frame, whatever its number (as Orthanc: a listing, not a check of the frame)."""
    await request.app[ARCHIVE].get(Level.INSTANCE, request.match_info["id"])
    return json_response(FRAME_ROUTES)


def _uint_route(bits: int):
    async def handler(request: web.Request) -> web.StreamResponse:
        t = await _target(request)
        frame = _frame(request)
        fmt = "jpeg" if bits == 8 and wants_jpeg(request) else "png"
        return await cached_answer(request, t, (f"uint{bits}", frame, fmt),
                                   lambda data: encode_image(integer_image(load(data), frame, bits), fmt),
                                   f"image/{fmt}")
    return handler


for bits in (8, 16):
    routes.get(f"/instances/{{id}}/image-uint{bits}")(_uint_route(bits))
    routes.get(f"/instances/{{id}}/frames/{{frame}}/image-uint{bits}")(_uint_route(bits))


@routes.get("/instances/{id}/frames")
async def list_frames(request: web.Request) -> web.Response:
    t = await _target(request)
    data = await t.archive.read_file(t.instance)
    n = await asyncio.to_thread(lambda: number_of_frames(load(data)))
    return json_response(list(range(n)))   # numbers, as Orthanc lists them


@routes.get("/instances/{id}/frames/{frame}/raw")
async def raw_frame(request: web.Request) -> web.StreamResponse:
    t = await _target(request)
    frame = _frame(request)
    return await cached_answer(request, t, ("raw", frame), lambda data: frame_bytes(load(data), frame),
                               "application/octet-stream")


def _npy(data: bytes, frame: int | None) -> bytes:
    ds = load(data)
    frames = [frame] if frame is not None else range(number_of_frames(ds))
    arr = np.stack([frame_array(ds, f) for f in frames])
    if arr.ndim == 3:
        arr = arr[..., np.newaxis]  # Orthanc's layout: frames, rows, columns, channels
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@routes.get("/instances/{id}/numpy")
async def numpy_instance(request: web.Request) -> web.StreamResponse:
    t = await _target(request)
    return await cached_answer(request, t, ("npy",), lambda data: _npy(data, None), "application/octet-stream")


@routes.get("/instances/{id}/frames/{frame}/numpy")
async def numpy_frame(request: web.Request) -> web.StreamResponse:
    t = await _target(request)
    frame = _frame(request)
    return await cached_answer(request, t, ("npy", frame), lambda data: _npy(data, frame), "application/octet-stream")


__all__ = ["warm_preview", "PREVIEW_KEY", "routes", "DecodeError", "FrameNotFound", "cached_answer", "wants_jpeg"]
