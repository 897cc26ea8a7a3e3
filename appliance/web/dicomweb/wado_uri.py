"""WADO-URI (PS3.18 chapter 9) at /wado, as the iPad viewers that do not speak C-MOVE use it."""

from __future__ import annotations

import asyncio
import math

from aiohttp import web

from ...archive import Archive, Level, NotFound
from ...imaging.render import RenderRequest, encode_image, load, render
from ...imaging.transcode import transcode
from .. import holdback
from ..access import is_student
from ..filesend import instance_file_response
from ..images import Target, cached_answer
from ..keys import ARCHIVE
from .resolve import resolve

routes = web.RouteTableDef()


@routes.get("/wado")
async def wado_uri(request: web.Request) -> web.StreamResponse:
    """WADO-URI (PS3.18 chapter 9), as the iPad viewers that do not speak C-MOVE use it."""
    q = request.query
    if q.get("requestType", "").upper() != "WADO":
        raise web.HTTPBadRequest(text="requestType=WADO is required")
    # objectUID alone names the instance (Orthanc's plugin takes it so); studyUID and seriesUID,
    # which PS3.18 9.1.2.1 requires, narrow the search when given
    if not q.get("objectUID"):
        raise web.HTTPBadRequest(text="objectUID is required")
    if q.get("anonymize", "").lower() == "yes":
        raise web.HTTPBadRequest(text="anonymize=yes is not offered over WADO; anonymize the study on the "
                                      "appliance (it keeps teaching files anonymized) and retrieve it")
    archive: Archive = request.app[ARCHIVE]
    try:
        res = (await resolve(archive, q.get("studyUID") or None, q.get("seriesUID") or None, q["objectUID"],
                             students=is_student(request)))[0]
    except NotFound as e:   # Orthanc's WADO-URI: an unknown resource (17), where its WADO-RS says 7
        raise NotFound(str(e)) from None
    content_types = [c.strip().split(";")[0] for c in q.get("contentType", "image/jpeg").split(",")]
    content_type = next((c for c in content_types if c in ("application/dicom", "image/jpeg", "image/png")), None)
    if content_type is None:
        # 400, as Orthanc's plugin answers a contentType it cannot make
        raise web.HTTPBadRequest(text="contentType must be application/dicom, image/jpeg or image/png")
    if content_type == "application/dicom":
        await holdback.refuse_retrieve(request, Level.INSTANCE, res.public_id)
        ts = q.get("transferSyntax")
        # a viewer asking for the syntax the file is already in (iPads ask for explicit little
        # endian by habit) gets the stored file as it is, without parsing it to find that out
        if not ts or ts == (await archive.index.metadata(res.id)).get("TransferSyntax"):
            return await instance_file_response(request, archive, res.public_id)
        data = await asyncio.to_thread(transcode, await archive.read_file(res), ts)
        return web.Response(body=data, content_type="application/dicom",
                            headers={"Content-Disposition": f'attachment; filename="{res.public_id}.dcm"'})
    await holdback.refuse_mask(request, res)       # a rendered mask shows where the answer is
    f = (await archive.index.files([res.id]))[res.id]
    t = Target(archive, res, f[0])
    number = q.get("frameNumber", "1") or "1"
    if not (number.isascii() and number.isdigit()) or int(number) < 1:
        raise web.HTTPBadRequest(text=f"frameNumber is a whole number from 1, not {number!r}")
    frame = int(number) - 1
    req = RenderRequest(frame=frame, mode="rendered")
    try:
        if q.get("windowCenter") and q.get("windowWidth"):
            req.center, req.width = float(q["windowCenter"]), float(q["windowWidth"])
        if q.get("columns"):
            req.out_width = max(1, int(q["columns"]))
        if q.get("rows"):
            req.out_height = max(1, int(q["rows"]))
    except ValueError:
        raise web.HTTPBadRequest(text="windowCenter, windowWidth, rows and columns must be numbers") from None
    if req.center is not None and not (math.isfinite(req.center) and math.isfinite(req.width or 0.0)):
        raise web.HTTPBadRequest(text="windowCenter and windowWidth must be finite numbers")
    fmt = "png" if content_type == "image/png" else "jpeg"
    key = ("wado", frame, req.center, req.width, req.out_width, req.out_height, fmt)
    return await cached_answer(request, t, key, lambda data: encode_image(render(load(data), req), fmt),
                               content_type)
