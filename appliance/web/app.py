"""The aiohttp application: middlewares for access and errors, then one route table per domain."""

from __future__ import annotations

import base64
import functools
import hmac
import ipaddress
import json
import logging
from typing import Any

from aiohttp import web

from ..archive import (
    Archive,
    FindError,
    InvalidDicom,
    NotFound,
    StorageFull,
    StoreRefused,
)
from ..config import Settings
from ..imaging.render import DecodeError, FrameNotFound
from ..imaging.transcode import UnsupportedTranscode
from ..teaching.anonymize import AnonymizationError
from .keys import ARCHIVE, SETTINGS, STARTED

log = logging.getLogger("pipacs.http")

_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 413: "Request Entity Too Large", 415: "Unsupported Media Type",
            500: "Internal Server Error", 507: "Insufficient Storage"}


def error_response(request: web.Request, status: int, message: str, details: str = "") -> web.Response:
    """Errors in Orthanc's JSON shape, always with a message a person can act on."""
    body: dict[str, Any] = {"HttpError": _REASONS.get(status, "Error"), "HttpStatus": status,
                            "Message": message, "Method": request.method, "Uri": request.path}
    if details:
        body["Details"] = details
    return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, indent=3))


@functools.lru_cache(maxsize=256)   # asked on every request, of the same few addresses
def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return True  # a Unix socket or a test transport
    try:
        return ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False


@web.middleware
async def access_middleware(request: web.Request, handler):
    s: Settings = request.app[SETTINGS]
    if not s["RemoteAccessAllowed"] and not _is_loopback(request.remote):
        return error_response(request, 403, "remote access is disabled on this appliance; set RemoteAccessAllowed "
                                            "to true in its configuration")
    if s["AuthenticationEnabled"]:
        user = _check_basic(request.headers.get("Authorization", ""), s["RegisteredUsers"])
        if user is None:
            resp = error_response(request, 401, "authentication required")
            resp.headers["WWW-Authenticate"] = 'Basic realm="pipacs"'
            return resp
        request["user"] = user
    return await handler(request)


def _check_basic(header: str, users: dict[str, str]) -> str | None:
    if not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    expected = users.get(user)
    if expected is not None and hmac.compare_digest(expected.encode(), password.encode()):
        return user
    return None


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except Exception as e:
        if isinstance(e, web.HTTPException) and e.status < 400:
            raise
        if request.writer is not None and request.writer.output_size > 0:
            return _cut_short(request, e)
        return _error_answer(request, e)


def _known_error(e: Exception) -> tuple[int, str] | None:
    """The status and message of an error a person can act on; None for a fault of ours."""
    if isinstance(e, web.HTTPException):
        return e.status, (e.text if e.text and not e.text.startswith(f"{e.status}:") else e.reason)
    if isinstance(e, NotFound):
        return 404, str(e) or "unknown resource"
    if isinstance(e, (InvalidDicom, FindError, UnsupportedTranscode, AnonymizationError)):
        return 400, str(e)
    if isinstance(e, FrameNotFound):
        return 404, str(e)
    if isinstance(e, DecodeError):
        return 415, str(e)
    if isinstance(e, StorageFull):
        return 507, f"cannot store: {e.strerror or e}"
    if isinstance(e, StoreRefused):
        return 507, f"cannot store: {e}"
    if isinstance(e, json.JSONDecodeError):
        return 400, f"the request body is not valid JSON: {e}"
    return None


def _error_answer(request: web.Request, e: Exception) -> web.Response:
    known = _known_error(e)
    if known is None:
        log.error("error in %s %s", request.method, request.path, exc_info=e)
        return error_response(request, 500, f"internal error: {type(e).__name__}: {e}")
    return error_response(request, *known)


def _cut_short(request: web.Request, e: Exception) -> web.StreamResponse:
    """An answer whose headers and part of whose body are out cannot turn into an error answer
    (it would land inside the first one): the connection is closed, so the client sees a
    truncated answer, and the reason goes to the log."""
    known = _known_error(e)
    if isinstance(e, ConnectionError):
        log.info("%s %s stopped: %s", request.method, request.path, e or "the client went away")
    elif known is not None:
        log.warning("%s %s cut short after its answer began: %s", request.method, request.path, known[1])
    else:
        log.error("%s %s cut short after its answer began", request.method, request.path, exc_info=e)
    if request.transport is not None:
        request.transport.close()
    return web.StreamResponse()   # aiohttp finds the connection closed and writes nothing more


@web.middleware
async def log_middleware(request: web.Request, handler):
    resp = await handler(request)
    if resp.status >= 400:
        log.warning("%s %s -> %d", request.method, request.path_qs, resp.status)
    return resp


def build_app(archive: Archive, settings: Settings, started: float) -> web.Application:
    from collections import OrderedDict

    from . import dicomweb, images, modalities, pages, resources, system, teaching

    app = web.Application(middlewares=[log_middleware, error_middleware, access_middleware,
                                       modalities.remote_errors], client_max_size=2**40)
    app[modalities.QUERIES] = OrderedDict()
    app[images.CACHE] = images.RenderCache(settings["RenderCacheSize"] * 2**20)
    app[ARCHIVE] = archive
    app[resources.UPLOAD_STATE] = {}
    app[SETTINGS] = settings
    app[STARTED] = started
    app.add_routes(system.routes)
    app.add_routes(resources.routes)
    app.add_routes(modalities.routes)
    app.add_routes(images.routes)
    app.add_routes(dicomweb.routes)
    app.add_routes(teaching.routes)
    app.add_routes(pages.routes)
    return app
