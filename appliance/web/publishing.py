"""The teacher's switches for the class: a study's release and labels published as collections
(what students see), and the DICOM upload window (who may send). pipacs routes: Orthanc has
no equivalent."""

from __future__ import annotations

import json

from aiohttp import web

from ..archive import Archive, Level
from ..dicom.policy import UPLOAD_WINDOW_MAX_MINUTES
from .casework import label_param
from .keys import ARCHIVE, UPLOAD_WINDOW
from .resources import json_response

routes = web.RouteTableDef()



async def _flag(request: web.Request) -> bool:
    """A PUT body of 1 or 0 (as /patients/{id}/protected), or true/false; empty is 0."""
    text = (await request.content.read(16)).decode("utf-8", "replace").strip().lower()
    if text in ("1", "true"):
        return True
    if text in ("0", "false", ""):
        return False
    raise web.HTTPBadRequest(text="the body must be 1 (released) or 0 (not released)")


@routes.get("/studies/{id}/released")
async def get_released(request: web.Request) -> web.Response:
    archive: Archive = request.app[ARCHIVE]
    res = await archive.get(Level.STUDY, request.match_info["id"])
    visible = await archive.visible_to_students(res)
    released = await archive.is_released(res)
    return web.Response(text="1" if released else "0", headers={"X-Pipacs-Visible-To-Students": str(int(visible))})


@routes.put("/studies/{id}/released")
async def put_released(request: web.Request) -> web.Response:
    """Release a study to students (shown once every instance in it is de-identified), or stop."""
    archive: Archive = request.app[ARCHIVE]
    res = await archive.get(Level.STUDY, request.match_info["id"])
    await archive.release_study(res.public_id, await _flag(request))
    return web.Response(text="")


@routes.get("/pipacs/published-labels")
async def published_labels(request: web.Request) -> web.Response:
    return json_response(await request.app[ARCHIVE].student_labels())


@routes.put("/pipacs/published-labels/{label}")
async def publish_label(request: web.Request) -> web.Response:
    await request.app[ARCHIVE].publish_label(label_param(request), True)
    return web.Response(text="")


@routes.delete("/pipacs/published-labels/{label}")
async def unpublish_label(request: web.Request) -> web.Response:
    await request.app[ARCHIVE].publish_label(label_param(request), False)
    return web.Response(text="")


def _window_json(request: web.Request) -> web.Response:
    left = request.app[UPLOAD_WINDOW].remaining()
    return json_response({"Open": left > 0, "SecondsLeft": int(left + 0.999)})


@routes.get("/pipacs/upload-window")
async def get_upload_window(request: web.Request) -> web.Response:
    return _window_json(request)


@routes.put("/pipacs/upload-window")
async def open_upload_window(request: web.Request) -> web.Response:
    """Accept DICOM uploads from any device for ``{"Minutes": N}`` (1 to 240)."""
    expected = f'expected {{"Minutes": 1 to {UPLOAD_WINDOW_MAX_MINUTES}}}'
    try:
        body = json.loads((await request.content.read(256)).decode("utf-8") or "{}")
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text=expected) from None
    minutes = body.get("Minutes", 15) if isinstance(body, dict) else None
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)):
        raise web.HTTPBadRequest(text=f"{expected}: Minutes must be a number")
    try:
        request.app[UPLOAD_WINDOW].open(float(minutes))
    except ValueError as e:
        raise web.HTTPBadRequest(text=str(e)) from None
    return _window_json(request)


@routes.delete("/pipacs/upload-window")
async def close_upload_window(request: web.Request) -> web.Response:
    request.app[UPLOAD_WINDOW].close()
    return _window_json(request)
