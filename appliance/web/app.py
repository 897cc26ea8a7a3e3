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

from ..archive.dicomfile import InvalidDicom
from ..archive.find import FindError
from ..archive.hub import Archive, NotFound, StoreRefused
from ..archive.storage import StorageFull
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
    except web.HTTPException as e:
        if e.status < 400:
            raise
        msg = e.text if e.text and not e.text.startswith(f"{e.status}:") else e.reason
        return error_response(request, e.status, msg)
    except NotFound as e:
        return error_response(request, 404, str(e) or "unknown resource")
    except (InvalidDicom, FindError, UnsupportedTranscode, AnonymizationError) as e:
        return error_response(request, 400, str(e))
    except FrameNotFound as e:
        return error_response(request, 404, str(e))
    except DecodeError as e:
        return error_response(request, 415, str(e))
    except StorageFull as e:
        return error_response(request, 507, f"cannot store: {e.strerror or e}")
    except StoreRefused as e:
        return error_response(request, 507, f"cannot store: {e}")
    except json.JSONDecodeError as e:
        return error_response(request, 400, f"the request body is not valid JSON: {e}")
    except Exception as e:
        log.exception("error in %s %s", request.method, request.path)
        return error_response(request, 500, f"internal error: {type(e).__name__}: {e}")


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
