"""The aiohttp application: the access middleware, the error middlewares (``errors``), then one
route table per domain."""

from __future__ import annotations

import functools
import hmac
import ipaddress
from collections import OrderedDict

from aiohttp import BasicAuth, web

from ..archive import Archive
from ..config import Settings
from . import dicomweb, images, modalities, pages, resources, system, teaching
from .errors import error_middleware, error_response, log_middleware
from .keys import ARCHIVE, SETTINGS, STARTED


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
    """Loopback only unless RemoteAccessAllowed; HTTP Basic when AuthenticationEnabled."""
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
    """The user a Basic Authorization header names with the right password; None otherwise."""
    try:
        creds = BasicAuth.decode(header, encoding="utf-8")
    except ValueError:   # not Basic, not base64, no colon, not UTF-8: all simply unauthenticated
        return None
    expected = users.get(creds.login)
    if expected is not None and hmac.compare_digest(expected.encode(), creds.password.encode()):
        return creds.login
    return None


def build_app(archive: Archive, settings: Settings, started: float) -> web.Application:
    """The whole web server: middlewares outermost first, then every route table."""
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
